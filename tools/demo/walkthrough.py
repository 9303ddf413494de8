"""`aiot protocol walkthrough`: one batch's way through the wire protocol, step by step.

Part 1: one signed batch from MicroPython (edge/codec.py) through a real
Mosquitto broker to a hub-side consumer that authenticates and decodes it with
the official runtime, and its commit-ack back, verified on MicroPython.

Part 2: the real device firmware (firmware/main.py, a simulated smart plug)
runs under MicroPython against the broker for a few seconds; the acker
(tools/lab/acker.py) plays the hub, acknowledging every batch; halfway through, a
signed command switches the plug's relay off, and the power readings drop to
0 W.

It shows the wire and the device alone: the whole system (a Raft cluster of
hubs, LMDB, decisions) runs in `aiot demo`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError
from tools.base.paths import MPY_SCRIPTS, ROOT, micropython_binary
from tools.lab.acker import Acker
from tools.lab.device import Device
from tools.lab.mosquitto import running_mosquitto

DEVICE = "plug-1"
DEVICE_SCRIPT = MPY_SCRIPTS / "walkthrough_device.py"
SENSORS = ("power_w", "energy_wh", "voltage_v")


def _device(*args: str) -> str:
    """Run the device half under MicroPython; return what it printed."""
    env = dict(os.environ, MICROPYPATH=f"{ROOT}:.frozen")
    proc = subprocess.run(
        [micropython_binary(), "-X", "heapsize=96k", str(DEVICE_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"device script failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


async def _exchange(port: int, key: bytes, frame: bytes, say: Callable[[str], None]) -> bytes:
    """Publish the device frame; consume, verify and ack it; return the ack frame."""
    keys = {DEVICE: key}
    got_ack: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def hub() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="walkthrough-hub") as client:
            await client.subscribe(topics.subscription("up"), qos=1)
            hub_ready.set()
            async for message in client.messages:
                device_id, _ = topics.parse(str(message.topic))
                payload = bytes(message.payload)
                try:
                    batch = wire.decode_frame(payload, keys[device_id], expect=m.TelemetryBatch)
                except (CodecError, KeyError) as exc:
                    say(f"hub: rejected a frame on {message.topic}: {exc}")
                    continue
                assert isinstance(batch, m.TelemetryBatch)
                if batch.device_id != device_id:
                    say(f"hub: rejected: topic says {device_id}, payload {batch.device_id}")
                    continue
                say(
                    f"hub: HMAC ok, decoded with the official runtime: {len(batch.readings)} "
                    f"readings, seq {batch.first_seq}..{batch.last_seq}"
                )
                for sensor, name in enumerate(SENSORS):
                    values = [r.value for r in batch.readings if r.sensor == sensor]
                    say(f"       {name:>10}: {min(values):8.1f} .. {max(values):8.1f}")
                ack = m.CommitAck(device_id, batch.last_seq, int(time.time() * 1000))
                await client.publish(
                    topics.topic(device_id, "down"), wire.seal(wire.encode(ack), key), qos=1
                )
                say(f"hub: published CommitAck watermark={ack.watermark} to {device_id}/down")
                return

    async def device() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"walkthrough-{DEVICE}") as client:
            await client.subscribe(topics.topic(DEVICE, "down"), qos=1)
            await hub_ready.wait()
            await client.publish(topics.topic(DEVICE, "up"), frame, qos=1)
            say(f"device: published {len(frame)} bytes to {topics.topic(DEVICE, 'up')} (QoS 1)")
            async for message in client.messages:
                got_ack.set_result(bytes(message.payload))
                return

    hub_ready = asyncio.Event()
    async with asyncio.timeout(30):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(hub(), name="hub")
            tg.create_task(device(), name="device")
    return got_ack.result()


def run(say: Callable[[str], None], device_seconds: float = 12.0) -> dict[str, Any]:
    """Both parts; return a summary (device_seconds 0: part 1 only)."""
    key = secrets.token_bytes(32)
    say("The whole system runs in `aiot demo`; this follows one batch on its way.")
    say("Part 1: one signed batch through the wire protocol and a real broker.\n")
    frame_hex = _device("batch", key.hex())
    frame = bytes.fromhex(frame_hex)
    say(
        f"device (MicroPython): encoded and signed 32 readings with edge/codec.py: "
        f"{len(frame)} bytes, {len(frame) / 32:.2f} bytes per reading"
    )
    with (
        tempfile.TemporaryDirectory(prefix="aiot-walkthrough-") as tmp,
        running_mosquitto(Path(tmp)) as port,
    ):
        say(f"broker: Mosquitto listening on 127.0.0.1:{port}")
        ack_frame = asyncio.run(_exchange(port, key, frame, say))
    result = json.loads(_device("ack", key.hex(), ack_frame.hex()))
    say(
        f"device (MicroPython): verified the CommitAck, watermark {result['watermark']}: "
        "readings up to there may be freed from flash"
    )
    summary: dict[str, Any] = {
        "broker": "mosquitto",
        "edge_runtime": "micropython",
        "frame_bytes": len(frame),
        "readings": 32,
        "acked_watermark": result["watermark"],
        "ok": result["watermark"] == 32,
    }
    if device_seconds > 0:
        device = run_device(say, device_seconds)
        summary["device"] = device
        summary["ok"] = summary["ok"] and device["ok"]
    return summary


def _relay_off(port: int, key: bytes) -> None:
    async def send() -> None:
        now = int(time.time() * 1000)
        cmd = m.Command(
            "walkthrough-1", DEVICE, 1, 1, "relay.set", (m.Param("on", False),), now, now + 30_000
        )
        async with aiomqtt.Client("127.0.0.1", port, identifier="walkthrough-hub-cmd") as c:
            await c.publish(topics.topic(DEVICE, "down"), wire.seal(wire.encode(cmd), key), qos=1)

    asyncio.run(send())


def run_device(say: Callable[[str], None], seconds: float = 12.0) -> dict[str, Any]:
    """Part 2: the real firmware against the broker, the acker as its hub."""
    key = secrets.token_bytes(32)
    say("\nPart 2: the device firmware on MicroPython, a simulated smart plug,")
    say("with a stand-in hub that acknowledges every batch (the hub cluster comes later).")
    with (
        tempfile.TemporaryDirectory(prefix="aiot-walkthrough-") as tmp,
        running_mosquitto(Path(tmp) / "broker") as port,
        Acker({DEVICE: key}, [port]) as acker,
    ):
        cfg = {
            "device_id": DEVICE,
            "key": key.hex(),
            "hubs": [["127.0.0.1", port]],
            "sample_ms": 250,
            "flush_ms": 1000,
            "status_ms": 3000,
            "keepalive_s": 5,
            "event_every_s": 4,
        }
        dev = Device(Path(tmp) / "device", cfg)
        dev.start()
        started = time.monotonic()
        sent = False
        reported = False
        try:
            while time.monotonic() - started < seconds:
                time.sleep(1.0)  # a paced demo, not a synchronisation
                power = acker.latest(DEVICE, 0)
                shown = "      -" if power is None else f"{power:7.1f}"
                say(
                    f"  {time.monotonic() - started:4.1f} s: {acker.watermark(DEVICE):4d} readings "
                    f"acknowledged, power {shown} W"
                )
                if acker.results and not reported:
                    r = acker.results[0]
                    say(f"  device executed {r.command_id}: {r.status.name}")
                    reported = True
                if not sent and time.monotonic() - started > seconds / 2:
                    say("  hub: sending a signed command: relay.set on=false")
                    _relay_off(port, key)
                    sent = True
        finally:
            dev.stop()
        results = list(acker.results)
        watermark = acker.watermark(DEVICE)
        received = len(acker.received(DEVICE))
        statuses = len(acker.statuses)
    done = bool(results) and results[0].status is m.CommandStatus.DONE
    say(
        f"device: {received} readings sent, {watermark} acknowledged, "
        f"{statuses} status messages, command {'DONE' if done else 'not executed'}"
    )
    return {
        "readings_acked": watermark,
        "status_messages": statuses,
        "command_done": done,
        "ok": watermark > 0 and done,
    }


def main() -> int:
    summary = run(lambda line: print(line, flush=True))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
