"""`aiot bench edge`: the device half, measured end to end on MicroPython.

Four measurements in one run, each against real parts:

- Throughput: the real firmware (``firmware/main.py``, ``edge/node.py``),
  compiled to ``.mpy``, samples a simulated plug as fast as it can and
  uploads through a real Mosquitto broker to the acker (``tools/lab/acker.py``,
  the hub stand-in). Rate = readings / (process start until the acker's
  watermark covers them all). The baseline, alternated with it over the
  rounds: the same MQTT client (``edge/mqtt.py``) in the same heap publishing
  pre-built signed 32-reading batch frames at QoS 1 to the same broker and
  acker, timed the same way.
- Flash: the slot store in the reference scenario (three channels at 1 Hz,
  simulated time, offline, records flushed when full, store defaults) until
  both slots are full, counting what the store writes and what the block
  device programs: slot files on LittleFS over a RAM block device with
  4096-byte blocks (``write_amplification``), and the same on a raw slot
  partition (``edge/slotio.py``'s BlockSlots), which boards use when their
  config names one.
- Memory: the lowest ``gc.mem_free()`` after ``gc.collect()`` the node saw
  (its ``min_free``) in every device run, at a stated ``-X heapsize``; the
  modules loaded from ``.mpy`` files into the heap, and again run in place
  from a ROMFS image (``tools/firmware/romfs.py``) as boards run them.
- Failover: two brokers, each with the acker; the broker in use is killed
  and the clock runs until the acker on the other one acknowledges a batch.
- TLS: what it adds to the device's heap. ``edge/mqtt.py`` connects and
  publishes ``TLS_PUBLISHES`` messages at QoS 1 to one Mosquitto, once over
  its plain listener and once over its TLS listener (a certificate from
  hub/core/tls.py, the CA pinned), in the same heap. The MicroPython heap is
  sampled by the script; mbedTLS allocates from the C heap on the unix port,
  which ``tools/mpy/malloc_peak.c`` (compiled here, preloaded) counts at every
  allocation. On bare-metal ports (the Pico W) mbedTLS allocates from the
  MicroPython heap, so both parts count against the device's budget there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.core import tls
from protocol import messages as m
from protocol import wire
from tools.base.paths import MPY_SCRIPTS, ROOT, micropython_binary
from tools.base.ports import free_port
from tools.bench.codec import BenchError
from tools.bench.frames import BASE_TS, plug_rows
from tools.firmware.mpybuild import MpyBuildError
from tools.firmware.mpybuild import build as build_mpy
from tools.firmware.romfs import RomfsError, build_image
from tools.lab.acker import Acker
from tools.lab.mosquitto import (
    INSTALL_HINT,
    BrokerError,
    find_mosquitto,
    running_mosquitto,
)

PUBLISH_SCRIPT = MPY_SCRIPTS / "bench_edge_publish.py"
FLASH_SCRIPT = MPY_SCRIPTS / "bench_edge_flash.py"
TLS_SCRIPT = MPY_SCRIPTS / "bench_edge_tls.py"
MALLOC_SHIM = MPY_SCRIPTS / "malloc_peak.c"
TLS_PUBLISHES = 200  # QoS 1 messages of 512 bytes per TLS memory run

KEY = bytes(range(32))
HOST = "127.0.0.1"
BUFFER_BYTES = 1024 * 1024  # both slots together: 2 x 512 KiB
BATCH_READINGS = 32  # the firmware's default batch_readings
BASELINE_INFLIGHT = 4  # edge/mqtt.py's default max_inflight
FLASH_HEAP = "8m"  # the flash scenario holds a 1.1 MiB RAM disk
FAILOVER_AFTER = 300  # readings acknowledged on the first broker before the kill
STALL_S = 60.0  # a run whose acknowledged readings do not move for this long has failed

# What the device runs differ in from the firmware defaults (edge/node.py).
THROUGHPUT_CONFIG: dict[str, Any] = {"sample_ms": 0, "exit_when_done": True}
FAILOVER_CONFIG: dict[str, Any] = {
    # A steady flow of readings, so the time measured is the failover and not
    # the wait for the next flush; no return to the dead broker.
    "sample_ms": 10,
    "flush_ms": 100,
    "return_after_s": 3600,
    "exit_when_done": True,
}

NOTE = (
    "readings_per_s and the baseline: process start until the acker's watermark "
    "covers every reading; flash figures include record and slot headers and "
    "metadata saves; write_amplification = bytes the flash programmed / packed "
    "payload bytes with the slots on a raw partition as on boards "
    "(_littlefs_files: slot files on LittleFS); peak_heap_bytes = heap_usable_bytes - "
    "lowest free heap with the modules in place in ROMFS as on boards "
    "(_mpy_in_heap: .mpy files loaded into the heap); tls_heap_cost_bytes = what TLS "
    "added to the peak of the MicroPython heap and of the C heap (where mbedTLS allocates on "
    "the unix port) for connect + 200 publishes; peak_heap_bytes_tls = peak_heap_bytes + "
    "tls_heap_cost_bytes, the budget where mbedTLS allocates from the MicroPython heap"
)

Say = Callable[[str], None]


@dataclass
class _Device:
    proc: subprocess.Popen[str]
    t0: float  # time.monotonic() just before the process started
    home: Path  # config, data directory, and the out and err logs

    def stdout(self) -> str:
        return (self.home / "out").read_text(errors="replace")

    def output(self) -> str:
        text = (self.home / "err").read_text(errors="replace") or self.stdout()
        if "MemoryError" in text:
            return "out of memory at this -X heapsize (try a larger --heap): " + _tail(text, 2)
        return _tail(text)


@dataclass
class DeviceRun:
    seconds: float  # process start until the acker's watermark reached the end
    stats: dict[str, Any]  # what the firmware printed at exit


def _quiet(_: str) -> None:
    pass


def _heap_bytes(heap: str) -> int:
    text = heap.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in ("k", "m") else text
    if not digits.isdigit() or int(digits) == 0:
        raise BenchError(f"--heap must be a size such as 96k, 131072 or 1m, not {heap!r}")
    return int(digits) * scale


class _Bench:
    def __init__(self, work: Path, mpy: Path, romfs: Path, heap: str) -> None:
        self.work = work
        self.mpy = mpy  # edge/ and firmware/ compiled to .mpy
        self.romfs = romfs  # the same modules as a ROMFS image (tools/firmware/romfs.py)
        self.heap = heap
        self.micropython = micropython_binary()
        self.env = dict(os.environ, MICROPYPATH=f"{mpy}:.frozen", PYTHONPATH=str(ROOT))
        self.runs = 0

    # -- MicroPython processes ---------------------------------------------------

    def _spawn(
        self,
        args: list[str],
        cwd: Path,
        heap: str,
        logs: Path | None = None,
        romfs: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """micropython with args; output to pipes, or with ``logs`` to logs/out and logs/err
        (a long-running device must never block on a full pipe). ``romfs``: through
        tools/firmware/romfs.py, with the modules mapped in place from the ROMFS image."""
        for a in args:
            if len(a.encode()) >= 256:  # the unix port crashes on long arguments
                raise BenchError(f"argument too long for MicroPython: {a[:60]}...")
        if romfs:
            cmd = [sys.executable, "-m", "tools.firmware.romfs", "run", "--image", str(self.romfs)]
            cmd += ["--heap", heap, "--", *args]
        else:
            cmd = [self.micropython, "-X", f"heapsize={heap}", *args]
        if logs is None:
            return subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env or self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        with (logs / "out").open("w") as out, (logs / "err").open("w") as err:
            return subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=err, text=True)

    def _script(
        self,
        script: Path,
        *args: str,
        heap: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        proc = self._spawn([str(script), *args], self.work, heap, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"{script.name} did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise BenchError(f"{script.name} failed: {_tail(err or out)}")
        return _last_json(out, script.name)

    def usable_heap(self) -> int:
        """gc.mem_free() + gc.mem_alloc() at the stated heap size: the whole heap."""
        proc = subprocess.run(
            [
                self.micropython,
                "-X",
                f"heapsize={self.heap}",
                "-c",
                "import gc;gc.collect();print(gc.mem_free()+gc.mem_alloc())",
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        if proc.returncode != 0:
            raise BenchError(f"micropython -X heapsize={self.heap} failed: {_tail(proc.stderr)}")
        return int(proc.stdout.strip())

    @contextlib.contextmanager
    def device(
        self, device_id: str, hubs: list[int], config: dict[str, Any], romfs: bool = False
    ) -> Iterator[_Device]:
        """The firmware as one device process, killed on the way out: from .mpy files,
        or with ``romfs`` from the ROMFS image."""
        self.runs += 1
        home = self.work / f"device-{self.runs}"
        home.mkdir()
        cfg = {
            "device_id": device_id,
            "key": KEY.hex(),
            "hubs": [[HOST, p] for p in hubs],
            "data_dir": str(home / "data"),
            **config,
        }
        path = home / "config.json"
        path.write_text(json.dumps(cfg))
        t0 = time.monotonic()
        args = ["-m", "firmware.main", "--config", str(path)]
        proc = self._spawn(args, home, self.heap, home, romfs)
        try:
            yield _Device(proc, t0, home)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def finish(self, dev: _Device, timeout: float) -> dict[str, Any]:
        """Wait for a device with exit_when_done; its stats JSON."""
        try:
            dev.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            dev.proc.kill()
            dev.proc.wait()
            raise BenchError(f"the device did not exit within {timeout:g} s") from None
        if dev.proc.returncode != 0:
            raise BenchError(
                f"the device exited with {dev.proc.returncode} at -X heapsize={self.heap}: "
                f"{dev.output()}"
            )
        return _last_json(dev.stdout(), "the device")

    # -- flash -----------------------------------------------------------------------

    def flash(self, seconds: int, mode: str, progsize: int = 0) -> dict[str, Any]:
        """tools/mpy/bench_edge_flash.py: SECONDS (0: until full), MODE lfs or raw."""
        args = [str(seconds), mode] + ([str(progsize)] if progsize else [])
        return self._script(FLASH_SCRIPT, *args, heap=FLASH_HEAP, timeout=300)

    # -- TLS -------------------------------------------------------------------------

    def tls_cost(self, publishes: int) -> dict[str, Any]:
        """tools/mpy/bench_edge_tls.py over plain TCP, then over TLS, to one Mosquitto."""
        issued = tls.write_node(self.work / "tls", "bench-hub", [HOST])
        ca = self.work / "ca.der"
        ca.write_bytes(tls.ca_der(self.work / "tls" / "ca.pem"))
        shim = _malloc_shim(self.work)
        env = dict(self.env, LD_PRELOAD=str(shim)) if shim else None
        port = free_port()
        conf = f"listener {port} {HOST}\ncertfile {issued.cert}\nkeyfile {issued.key}\n"
        if os.geteuid() == 0:
            # As root, Mosquitto reads the key as "mosquitto", which the 0700 folder shuts out.
            conf = "user root\n" + conf
        with running_mosquitto(self.work / "broker-tls", extra_conf=conf) as plain:
            _wait_listening(port)
            runs = [
                self._script(
                    TLS_SCRIPT,
                    HOST,
                    str(p),
                    f"plug-t{i}",
                    str(publishes),
                    *extra,
                    heap=self.heap,
                    timeout=120,
                    env=env,
                )
                for i, (p, extra) in enumerate(((plain, []), (port, [str(ca)])))
            ]
        return _tls_report(runs[0], runs[1], shim is not None)

    # -- throughput ----------------------------------------------------------------

    def firmware_rate(
        self, port: int, device_id: str, readings: int, romfs: bool = False
    ) -> DeviceRun:
        config = {**THROUGHPUT_CONFIG, "stop_after": readings}
        with (
            _acker({device_id: KEY}, [port]) as acker,
            self.device(device_id, [port], config, romfs) as dev,
        ):
            seconds = _wait_watermark(acker, device_id, readings, dev.proc, dev.t0, dev.output)
            stats = self.finish(dev, 60)
            _check_received(acker, device_id, readings)
        return DeviceRun(seconds, stats)

    def baseline_rate(self, port: int, device_id: str, readings: int) -> float:
        frames = self.work / f"frames-{device_id}.bin"
        _write_frames(frames, device_id, readings)
        with _acker({device_id: KEY}, [port]) as acker:
            args = [str(frames), HOST, str(port), device_id, str(BASELINE_INFLIGHT)]
            t0 = time.monotonic()
            proc = self._spawn([str(PUBLISH_SCRIPT), *args], self.work, self.heap, self.work)
            try:
                seconds = _wait_watermark(acker, device_id, readings, proc, t0, self._logs)
                proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                raise BenchError(f"the baseline publisher failed: {self._logs()}")
            _check_received(acker, device_id, readings)
        return seconds

    def _logs(self) -> str:
        err = (self.work / "err").read_text(errors="replace")
        return _tail(err or (self.work / "out").read_text(errors="replace"))

    # -- failover ----------------------------------------------------------------------

    def failover(self, readings: int, romfs: bool = False) -> tuple[float, DeviceRun]:
        """Seconds from killing the broker in use to the first batch acknowledged on the other."""
        a, b = free_port(), free_port()
        device_id = "plug-f1"
        config = {**FAILOVER_CONFIG, "stop_after": readings}
        with contextlib.ExitStack() as stack:
            stack.enter_context(running_mosquitto(self.work / "broker-b", b))
            broker_a = contextlib.ExitStack()
            stack.callback(broker_a.close)
            broker_a.enter_context(running_mosquitto(self.work / "broker-a", a))
            acker = stack.enter_context(_acker({device_id: KEY}, [a, b]))
            dev = stack.enter_context(self.device(device_id, [a, b], config, romfs))
            first = min(FAILOVER_AFTER, readings)
            _wait_watermark(acker, device_id, first, dev.proc, dev.t0, dev.output)
            if acker.logs[device_id].by_port.get(b, 0):
                raise BenchError("the device sent to the second broker before the kill")
            killed = time.monotonic()
            broker_a.close()  # leaving running_mosquitto's block terminates broker A
            _wait(
                lambda: acker.first_ack_at(device_id, b) is not None or dev.proc.poll() is not None,
                120,
                "a batch acknowledged on the second broker",
            )
            acked = acker.first_ack_at(device_id, b)
            if acked is None:
                raise BenchError("the device stopped before it failed over")
            stats = self.finish(dev, 120)
            _check_received(acker, device_id, readings)
        return acked - killed, DeviceRun(time.monotonic() - dev.t0, stats)


@contextlib.contextmanager
def _acker(keys: dict[str, bytes], ports: list[int]) -> Iterator[Acker]:
    """tools/lab/acker.py as the hub; its start-up failure as a BenchError."""
    acker = Acker(keys, ports)
    try:
        acker.__enter__()
    except RuntimeError as exc:
        acker.__exit__(None, None, None)
        raise BenchError(f"the acker (hub stand-in) did not start: {exc}") from None
    try:
        yield acker
    finally:
        acker.__exit__(None, None, None)
    if acker.alive:
        raise BenchError("the acker (hub stand-in) did not stop within 10 s")


def _malloc_shim(work: Path) -> Path | None:
    """tools/mpy/malloc_peak.c built into ``work``; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = work / "malloc_peak.so"
    proc = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(MALLOC_SHIM), "-ldl"],
        capture_output=True,
        text=True,
    )
    return out if proc.returncode == 0 else None


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    def up() -> bool:
        try:
            with socket.create_connection((HOST, port), 0.2):
                return True
        except OSError:
            return False

    _wait(up, timeout, f"Mosquitto's TLS listener on port {port}")


