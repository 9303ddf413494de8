"""edge/executor.py on CPython: the same scenarios in-process, and the corners.

In-process, a crash is ``executor_runner.Crash`` (a BaseException the executor
does not catch) raised where the MicroPython tests kill the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge import codec as edge_codec
from edge import executor
from edge.meta import CMD_DONE, CMD_EXECUTING, Meta
from protocol import messages as m
from protocol import wire
from tests.micropython.executor_cases import DEV, KEY, SCENARIOS, Device, boot_cpython, cmd

pytestmark = pytest.mark.unit

S = m.CommandStatus
R = m.Reason


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_executor_under_cpython(scenario: Callable[[Device], None], tmp_path: Path) -> None:
    dev = Device(tmp_path, boot_cpython, crash_mode="raise")
    scenario(dev)
    dev.check()


# -- direct use ---------------------------------------------------------------------


class FlakyMeta(Meta):
    fail = False

    def save(self) -> int:
        if self.fail:
            raise OSError(28, "no space left")
        return super().save()


class Plug:
    def __init__(self, directory: Path, **kw: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.now: int | None = 1_000
        self.meta = kw.pop("meta", None) or Meta(str(directory))
        actions = ("relay.set", "limit.set", "sample.set", "ota.update")
        handlers = {a: self._handler(a) for a in actions}
        handlers.update(kw.pop("handlers", {}))
        self.ex = executor.Executor(
            DEV, edge_codec.Hmac(KEY), self.meta, handlers, now_ms=lambda: self.now, **kw
        )

    def _handler(self, action: str) -> Callable[[dict[str, Any]], None]:
        def run(params: dict[str, Any]) -> None:
            self.calls.append((action, params))

        return run

    def send(self, frame: bytes) -> dict[str, Any] | None:
        try:
            kind, fields = edge_codec.decode(frame, self.ex.hmac)
        except edge_codec.CodecError as e:
            return self.ex.reject_frame(frame, e)
        assert kind == "Command"
        return self.ex.handle(fields)


def outcome(res: dict[str, Any] | None) -> tuple[S, R]:
    assert res is not None
    return S(res["status"]), R(res["reason"])


def test_wire_values_match_the_schema() -> None:
    for status in S:
        assert getattr(executor, "_" + status.name) == status
    for reason in R:
        if hasattr(executor, "_" + reason.name):
            assert getattr(executor, "_" + reason.name) == reason, reason
    assert executor._N_REASONS == len(R) == len(edge_codec.REASONS)


def test_plug_capabilities_reach_the_hub_as_declared() -> None:
    enc = edge_codec.Encoder(1024)
    enc.message("DeviceStatus", {"device_id": DEV, "capabilities": executor.PLUG_CAPABILITIES})
    msg = wire.decode_frame(bytes(enc.seal(edge_codec.Hmac(KEY))), KEY)
    assert isinstance(msg, m.DeviceStatus)
    K = m.ParamKind
    assert msg.capabilities == (
        m.Capability("relay.set", (m.ParamSpec("on", K.Bool, 0.0, 1.0),)),
        m.Capability("limit.set", (m.ParamSpec("watts", K.Float, 0.0, 3680.0),)),
        m.Capability("sample.set", (m.ParamSpec("interval_ms", K.Int, 100.0, 3_600_000.0),)),
        m.Capability("reboot", ()),
        m.Capability(
            "ota.update",
            (
                m.ParamSpec("url", K.Text, 12.0, 200.0),
                m.ParamSpec("sha256", K.Text, 64.0, 64.0),
                m.ParamSpec("allow_downgrade", K.Bool, 0.0, 1.0),
                m.ParamSpec("release", K.Text, 2.0, 512.0),
                m.ParamSpec("signature", K.Text, 128.0, 128.0),
            ),
        ),
    )


def test_a_handler_is_required_for_every_action_but_reboot(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"limit\.set"):
        executor.Executor(DEV, edge_codec.Hmac(KEY), Meta(str(tmp_path)), {"relay.set": print})


def test_intent_that_cannot_be_persisted_never_runs(tmp_path: Path) -> None:
    meta = FlakyMeta(str(tmp_path))
    plug = Plug(tmp_path, meta=meta)
    assert outcome(plug.send(cmd("c-1", 1))) == (S.DONE, R.NONE)
    meta.fail = True
    res = plug.send(cmd("c-2", 2))
    assert outcome(res) == (S.REJECTED, R.BUSY)
    assert plug.calls == [("relay.set", {"on": True})]
    assert (meta.last_cmd_seq, meta.cmd_id, meta.cmd_state) == (1, "c-1", CMD_DONE)
    assert plug.ex.persist_errors == 1
    meta.fail = False  # flash recovered: the same command is judged afresh
    assert outcome(plug.send(cmd("c-2", 2))) == (S.DONE, R.NONE)
    assert len(plug.calls) == 2
    assert Meta(str(tmp_path)).last_cmd_seq == 2


def test_unsynced_clock_defers_deadlines_without_consuming(tmp_path: Path) -> None:
    plug = Plug(tmp_path)
    plug.now = None
    res = plug.send(cmd("c-1", 1, deadline=5_000))
    assert outcome(res) == (S.REJECTED, R.BUSY)
    assert plug.meta.counter == 0 and not plug.calls
    res = plug.send(cmd("c-2", 2))  # no deadline: runs, time unknown
    assert outcome(res) == (S.DONE, R.NONE)
    assert res is not None and res["executed_at_ms"] == 0
    plug.now = 4_000
    assert outcome(plug.send(cmd("c-3", 3, deadline=5_000))) == (S.DONE, R.NONE)


def test_text_bounds_apply_to_length(tmp_path: Path) -> None:
    caps = [
        {"action": "label.set", "params": [{"name": "text", "kind": 3, "min": 1, "max": 4}]},
    ]
    seen: list[dict[str, Any]] = []
    plug = Plug(tmp_path, capabilities=caps, handlers={"label.set": seen.append})
    texts = ["", "héllo", "héll", "a"]
    got = [
        outcome(plug.send(cmd(f"c-{n}", n, "label.set", (m.Param("text", t),))))
        for n, t in enumerate(texts, 1)
    ]
    oob = (S.REJECTED, R.PARAM_OUT_OF_BOUNDS)
    assert got == [oob, oob, (S.DONE, R.NONE), (S.DONE, R.NONE)]
    assert seen == [{"text": "héll"}, {"text": "a"}]


def test_long_command_id_is_refused_without_consuming(tmp_path: Path) -> None:
    plug = Plug(tmp_path)
    res = plug.send(cmd("c" * 201, 1))
    assert outcome(res) == (S.REJECTED, R.MALFORMED)
    assert plug.meta.counter == 0 and not plug.calls
    assert outcome(plug.send(cmd("c" * 200, 1))) == (S.DONE, R.NONE)
    assert Meta(str(tmp_path)).cmd_id == "c" * 200


def test_long_non_ascii_failure_detail_survives_a_restart(tmp_path: Path) -> None:
    # meta.py cuts strings at 200 bytes; cut inside a character, the copy
    # would no longer load. The executor clips details on a boundary first.
    def jam(params: dict[str, Any]) -> None:
        raise RuntimeError("é" * 150)

    plug = Plug(tmp_path, handlers={"relay.set": jam})
    res = plug.send(cmd("c-1", 1))
    assert outcome(res) == (S.FAILED, R.EXECUTION_ERROR)
    assert res is not None
    assert res["detail"] == "é" * 60 and len(res["detail"].encode()) <= 120
    again = Meta(str(tmp_path))
    assert (again.last_cmd_seq, again.cmd_id, again.cmd_detail) == (1, "c-1", "é" * 60)


def test_exception_without_text_reports_its_type(tmp_path: Path) -> None:
    def jam(params: dict[str, Any]) -> None:
        raise KeyError()

    plug = Plug(tmp_path, handlers={"relay.set": jam})
    res = plug.send(cmd("c-1", 1))
    assert res is not None and res["detail"] == "KeyError"
    assert plug.ex.failed == 1 and plug.ex.executed == 1


def test_progress_of_an_accepted_command_is_sent_not_stored(tmp_path: Path) -> None:
    ota = (
        m.Param("url", "http://10.0.0.5:8080/v1/firmware/x/"),
        m.Param("sha256", "a" * 64),
        m.Param("allow_downgrade", False),
        m.Param("release", "{}"),
        m.Param("signature", "b" * 128),
    )
    plug = Plug(tmp_path, handlers={"ota.update": lambda p: ("downloading into app b",)})

    def news(cid: str, detail: str) -> dict[str, Any] | None:
        return plug.ex.finish(cid, int(S.ACCEPTED), int(R.NONE), detail)

    assert news("c-1", "nothing is open") is None
    res = plug.send(cmd("c-1", 1, "ota.update", ota))
    assert outcome(res) == (S.ACCEPTED, R.NONE)
    assert res is not None and res["detail"] == "downloading into app b"
    saves = plug.meta.counter
    plug.now = 2_000
    res = news("c-1", "é" * 100)
    assert outcome(res) == (S.ACCEPTED, R.NONE)
    assert res is not None and (res["command_id"], res["seq"]) == ("c-1", 1)
    assert res["detail"] == "é" * 60 and res["executed_at_ms"] == 2_000
    assert plug.meta.counter == saves  # nothing written: the stored answer is the first
    assert news("c-2", "another id") is None
    stored = plug.send(cmd("c-1", 1, "ota.update", ota))  # redelivered
    assert stored is not None and stored["detail"] == "downloading into app b"
    assert plug.ex.finish("c-1", int(S.DONE), int(R.NONE), "running app b") is not None
    assert news("c-1", "after the outcome") is None


def test_recover_on_a_fresh_device_is_none(tmp_path: Path) -> None:
    plug = Plug(tmp_path)
    assert plug.ex.recover() is None
    assert plug.meta.counter == 0


def test_interrupted_command_is_recorded_once(tmp_path: Path) -> None:
    meta = Meta(str(tmp_path))
    meta.last_cmd_seq, meta.highest_term, meta.cmd_state = 4, 2, CMD_EXECUTING
    meta.cmd_id, meta.cmd_executed_at_ms = "c-4", 777
    meta.save()
    plug = Plug(tmp_path)
    res = plug.ex.recover()
    assert res == {
        "command_id": "c-4",
        "device_id": DEV,
        "seq": 4,
        "status": int(S.FAILED),
        "reason": int(R.EXECUTION_ERROR),
        "detail": "interrupted by restart; outcome unknown",
        "executed_at_ms": 777,
    }
    saves = plug.meta.counter
    assert plug.ex.recover() == res  # idempotent, nothing more written
    assert plug.meta.counter == saves
    assert plug.ex.stats()["failed"] == 1
    assert outcome(plug.send(cmd("c-4", 4, term=2))) == (S.FAILED, R.EXECUTION_ERROR)
    assert not plug.calls


def test_stats_count_by_reason_name(tmp_path: Path) -> None:
    plug = Plug(tmp_path)
    plug.send(cmd("c-1", 1))
    plug.send(cmd("c-1", 1))
    plug.send(cmd("c-0", 1))
    plug.send(cmd("c-2", 2, device="plug-9"))
    plug.send(cmd("c-3", 2, "limit.set", (m.Param("watts", 1e9),)))
    assert plug.ex.stats() == {
        "executed": 1,
        "failed": 0,
        "duplicates": 1,
        "rejected": {"DUPLICATE": 1, "WRONG_DEVICE": 1, "PARAM_OUT_OF_BOUNDS": 1},
        "unanswered": 0,
        "persist_errors": 0,
    }
