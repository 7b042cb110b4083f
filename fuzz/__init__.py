"""Long fuzzing campaigns (`make fuzz`): atheris on the image decoders, schemathesis on the API.

Bounded slices of both run in `make test`.
"""
