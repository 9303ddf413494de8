"""`aiot bench ingest` and `aiot bench failover`: a hub cluster under load.

Both run tools/bench/rig.py's cluster (three `aiot hub run` processes on
loopback, each with its own Mosquitto) under load from the generator
processes. The parts, one module each:

- ingest.py, failover.py: the two benchmarks, phase by phase, and their JSON;
- frames.py: the signed TelemetryBatch frames and the MQTT 3.1.1 packets;
- generator.py: the load generator process (simulated devices);
- load.py: starting and driving the generator processes from a benchmark;
- standin.py: the ingest baseline's stand-in for a hub node;
- figures.py: the figures, pure functions over the generator's log;
- watch.py: CPU per process, Raft events, the machine;
- rig.py: the cluster, its devices and counters.

This module is also the entry point of the helper processes:
``python -m tools.bench.hub generate`` (a load generator) and
``python -m tools.bench.hub baseline-node CONFIG`` (a stand-in).
"""

from __future__ import annotations

import asyncio
import sys

from tools.bench import generator, standin
from tools.bench.failover import failover
from tools.bench.ingest import ingest

__all__ = ["failover", "ingest", "main"]


def main(argv: list[str]) -> int:
    """Entry point of the helper processes: `generate` and `baseline-node CONFIG`."""
    if argv[:1] == ["generate"]:
        asyncio.run(generator.serve())
        return 0
    if argv[:1] == ["baseline-node"] and len(argv) == 2:
        asyncio.run(standin.serve(argv[1]))
        return 0
    print("usage: python -m tools.bench.hub generate | baseline-node CONFIG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
