"""HTTP routes, one module per family: predict, health and status."""
