"""The hub daemon: Raft-replicated ingest into LMDB, brokers, commands, decisions.

Not built yet; see ARCHITECTURE.md for the design. It will decode the wire
with protocol/wire.py.
"""
