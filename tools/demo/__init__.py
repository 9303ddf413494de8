"""`aiot demo` and `aiot protocol walkthrough`."""
