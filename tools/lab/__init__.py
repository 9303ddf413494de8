"""Local processes for tests, benchmarks and chaos: clusters, devices, brokers."""
