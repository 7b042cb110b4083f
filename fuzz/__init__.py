"""Coverage-guided fuzz targets (atheris); run with `make fuzz`."""
