"""What every tool shares: paths, ports, processes, the hub API client."""
