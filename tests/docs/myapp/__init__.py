"""The `myapp` the docs' worker examples name (copied beside each example as it runs)."""
