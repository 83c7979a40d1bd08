"""The data layer: the only package that runs SQL statements."""
