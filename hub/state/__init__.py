"""The replicated state: log entries, the LMDB store, Raft, API users."""
