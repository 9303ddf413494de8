"""The cloud tier's local side: a NATS JetStream cluster for development,
the demo and the tests (`aiot cloud up`), and what reads it (`aiot cloud
status`). docs/cloud.md describes the tier; in production the hubs point at
any NATS cluster and none of this runs.
"""
