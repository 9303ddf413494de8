"""Scenarios for edge/executor.py, shared by the MicroPython and CPython tests.

Frames are built and signed here with the hub's codec (``protocol.wire``);
the device side runs ``executor_runner.py``, under the real MicroPython
interpreter (one process per boot) or in-process on CPython. Every scenario
ends with a valid command that must run, to show the executor keeps going,
and ``Device.check`` then asserts the invariants over everything the device
said and did:

- every command id was actuated at most once (the handlers' own log, which
  survives processes);
- every answer is a signed CommandResult for this device, and every refusal
  or failure carries a reason code (DONE carries none).
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from tests.micropython import executor_runner
from tests.support import ROOT, from_wire, micropython
from tools.firmware import mpybuild

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DEV = "plug-07"
RUNNER = Path(__file__).with_name("executor_runner.py")
FLASH_RUNNER = Path(__file__).with_name("executor_flash.py")

S = m.CommandStatus
R = m.Reason

# boot(jobs, crash) -> one output per job that finished; crash says the boot
# must end in a crash (then the outputs are those printed before it).
Boot = Callable[[list[dict[str, Any]], bool], list[dict[str, Any]]]


@functools.cache
def compiled_edge() -> Path:
    """edge/ compiled to .mpy once per test run, as a firmware bundle ships it.

    Imported from source instead, the compiler's garbage ends up between the
    modules' own objects in the 96 KB heap, and whether a 4 KB frame then finds
    a contiguous block (oversized_frame) would depend on nothing but the
    lengths of the paths involved."""
    out = Path(tempfile.mkdtemp(prefix="aiot-edge-mpy-"))
    atexit.register(shutil.rmtree, out, True)
    return mpybuild.build(out, ("edge",))


def boot_micropython(
    jobs: list[dict[str, Any]], crash: bool, heap: str = "96k", runner: Path = RUNNER
) -> list[dict[str, Any]]:
    """One boot under MicroPython (heap: the device's, as -X heapsize; runner:
    executor_runner.py, or executor_flash.py for metadata on a RAM flash), with
    edge/ from compiled_edge() and the rest of the checkout on the path."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for job in jobs:
            f.write(json.dumps(job) + "\n")
        path = f.name
    try:
        proc = subprocess.run(
            [micropython(), "-X", f"heapsize={heap}", str(runner), path],
            capture_output=True,
            text=True,
            env=dict(os.environ, MICROPYPATH=f"{compiled_edge()}:{ROOT}:.frozen"),
            timeout=60,
        )
    finally:
        os.unlink(path)
    want = -signal.SIGKILL if crash else 0
    assert proc.returncode == want, f"exit {proc.returncode}:\n{proc.stderr}\n{proc.stdout}"
    return [json.loads(line) for line in proc.stdout.split("\n") if line.strip()]


def boot_cpython(jobs: list[dict[str, Any]], crash: bool) -> list[dict[str, Any]]:
    runner = executor_runner.Runner()
    outs: list[dict[str, Any]] = []
    try:
        for job in jobs:
            # Through JSON, exactly as the process boundary would.
            outs.append(json.loads(json.dumps(runner.run(job))))
    except executor_runner.Crash:
        assert crash, "the device crashed unexpectedly"
        return outs
    assert not crash, "the device was expected to crash"
    return outs


# -- frames and jobs -------------------------------------------------------------


def cmd(
    cid: str,
    seq: int,
    action: str = "relay.set",
    params: tuple[m.Param, ...] = (m.Param("on", True),),
    *,
    term: int = 1,
    device: str = DEV,
    deadline: int = 0,
    key: bytes = KEY,
) -> bytes:
    msg = m.Command(cid, device, seq, term, action, params, 900, deadline)
    return wire.seal(wire.encode(msg), key)