def _tls_report(plain: dict[str, Any], over: dict[str, Any], counted: bool) -> dict[str, Any]:
    """What TLS added, from the plain and the TLS run of bench_edge_tls.py."""
    gc_cost = over["gc_peak"] - plain["gc_peak"]
    counted = counted and over["malloc_peak"] is not None and plain["malloc_peak"] is not None
    malloc_cost = over["malloc_peak"] - plain["malloc_peak"] if counted else None
    session = over["gc_session"] - plain["gc_session"]
    if counted:
        session += over["malloc_session"] - plain["malloc_session"]
    return {
        "workload": f"edge/mqtt.py: connect, {over['publishes']} QoS 1 publishes of "
        f"{over['payload_bytes']} bytes one at a time, same heap and broker, plain then TLS",
        "cost_bytes": gc_cost + malloc_cost if malloc_cost is not None else None,
        "micropython_heap_cost_bytes": gc_cost,
        "c_heap_cost_bytes": malloc_cost,
        "session_cost_bytes": session if counted else None,
        "plain": plain,
        "tls": over,
        "where": "the MicroPython heap holds the SSLContext and each connection's SSLSocket; "
        "mbedTLS (certificates, record buffers, handshake) allocates from the C heap on the unix "
        "port, counted by tools/mpy/malloc_peak.c"
        + ("" if counted else " (not counted in this run: no C compiler)")
        + ", and from the MicroPython heap on bare-metal ports (Pico W); "
        "not counted: the C stack, malloc's chunk headers",
    }


