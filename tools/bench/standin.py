"""The ingest baseline's stand-in for a hub node: the broker, without the hub.

Each stand-in is a process (``python -m tools.bench.hub baseline-node
CONFIG``) with the same Mosquitto as a hub node (the hub's
``MosquittoSupervisor``: same generated config, credentials and ACL) and a
plain aiomqtt subscriber that answers each batch with a signed CommitAck: no
Raft, no store, no validation; it reads first_seq and the count from the
frame. ``stand_ins`` starts one per node and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt

from hub.core import auth
from hub.core.clock import wall_ms
from hub.core.config import Address
from hub.link.broker import BrokerUser, MosquittoSupervisor
from hub.link.ingest import commit_ack
from protocol import topics, wire
from tools.base.paths import ROOT
from tools.base.ports import free_port
from tools.bench.codec import BenchError
from tools.bench.frames import batch_last_seq
from tools.bench.rig import HOST, child_env


async def serve(config_path: str) -> None:
    """The stand-in's process (``baseline-node CONFIG``): prints one JSON line
    once its broker runs and it subscribed, then serves until SIGTERM."""
    cfg = json.loads(Path(config_path).read_text())
    users = [BrokerUser(n, p, r) for n, p, r in cfg["users"]]
    keys = {d: bytes.fromhex(k) for d, k in cfg["keys"].items()}
    broker = MosquittoSupervisor(Path(cfg["workdir"]), Address(HOST, int(cfg["port"])), users)
    await broker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    marks: dict[str, int] = {}
    slots = asyncio.Semaphore(512)  # as the hub's MAX_IN_HAND
    in_hand: set[asyncio.Task[None]] = set()

    async def one(client: aiomqtt.Client, payload: bytes) -> None:
        try:
            got = batch_last_seq(payload[: -wire.TAG_SIZE])
            if got is None or got[0] not in keys:
                return
            device_id, last = got
            w = marks[device_id] = max(marks.get(device_id, 0), last)
            ack = commit_ack(device_id, w, keys[device_id], wall_ms)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(ack.topic, ack.payload, qos=1)
        finally:
            slots.release()

    async def consume() -> None:
        user, password = cfg["hub_user"]
        async with aiomqtt.Client(
            HOST,
            int(cfg["port"]),
            username=user,
            password=password,
            identifier="baseline-consumer",
            clean_session=True,
        ) as client:
            await client.subscribe(topics.subscription("up"), qos=1)
            sys.stdout.write(json.dumps({"ready": True, "broker_pid": broker.pid}) + "\n")
            sys.stdout.flush()
            async for msg in client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                await slots.acquire()
                task = asyncio.create_task(one(client, payload))
                in_hand.add(task)
                task.add_done_callback(in_hand.discard)

    task = asyncio.create_task(consume())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    stopper.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    await broker.stop()


@contextlib.contextmanager
def stand_ins(
    work: Path, devices: list[dict[str, Any]], nodes: int
) -> Iterator[tuple[list[int], list[int], list[int | None]]]:
    """The baseline's stand-in nodes: (broker ports, pids, broker pids)."""
    ports = [free_port() for _ in range(nodes)]
    procs: list[subprocess.Popen[str]] = []
    broker_pids: list[int | None] = []
    try:
        for i, port in enumerate(ports):
            home = work / f"stand-in-{i + 1}"
            home.mkdir(parents=True, exist_ok=True)
            hub_user = (auth.hub_user(f"stand-in-{i + 1}"), "stand-in-password-0123456789")
            users = [[d["user"], d["password"], "device"] for d in devices]
            users.append([*hub_user, "hub"])
            cfg = {
                "workdir": str(home / "broker"),
                "port": port,
                "users": users,
                "keys": {d["device_id"]: d["key"] for d in devices},
                "hub_user": hub_user,
            }
            (home / "config.json").write_text(json.dumps(cfg))
            with (home / "stand-in.log").open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tools.bench.hub",
                            "baseline-node",
                            str(home / "config.json"),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        cwd=ROOT,
                        env=child_env(),
                    )
                )
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if not line:
                log = work / f"stand-in-{i + 1}" / "stand-in.log"
                raise BenchError(f"baseline stand-in {i + 1} did not start: {_tail(log)}")
            broker_pids.append(json.loads(line).get("broker_pid"))
        yield ports, [p.pid for p in procs], broker_pids
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
