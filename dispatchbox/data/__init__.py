"""The data layer: every SQL statement dispatchbox runs, how it runs, and the helpers around it."""
