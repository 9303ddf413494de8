"""`aiot bench ...`: benchmarks that print JSON against a same-run baseline."""