def _tail(text: Any, lines: int = 6) -> str:
    s = str(text).strip().splitlines()
    return " | ".join(s[-lines:]) if s else "(no output)"


def _last_json(out: str, what: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                doc: dict[str, Any] = json.loads(line)
            except ValueError:
                break
            return doc
    raise BenchError(f"{what} printed no JSON: {_tail(out)}")


def _wait(check: Callable[[], bool], timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.002)


def _wait_watermark(
    acker: Acker,
    device_id: str,
    n: int,
    proc: subprocess.Popen[str],
    t0: float,
    output: Callable[[], str],
) -> float:
    """Wait until the acker's watermark for device_id reaches n; seconds from t0 to then.

    Fails if the process fails, or if the watermark stands still for STALL_S
    (a stuck device or a lost broker, never a slow machine).
    """
    mark, moved = -1, time.monotonic()
    while True:
        w = acker.watermark(device_id)
        if w >= n:
            break
        now = time.monotonic()
        if w != mark:
            mark, moved = w, now
        # A publisher may exit once the broker has PUBACKed everything, before
        # the acker has seen it all; only a failure ends the wait early.
        if proc.poll() not in (None, 0):
            raise BenchError(
                f"{device_id} exited with {proc.returncode} before the acker's watermark "
                f"reached {n} (it is at {w}): {output()}"
            )
        if now - moved > STALL_S:
            running = "running" if proc.poll() is None else f"exited {proc.returncode}"
            raise BenchError(
                f"the acker's watermark for {device_id} stood at {w} of {n} for {STALL_S:g} s "
                f"({device_id} {running}, {now - t0:.0f} s after its start): {output()}"
            )
        time.sleep(0.02)
    return acker.watermark_at(device_id) - t0


def _check_received(acker: Acker, device_id: str, n: int) -> None:
    got = acker.received(device_id)
    missing = n - len(got & set(range(1, n + 1)))
    extra = len(got - set(range(1, n + 1)))
    if missing or extra:
        raise BenchError(
            f"the acker got {len(got)} distinct readings from {device_id}: "
            f"{missing} of 1..{n} missing, {extra} unexpected"
        )


def _write_frames(path: Path, device_id: str, readings: int) -> None:
    """Signed TelemetryBatch frames of BATCH_READINGS readings covering 1..readings."""
    with path.open("wb") as f:
        for first in range(1, readings + 1, BATCH_READINGS):
            rows = plug_rows(min(BATCH_READINGS, readings - first + 1))
            batch = m.TelemetryBatch(device_id, 1, first, BASE_TS + 333 * (first // 3), rows)
            frame = wire.seal(wire.encode(batch), KEY)
            f.write(struct.pack("<H", len(frame)) + frame)


@dataclass(frozen=True)
class _Measured:
    """Everything one run measured, before it is reported."""

    usable: int  # the whole heap at the stated size
    flash: dict[str, Any]  # slot files on LittleFS
    pico: dict[str, Any]  # the same with a 256-byte program size
    raw: dict[str, Any]  # slots on a raw partition
    device_runs: list[DeviceRun]  # the throughput rounds, then the failover run
    device_s: list[float]
    baseline_s: list[float]
    rom_run: DeviceRun  # the firmware from the ROMFS image
    failover_s: float
    fo_run: DeviceRun
    failover_rom_s: float
    fo_rom_run: DeviceRun
    tls: dict[str, Any]  # _tls_report


def edge(
    readings: int = 100_000,
    rounds: int = 3,
    heap: str = "160k",
    flash_hours: float | None = None,
    failover_readings: int = 1_500,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Run every edge measurement; one JSON-ready dict."""
    heap_bytes = _heap_bytes(heap)
    heap = heap.strip().lower()
    if readings < 1 or rounds < 1 or failover_readings < 1:
        raise BenchError("readings, rounds and failover readings must be at least 1")
    if find_mosquitto() is None:
        raise BrokerError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    micropython_binary()  # fails early, with the install hint
    work = Path(tempfile.mkdtemp(prefix="aiot-bench-edge-"))
    try:
        say("compiling edge/ and firmware/ to .mpy files and a ROMFS image")
        try:
            mpy = build_mpy(work / "mpy")
            romfs = build_image(work / "firmware.romfs")
        except (MpyBuildError, RomfsError) as exc:
            raise BenchError(str(exc)) from None
        bench = _Bench(work, mpy, romfs, heap)
        got = _measure(bench, readings, rounds, flash_hours, failover_readings, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(got, readings, rounds, heap, heap_bytes, failover_readings)


def _measure(
    bench: _Bench,
    readings: int,
    rounds: int,
    flash_hours: float | None,
    failover_readings: int,
    say: Say,
) -> _Measured:
    """Flash first (it needs no broker and is quick), then throughput, then failover."""
    usable = bench.usable_heap()
    seconds = 0 if flash_hours is None else max(1, round(flash_hours * 3600))
    say(
        "flash: three channels at 1 Hz, simulated time, offline, on LittleFS "
        + ("until both slots are full" if not seconds else f"for {seconds} s")
    )
    flash = bench.flash(seconds, "lfs")
    pico = bench.flash(seconds, "lfs", progsize=256)
    raw = bench.flash(seconds, "raw")

    device_runs: list[DeviceRun] = []
    baseline_s: list[float] = []
    with running_mosquitto(bench.work / "broker") as port:
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}: baseline, {readings} readings in pre-built frames")
            baseline_s.append(bench.baseline_rate(port, f"plug-b{r}", readings))
            say(f"round {r + 1}/{rounds}: firmware, {readings} readings at full speed")
            device_runs.append(bench.firmware_rate(port, f"plug-d{r}", readings))
        say(f"memory: the firmware again, from a ROMFS image as boards run it ({readings})")
        rom_run = bench.firmware_rate(port, "plug-r0", readings, romfs=True)
    device_s = [run.seconds for run in device_runs]
    say(f"failover: two brokers, kill the one in use ({failover_readings} readings)")
    failover_s, fo_run = bench.failover(failover_readings)
    device_runs.append(fo_run)
    say("memory: the failover run again, from the ROMFS image")
    failover_rom_s, fo_rom_run = bench.failover(failover_readings, romfs=True)
    say(f"memory: TLS against plain TCP, connect and {TLS_PUBLISHES} publishes each")
    tls_cost = bench.tls_cost(TLS_PUBLISHES)
    return _Measured(
        usable,
        flash,
        pico,
        raw,
        device_runs,
        device_s,
        baseline_s,
        rom_run,
        failover_s,
        fo_run,
        failover_rom_s,
        fo_rom_run,
        tls_cost,
    )


def _lowest_free(runs: list[DeviceRun], what: str) -> tuple[int, list[Any]]:
    """The lowest min_free over ``runs``, and each run's."""
    frees = [r.stats.get("min_free") for r in runs]
    sampled = [v for v in frees if isinstance(v, int)]
    if not sampled:
        raise BenchError(f"no {what} lasted long enough for the node to sample its heap")
    return min(sampled), frees


def _report(
    got: _Measured, readings: int, rounds: int, heap: str, heap_bytes: int, failover_readings: int
) -> dict[str, Any]:
    min_free, min_frees = _lowest_free(got.device_runs, "device run")
    rom_free, rom_frees = _lowest_free([got.rom_run, got.fo_rom_run], "ROMFS run")
    flash, raw = got.flash, got.raw
    rate = readings * rounds / sum(got.device_s)
    base_rate = readings * rounds / sum(got.baseline_s)
    fbpr = flash["store_bytes"] / flash["readings"]
    hours = BUFFER_BYTES / (fbpr * flash["channels"]) / 3600
    return {
        "bench": "edge",
        "readings_per_s": round(rate, 1),
        "baseline_readings_per_s": round(base_rate, 1),
        "ratio": round(rate / base_rate, 4),
        "flash_bytes_per_reading": round(fbpr, 4),
        # Boards keep the slots on a raw partition (firmware/config_template.json):
        # that is the headline; slot files on LittleFS follow for comparison.
        "write_amplification": round(raw["flash_bytes"] / raw["payload_bytes"], 4),
        "write_amplification_littlefs_files": round(
            flash["flash_bytes"] / flash["payload_bytes"], 4
        ),
        "store_write_amplification": round(flash["store_bytes"] / flash["payload_bytes"], 4),
        "hours_buffered_1mib_1hz_3ch": round(hours, 2),
        # Boards run the modules in place from ROMFS: the headline; .mpy
        # files loaded into the heap (the unix port's default) follow.
        "peak_heap_bytes": got.usable - rom_free,
        "peak_heap_bytes_mpy_in_heap": got.usable - min_free,
        "tls_heap_cost_bytes": got.tls["cost_bytes"],
        "peak_heap_bytes_tls": (
            None if got.tls["cost_bytes"] is None else got.usable - rom_free + got.tls["cost_bytes"]
        ),
        "heap_size": heap,
        "failover_s": round(got.failover_s, 3),
        "throughput": _throughput_report(got, readings, rounds),
        "flash": _flash_report(flash, got.pico, raw),
        "memory": {
            "heap_size": heap,
            "heap_size_bytes": heap_bytes,
            "heap_usable_bytes": got.usable,
            "min_free_bytes": min_free,
            "min_free_by_run": min_frees,
            "code": ".mpy files (mpy-cross) loaded into the heap, as the unix port imports them",
            "romfs": {
                "code": "the same modules run in place from a ROMFS image "
                "(tools/firmware/romfs.py), as boards run them",
                "min_free_bytes": rom_free,
                "min_free_by_run": rom_frees,
                "readings_per_s": round(readings / got.rom_run.seconds, 1),
            },
        },
        "tls": got.tls,
        "failover": {
            "readings": failover_readings,
            "acked_on_first_broker_before_kill": min(FAILOVER_AFTER, failover_readings),
            "device_config": FAILOVER_CONFIG | {"stop_after": failover_readings},
            "failover_s_romfs_run": round(got.failover_rom_s, 3),
            "reconnects": got.fo_run.stats.get("reconnects"),
            "hub_index_at_exit": got.fo_run.stats.get("hub_index"),
        },
        "acker_received_all": True,  # every run checks it, or the bench fails
        "note": NOTE,
    }


def _throughput_report(got: _Measured, readings: int, rounds: int) -> dict[str, Any]:
    return {
        "readings": readings,
        "rounds": rounds,
        "device_seconds": [round(s, 3) for s in got.device_s],
        "baseline_seconds": [round(s, 3) for s in got.baseline_s],
        "batches_sent": [r.stats.get("batches_sent") for r in got.device_runs[:-1]],
        "retransmits": [r.stats.get("retransmits") for r in got.device_runs[:-1]],
        "device_config": THROUGHPUT_CONFIG | {"stop_after": readings},
        "baseline": (
            f"edge/mqtt.py publishing pre-built signed {BATCH_READINGS}-reading batches "
            f"at QoS 1, {BASELINE_INFLIGHT} in flight, same broker, heap and acker"
        ),
    }


def _flash_report(
    flash: dict[str, Any], pico: dict[str, Any], raw: dict[str, Any]
) -> dict[str, Any]:
    channels = flash["channels"]
    held_hours = flash["readings"] / channels / 3600 if flash["filled"] else None
    return {
        "scenario": "SimulatedPlug, 3 channels at 1 Hz, simulated time, offline, "
        "records flushed when full, SlotStore defaults",
        "filled": flash["filled"],
        "simulated_hours": round(flash["seconds"] / 3600, 2),
        "readings": flash["readings"],
        "records": flash["records"],
        "readings_per_record": round(flash["readings"] / flash["records"], 1),
        "record_bytes": flash["record_bytes"],
        "record_bytes_used": round(flash["store_bytes"] / flash["records"], 1),
        "slot_capacity": flash["capacity"],
        "block_size": flash["block_size"],
        "storage": "slot files on LittleFS (vfs.VfsLfs2 defaults) over RAMBlockDev",
        "lfs_progsize": flash["progsize"],
        "payload_bytes_per_reading": round(flash["payload_bytes"] / flash["readings"], 4),
        "programmed_bytes_per_reading": round(flash["flash_bytes"] / flash["readings"], 4),
        "payload_bytes": flash["payload_bytes"],
        "store_bytes": flash["store_bytes"],
        "programmed_bytes": flash["flash_bytes"],
        "block_erases": flash["erases"],
        "meta_saves": flash["meta_saves"],
        "hours_held_when_filled": None if held_hours is None else round(held_hours, 2),
        "write_amplification_progsize_256": round(pico["flash_bytes"] / pico["payload_bytes"], 4),
        "raw_partition": {
            "storage": "slots on a raw RAMBlockDev partition (edge/slotio.py BlockSlots), "
            "metadata on LittleFS on another",
            "readings": raw["readings"],
            "payload_bytes": raw["payload_bytes"],
            "store_bytes": raw["store_bytes"],
            "programmed_bytes": raw["flash_bytes"],
            "flash_bytes_per_reading": round(raw["store_bytes"] / raw["readings"], 4),
        },
    }
