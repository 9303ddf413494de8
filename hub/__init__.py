"""The hub daemon: one node of a Raft-replicated cluster that ingests device
readings exactly once into LMDB, decides with rules, an ONNX model and a local
LLM, and sends signed commands back to the devices.

The packages, each importing only the ones below it (docs/ARCHITECTURE.md):

    daemon   the one module that builds and wires a node (`aiot hub run`)
    http     the HTTP API and the dashboard
    ops      backups and restores, metrics, firmware bundles
    decide   the decision engine and its tiers, the guard, the model registry
    link     brokers, ingest, command delivery, presence, the event bus
    state    replicated log entries, the LMDB store, Raft, API users
    core     configuration and validation, the clock, keys, files, logs
"""