def edge_cmd(cid: str, seq: int, action: str, params: list[dict[str, Any]]) -> bytes:
    # For params protocol.messages cannot express (a Bool holding 2).
    enc = edge_codec.Encoder(1024)
    fields = {"command_id": cid, "device_id": DEV, "seq": seq, "term": 1, "action": action}
    enc.message("Command", dict(fields, params=params))
    return bytes(enc.seal(edge_codec.Hmac(KEY)))


def frame(data: bytes, **kw: Any) -> dict[str, Any]:
    return {"op": "frame", "hex": data.hex(), **kw}


def recover() -> dict[str, Any]:
    return {"op": "recover"}


def clock(now: int | None) -> dict[str, Any]:
    return {"op": "clock", "now": now}


class Device:
    """One simulated plug: a meta directory and an actuation log, booted again and again."""

    def __init__(self, tmp: Path, boot: Boot, crash_mode: str) -> None:
        self.dir = tmp / "meta"
        self.dir.mkdir()
        self.log = tmp / "actuations.jsonl"
        self._boot = boot
        self.crash_mode = crash_mode
        self.outputs: list[dict[str, Any]] = []

    def boot(self, *jobs: dict[str, Any], dies: bool = False, **init: Any) -> list[dict[str, Any]]:
        first = {
            "op": "init",
            "dir": str(self.dir),
            "device_id": DEV,
            "key_hex": KEY.hex(),
            "log": str(self.log),
            "now": 1_000_000,
            "crash_mode": self.crash_mode,
            **init,
        }
        outs = self._boot([first, *jobs], dies)
        assert outs[0]["result"] is None
        outs = outs[1:]
        assert len(outs) == len(jobs) - (1 if dies else 0), outs
        self.outputs.extend(outs)
        return outs

    def spill(self, data: bytes) -> dict[str, Any]:
        # A frame job read from a file: a big frame as a hex JSON line would
        # cost the runner more heap than the frame costs the device.
        path = self.log.with_name(f"frame-{len(data)}.bin")
        path.write_bytes(data)
        return {"op": "frame", "file": str(path)}

    def actuations(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        # "\n" only: str.splitlines also breaks at U+0085 and U+2028, which
        # json.dumps on MicroPython leaves raw in a command's parameters.
        lines = self.log.read_text().split("\n")[:-1]
        return [from_wire(json.loads(line)) for line in lines]

    def ran(self) -> list[str]:
        return [a["id"] for a in self.actuations()]

    def check(self) -> None:
        ids = self.ran()
        twice = [cid for cid, n in Counter(ids).items() if n > 1]
        assert not twice, f"executed more than once: {twice}"
        for out in self.outputs:
            res = out["result"]
            if res is None:
                continue
            assert res["device_id"] == DEV
            status, reason = S(res["status"]), R(res["reason"])
            if status is S.DONE:
                assert reason is R.NONE, res
            else:
                assert status in (S.REJECTED, S.EXPIRED, S.FAILED), res
                assert reason is not R.NONE, res
            ack = wire.decode_frame(bytes.fromhex(out["ack"]), KEY)
            assert ack == m.from_dict("CommandResult", res)


def expect(out: dict[str, Any], cid: str, seq: int, status: S, reason: R = R.NONE) -> None:
    res = out["result"]
    assert res is not None, out
    got = (res["command_id"], res["seq"], S(res["status"]), R(res["reason"]))
    assert got == (cid, seq, status, reason), res


def unchanged(before: dict[str, Any], *after: dict[str, Any]) -> None:
    # Nothing was written: the metadata save counter did not move.
    for out in after:
        assert out["meta"] == before["meta"], (before["meta"], out["meta"])


# -- scenarios ---------------------------------------------------------------------


def duplicate_delivery(dev: Device) -> None:
    f1 = cmd("c-1", 1)
    a, b, c = dev.boot(
        frame(f1), frame(f1), frame(cmd("c-2", 2, "limit.set", (m.Param("watts", 1500.0),)))
    )
    expect(a, "c-1", 1, S.DONE)
    assert a["result"]["detail"] == "relay.set ok"
    assert b["result"] == a["result"]  # the stored answer, not a second run
    unchanged(a, b)
    assert b["stats"]["duplicates"] == 1 and b["stats"]["executed"] == 1
    expect(c, "c-2", 2, S.DONE)
    # A redelivery after a restart is answered from flash.
    (d,) = dev.boot(frame(cmd("c-2", 2, "limit.set", (m.Param("watts", 1500.0),))))
    assert d["result"] == c["result"]
    assert d["stats"]["executed"] == 0 and d["stats"]["duplicates"] == 1
    acts = dev.actuations()
    assert [a["id"] for a in acts] == ["c-1", "c-2"]
    assert acts[0]["params"] == {"on": True} and acts[1]["params"] == {"watts": 1500.0}


def replay_of_old_command(dev: Device) -> None:
    _, b, c, d, e, f = dev.boot(
        frame(cmd("c-1", 1)),
        frame(cmd("c-2", 2)),
        frame(cmd("c-1", 1)),  # the old command itself
        frame(cmd("c-x", 1)),  # an old seq with another id
        frame(cmd("c-y", 2)),  # the stored seq with another id
        frame(cmd("c-3", 3)),
    )
    expect(b, "c-2", 2, S.DONE)
    expect(c, "c-1", 1, S.REJECTED, R.DUPLICATE)
    expect(d, "c-x", 1, S.REJECTED, R.DUPLICATE)
    expect(e, "c-y", 2, S.REJECTED, R.DUPLICATE)
    unchanged(b, c, d, e)
    assert e["stats"]["rejected"] == {"DUPLICATE": 3}
    expect(f, "c-3", 3, S.DONE)
    assert dev.ran() == ["c-1", "c-2", "c-3"]


def forged_hmac(dev: Device) -> None:
    flipped = bytearray(cmd("c-1", 1))
    flipped[-1] ^= 1
    a, b, c, d, e = dev.boot(
        frame(cmd("c-1", 1, key=OTHER_KEY)),
        frame(bytes(flipped)),
        frame(cmd("c-99", 99, term=50, key=OTHER_KEY)),  # would fence everything
        frame(cmd("c-1", 1)),
        frame(cmd("c-2", 2)),
    )
    expect(a, "c-1", 1, S.REJECTED, R.BAD_SIGNATURE)
    expect(b, "c-1", 1, S.REJECTED, R.BAD_SIGNATURE)
    expect(c, "c-99", 99, S.REJECTED, R.BAD_SIGNATURE)
    assert a["result"]["detail"] == "bad_hmac"
    assert c["meta"]["counter"] == 0 and c["meta"]["last_cmd_seq"] == 0  # nothing written
    assert c["meta"]["highest_term"] == 0
    expect(d, "c-1", 1, S.DONE)  # the genuine command still runs
    expect(e, "c-2", 2, S.DONE)
    assert e["stats"]["rejected"] == {"BAD_SIGNATURE": 3}
    assert dev.ran() == ["c-1", "c-2"]


def wrong_device(dev: Device) -> None:
    a, b = dev.boot(frame(cmd("c-1", 1, device="plug-08")), frame(cmd("c-2", 1)))
    expect(a, "c-1", 1, S.REJECTED, R.WRONG_DEVICE)
    assert a["result"]["device_id"] == DEV  # answered on our own ack topic
    assert a["meta"]["counter"] == 0  # the sequence number was not consumed
    expect(b, "c-2", 1, S.DONE)
    assert dev.ran() == ["c-2"]


def expired_deadline(dev: Device) -> None:
    f1 = cmd("c-1", 1, deadline=9_999)
    a, b, _, c, d, e = dev.boot(
        frame(f1),
        frame(f1),
        clock(5_000),  # even with the clock back, the answer stands
        frame(f1),
        frame(cmd("c-2", 2, deadline=5_000)),  # due now: not passed
        frame(cmd("c-3", 3)),  # no deadline
        now=10_000,
    )
    expect(a, "c-1", 1, S.EXPIRED, R.DEADLINE_PASSED)
    assert a["meta"]["last_cmd_seq"] == 1  # consumed: a final answer
    assert b["result"] == a["result"] and c["result"] == a["result"]
    unchanged(a, b, c)
    expect(d, "c-2", 2, S.DONE)
    assert d["result"]["executed_at_ms"] == 5_000
    expect(e, "c-3", 3, S.DONE)
    assert dev.ran() == ["c-2", "c-3"]


def stale_term(dev: Device) -> None:
    a, b, c, d, e = dev.boot(
        frame(cmd("c-1", 1, term=5)),
        frame(cmd("c-2", 2, term=4)),
        frame(cmd("c-3", 2, term=5)),
        frame(cmd("c-4", 3, term=6)),
        frame(cmd("c-5", 4, term=5)),
    )
    expect(a, "c-1", 1, S.DONE)
    expect(b, "c-2", 2, S.REJECTED, R.STALE_TERM)
    unchanged(a, b)  # neither seq nor term moved
    expect(c, "c-3", 2, S.DONE)
    expect(d, "c-4", 3, S.DONE)
    assert d["meta"]["highest_term"] == 6
    expect(e, "c-5", 4, S.REJECTED, R.STALE_TERM)
    # The fence survives a restart.
    f, g = dev.boot(frame(cmd("c-5", 4, term=5)), frame(cmd("c-6", 4, term=6)))
    expect(f, "c-5", 4, S.REJECTED, R.STALE_TERM)
    expect(g, "c-6", 4, S.DONE)
    assert dev.ran() == ["c-1", "c-3", "c-4", "c-6"]


def unknown_action(dev: Device) -> None:
    f1 = cmd("c-1", 1, "relay.toggle", ())
    a, b, c = dev.boot(frame(f1), frame(f1), frame(cmd("c-2", 2)))
    expect(a, "c-1", 1, S.REJECTED, R.UNKNOWN_ACTION)
    assert a["meta"]["last_cmd_seq"] == 1
    assert b["result"] == a["result"]
    unchanged(a, b)
    expect(c, "c-2", 2, S.DONE)
    assert dev.ran() == ["c-2"]


def out_of_bounds(dev: Device) -> None:
    def w(v: float) -> tuple[m.Param, ...]:
        return (m.Param("watts", v),)

    def i(v: int) -> tuple[m.Param, ...]:
        return (m.Param("interval_ms", v),)

    bad = [
        ("limit.set", w(3680.5)),
        ("limit.set", w(-0.5)),
        ("limit.set", w(math.nan)),
        ("limit.set", w(math.inf)),
        ("limit.set", w(-math.inf)),
        ("sample.set", i(99)),
        ("sample.set", i(3_600_001)),
        ("sample.set", i(-1)),
    ]
    good = [("limit.set", w(0.0)), ("limit.set", w(3680.0))]
    good += [("sample.set", i(100)), ("sample.set", i(3_600_000))]
    cases = bad + good
    frames = [frame(cmd(f"c-{n}", n, a, p)) for n, (a, p) in enumerate(cases, 1)]
    outs = dev.boot(*frames)
    for n, out in enumerate(outs[: len(bad)], 1):
        expect(out, f"c-{n}", n, S.REJECTED, R.PARAM_OUT_OF_BOUNDS)
        assert out["meta"]["last_cmd_seq"] == n
    for n, out in enumerate(outs[len(bad) :], len(bad) + 1):
        expect(out, f"c-{n}", n, S.DONE)
    acts = dev.actuations()
    assert [a["id"] for a in acts] == [f"c-{n}" for n in range(len(bad) + 1, len(cases) + 1)]
    assert [a["params"] for a in acts] == [
        {"watts": 0.0},
        {"watts": 3680.0},
        {"interval_ms": 100},
        {"interval_ms": 3_600_000},
    ]


def bad_param_kinds(dev: Device) -> None:
    P = m.Param
    bad = [
        ("relay.set", (P("on", 1),)),  # Int for Bool
        ("relay.set", (P("on", 1.0),)),  # Float for Bool
        ("limit.set", (P("watts", 1000),)),  # Int for Float
        ("sample.set", (P("interval_ms", 1000.0),)),  # Float for Int
        ("sample.set", (P("interval_ms", "1000"),)),  # Text for Int
        ("relay.set", ()),  # missing
        ("relay.set", (P("on", True), P("force", True))),  # unknown
        ("relay.set", (P("on", True), P("on", False))),  # twice
        ("reboot", (P("delay_ms", 10),)),  # reboot takes none
        ("limit.set", (P("watts", 5000.0), P("x", 1))),  # shape before bounds
    ]
    frames = [frame(cmd(f"c-{n}", n, a, p)) for n, (a, p) in enumerate(bad, 1)]
    n2 = len(bad) + 1
    bool2 = {"name": "on", "kind": 2, "int_value": 2}
    frames.append(frame(edge_cmd(f"c-{n2}", n2, "relay.set", [bool2])))
    frames.append(frame(cmd(f"c-{n2 + 1}", n2 + 1, "relay.set", (P("on", False),))))
    outs = dev.boot(*frames)
    for n, out in enumerate(outs[:-1], 1):
        expect(out, f"c-{n}", n, S.REJECTED, R.BAD_PARAM)
    expect(outs[-1], f"c-{n2 + 1}", n2 + 1, S.DONE)
    assert outs[-1]["stats"]["rejected"] == {"BAD_PARAM": n2}
    assert dev.actuations() == [
        {"id": f"c-{n2 + 1}", "action": "relay.set", "params": {"on": False}}
    ]


def malformed_frame(dev: Device) -> None:
    good_env = wire.encode(m.Command("c-1", DEV, 1, 1, "relay.set", (m.Param("on", True),)))
    ack_env = wire.encode(m.CommitAck(DEV, 5, 6))
    frames = [
        wire.seal(b"\x0c\x00\x00\x00AIO1" + bytes(range(40)), KEY),  # signed garbage
        wire.seal(good_env[:4] + b"AIO2" + good_env[8:], KEY),  # wrong identifier
        b"\x01\x02\x03",  # truncated
        cmd("c-1", 1)[:-40],  # cut: the trailer no longer matches, nor parses
        wire.seal(ack_env, OTHER_KEY),  # forged, and not a command
    ]
    outs = dev.boot(*(frame(f) for f in frames), frame(cmd("c-1", 1)))
    for out in outs[:-1]:
        assert out["result"] is None  # no command id to answer
        assert out["meta"]["counter"] == 0
    last = outs[-2]["stats"]
    assert last["rejected"] == {"MALFORMED": 3, "BAD_SIGNATURE": 2}
    assert last["unanswered"] == 5
    expect(outs[-1], "c-1", 1, S.DONE)
    assert dev.ran() == ["c-1"]


def oversized_frame(dev: Device) -> None:
    big = cmd("c-1", 1, params=(m.Param("on", True), m.Param("note", "x" * 4200)))
    assert len(big) > edge_codec.MAX_FRAME
    a, b, c = dev.boot(
        dev.spill(big),
        frame(b"\x0c\x00\x00\x00AIO1", zeros=edge_codec.MAX_FRAME),  # no readable id
        frame(cmd("c-1", 1)),
    )
    expect(a, "c-1", 1, S.REJECTED, R.MALFORMED)
    assert a["result"]["detail"] == "oversized"
    assert b["result"] is None
    assert b["meta"]["counter"] == 0
    assert b["stats"]["rejected"] == {"MALFORMED": 2} and b["stats"]["unanswered"] == 1
    expect(c, "c-1", 1, S.DONE)  # the seq was not consumed
    assert dev.ran() == ["c-1"]


def handler_failure(dev: Device) -> None:
    f1 = cmd("c-1", 1, "sample.set", (m.Param("interval_ms", 1000),))
    a, b = dev.boot(frame(f1), frame(f1), fail=["sample.set"])
    expect(a, "c-1", 1, S.FAILED, R.EXECUTION_ERROR)
    assert a["result"]["detail"] == "sample.set jammed"
    assert b["result"] == a["result"]
    # Not retried after a restart either.
    c, d = dev.boot(frame(f1), frame(cmd("c-2", 2)))
    assert c["result"] == a["result"]
    expect(d, "c-2", 2, S.DONE)
    assert dev.ran() == ["c-1", "c-2"]


def reboot_command(dev: Device) -> None:
    f1 = cmd("c-1", 1, "reboot", ())
    (a,) = dev.boot(frame(f1))
    expect(a, "c-1", 1, S.DONE)
    assert a["reboot"] is True
    # The node publishes, then resets; the broker redelivers after the reset.
    r, b, c = dev.boot(recover(), frame(f1), frame(cmd("c-2", 2)))
    assert r["result"] == a["result"] and b["result"] == a["result"]
    assert b["reboot"] is False  # no second reboot
    expect(c, "c-2", 2, S.DONE)
    assert dev.ran() == ["c-1", "c-2"]


def kill_after_actuation(dev: Device) -> None:
    f1 = cmd("c-1", 2)
    (a,) = dev.boot(
        frame(cmd("c-0", 1, "limit.set", (m.Param("watts", 10.0),))),
        frame(f1),  # acts, then the power goes
        dies=True,
        crash="relay.set",
    )
    expect(a, "c-0", 1, S.DONE)
    assert dev.ran() == ["c-0", "c-1"]  # it did actuate
    r, b, c = dev.boot(recover(), frame(f1), frame(cmd("c-2", 3)))
    expect(r, "c-1", 2, S.FAILED, R.EXECUTION_ERROR)
    assert r["result"]["detail"] == "interrupted by restart; outcome unknown"
    assert r["meta"]["cmd_state"] == 2  # CMD_DONE, persisted by recover()
    assert b["result"] == r["result"]
    assert b["stats"]["executed"] == 0 and b["stats"]["duplicates"] == 1
    expect(c, "c-2", 3, S.DONE)
    (s,) = dev.boot(recover())
    assert s["result"] == c["result"]
    assert dev.ran() == ["c-0", "c-1", "c-2"]


def kill_then_redelivery_without_recover(dev: Device) -> None:
    f1 = cmd("c-1", 1)
    dev.boot(frame(f1), dies=True, crash="relay.set")
    a, b = dev.boot(frame(f1), frame(cmd("c-2", 2)))
    expect(a, "c-1", 1, S.FAILED, R.EXECUTION_ERROR)
    expect(b, "c-2", 2, S.DONE)
    assert dev.ran() == ["c-1", "c-2"]


def kill_before_publish(dev: Device) -> None:
    f1 = cmd("c-1", 1)
    dev.boot(frame(f1, crash_after=True), dies=True)  # DONE on flash, ack never sent
    assert dev.ran() == ["c-1"]
    r, a, b = dev.boot(recover(), frame(f1), frame(cmd("c-2", 2)))
    expect(r, "c-1", 1, S.DONE)
    assert r["result"]["detail"] == "relay.set ok"
    assert r["result"]["executed_at_ms"] == 1_000_000
    assert a["result"] == r["result"]
    expect(b, "c-2", 2, S.DONE)
    assert dev.ran() == ["c-1", "c-2"]


SCENARIOS: dict[str, Callable[[Device], None]] = {
    f.__name__: f
    for f in (
        duplicate_delivery,
        replay_of_old_command,
        forged_hmac,
        wrong_device,
        expired_deadline,
        stale_term,
        unknown_action,
        out_of_bounds,
        bad_param_kinds,
        malformed_frame,
        oversized_frame,
        handler_failure,
        reboot_command,
        kill_after_actuation,
        kill_then_redelivery_without_recover,
        kill_before_publish,
    )
}
