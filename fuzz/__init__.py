"""Long fuzzing campaigns (`make fuzz`); bounded slices of them run in `make test`."""
