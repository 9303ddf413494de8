"""Fuzzing the device's command executor (edge/executor.py).

On CPython, in-process: each example is one simulated plug (a metadata
directory on disk) fed a sequence of steps: generated Command field dicts
straight to ``Executor.handle``; the same as signed frames through the edge
codec (and frames signed with another key or mutated, which reach
``reject_frame``); clock changes; reboots with and without ``recover()``;
power cuts inside a handler (a BaseException after it acted); metadata saves
that fail; ``finish`` of accepted commands, genuine or not.

Under MicroPython (one process per boot, as
tests/micropython/test_executor_micropython.py runs it, with the metadata on
LittleFS over edge/ramdisk.py's RAM flash: tests/micropython/executor_flash.py):
sequences of signed, foreign and mutated frames over three boots, with jammed
handlers, and the power cut at a program or erase of the flash, in the middle
of a command's saves or of recover(); the next boot starts from the flash as
the cut left it, and the cut command is delivered again.

Every step is checked against a model written from the executor's header
comment (its table of checks, in order, and which refusals are consumed):

- nothing escapes but the simulated power cut;
- the status and reason are the model's; a redelivery of the stored command
  gets the stored answer;
- at most once: no sequence number is acted on twice, across reboots and
  power cuts, and acted-on sequence numbers only grow;
- a refusal that is not consumed changes no state and writes nothing; a
  consumed one records seq, term, id and answer, and (when the save worked)
  the copy on flash reads back the same.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import codec as edge_codec
from edge import executor
from edge.meta import CMD_DONE, CMD_EXECUTING, Meta
from protocol import messages as m
from tests.fuzz.budget import Tally, fuzz_settings
from tests.micropython.executor_cases import DEV, FLASH_RUNNER, KEY, OTHER_KEY, boot_micropython
from tests.support import micropython

S = m.CommandStatus
R = m.Reason
HM = edge_codec.Hmac(KEY)
SPECS: dict[str, tuple[tuple[str, int, float, float], ...]] = {
    cap["action"]: tuple((p["name"], p["kind"], p["min"], p["max"]) for p in cap["params"])
    for cap in executor.PLUG_CAPABILITIES
}
INT, FLOAT, BOOL, TEXT = range(4)
U64 = 2**64 - 1
STATE_KEYS = (
    "last_cmd_seq",
    "highest_term",
    "cmd_state",
    "cmd_id",
    "cmd_status",
    "cmd_reason",
    "cmd_detail",
)

# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the model says ``handle`` must answer."""

    path: str  # "refuse" (not consumed), "stored", "final" (consumed), "execute"
    status: S = S.DONE
    reason: R = R.NONE


def check_params(
    specs: tuple[tuple[str, int, float, float], ...], given_params: list[dict[str, Any]]
) -> tuple[R, dict[str, Any]]:
    """BAD_PARAM for shape and kinds first, then PARAM_OUT_OF_BOUNDS; or NONE
    and the values the handler gets."""
    by_name = {s[0]: s for s in specs}
    values: dict[str, Any] = {}
    for p in given_params:
        spec = by_name.get(p["name"])
        if spec is None or p["name"] in values or p["kind"] != spec[1]:
            return R.BAD_PARAM, {}
        kind = p["kind"]
        if kind == BOOL:
            if p["int_value"] not in (0, 1):
                return R.BAD_PARAM, {}
            values[p["name"]] = p["int_value"] == 1
        else:
            values[p["name"]] = p[("int_value", "float_value", "", "text_value")[kind]]
    if set(by_name) - set(values):
        return R.BAD_PARAM, {}
    for name, kind, lo, hi in specs:
        if kind == BOOL:
            continue
        v = len(values[name]) if kind == TEXT else values[name]
        if not lo <= v <= hi:  # NaN is out of bounds too
            return R.PARAM_OUT_OF_BOUNDS, {}
    return R.NONE, values


def predict(state: dict[str, Any], f: dict[str, Any], now: int | None) -> Expect:
    """The executor's header comment, check by check."""
    if f["device_id"] != DEV:
        return Expect("refuse", S.REJECTED, R.WRONG_DEVICE)
    if len(f["command_id"].encode()) > executor._MAX_ID:
        return Expect("refuse", S.REJECTED, R.MALFORMED)
    if f["term"] < state["highest_term"]:
        return Expect("refuse", S.REJECTED, R.STALE_TERM)
    if f["seq"] <= state["last_cmd_seq"]:
        if f["command_id"] == state["cmd_id"] and f["seq"] == state["last_cmd_seq"]:
            return Expect("stored", S(state["cmd_status"]), R(state["cmd_reason"]))
        return Expect("refuse", S.REJECTED, R.DUPLICATE)
    if f["deadline_ms"]:
        if now is None:
            return Expect("refuse", S.REJECTED, R.BUSY)
        if now > f["deadline_ms"]:
            return Expect("final", S.EXPIRED, R.DEADLINE_PASSED)
    specs = SPECS.get(f["action"])
    if specs is None:
        return Expect("final", S.REJECTED, R.UNKNOWN_ACTION)
    reason, _ = check_params(specs, f["params"])
    if reason is not R.NONE:
        return Expect("final", S.REJECTED, reason)
    return Expect("execute")


def interrupted(state: dict[str, Any]) -> dict[str, Any]:
    """What recover() (or handle() without it) makes of EXECUTING on flash."""
    if state["cmd_state"] != CMD_EXECUTING:
        return state
    return {
        **state,
        "cmd_state": CMD_DONE,
        "cmd_status": int(S.FAILED),
        "cmd_reason": int(R.EXECUTION_ERROR),
        "cmd_detail": executor._INTERRUPTED,
    }


# -- generated commands ----------------------------------------------------------------------

i64 = st.integers(-(2**63), 2**63 - 1)
anyfloat = st.one_of(st.floats(), st.sampled_from([0.0, 3680.0, 3680.0001, -0.0, math.nan]))


def _param(data: st.DataObject, action: str) -> dict[str, Any]:
    specs = SPECS.get(action, ())
    if specs and data.draw(st.integers(0, 5), label="fitting param") < 5:
        name, kind, lo, hi = data.draw(st.sampled_from(specs), label="spec")
        if data.draw(st.integers(0, 7), label="other kind") == 7:
            kind = data.draw(st.integers(0, 3), label="kind")
    else:
        name = data.draw(
            st.one_of(st.sampled_from(["on", "watts", "url", "x"]), st.text(max_size=8))
        )
        kind, lo, hi = data.draw(st.integers(0, 3), label="kind"), 0.0, 100.0
    p = {"name": name, "kind": kind, "int_value": 0, "float_value": 0.0, "text_value": ""}
    if kind == INT:
        p["int_value"] = data.draw(
            st.one_of(st.sampled_from([int(lo), int(hi), int(lo) - 1, int(hi) + 1]), i64)
        )
    elif kind == FLOAT:
        p["float_value"] = data.draw(st.one_of(st.sampled_from([lo, hi, hi + 1e-6]), anyfloat))
    elif kind == BOOL:
        p["int_value"] = data.draw(st.one_of(st.sampled_from([0, 1]), st.integers(-2, 3), i64))
    else:
        sizes = [0, int(lo), int(hi), int(hi) + 1, 64]
        length = min(300, data.draw(st.sampled_from(sizes), label="len"))
        p["text_value"] = data.draw(
            st.one_of(st.just("h" * length), st.text(max_size=70)), label="text"
        )
    return p


def _params(data: st.DataObject, action: str) -> list[dict[str, Any]]:
    specs = SPECS.get(action, ())
    if specs and data.draw(st.integers(0, 4), label="complete") < 4:
        out = [_param(data, action) for _ in specs]
        # a complete set: one fitting param per spec, in order
        for p, (name, kind, _, _) in zip(out, specs, strict=True):
            if data.draw(st.integers(0, 5), label="keep name") < 5:
                p["name"] = name
                if p["kind"] != kind and data.draw(st.integers(0, 3), label="keep kind") < 3:
                    return [_param(data, action) for _ in specs]
        return out
    return [_param(data, action) for _ in range(data.draw(st.integers(0, 3), label="params"))]


def _mostly(data: st.DataObject, label: str, usual: Any, other: st.SearchStrategy[Any]) -> Any:
    """``usual`` four times in five, else a draw from ``other``."""
    if data.draw(st.integers(0, 4), label=f"{label}: usual") < 4:
        return usual
    return data.draw(other, label=label)


def command_fields(data: st.DataObject, state: dict[str, Any], now: int | None) -> dict[str, Any]:
    """A Command's fields, mostly a new, well-formed command for this plug
    (next seq, current term, a known action with fitting params), each field
    now and then something else."""
    last, term = state["last_cmd_seq"], state["highest_term"]
    seq = _mostly(
        data,
        "seq",
        min(last + 1, U64),
        st.one_of(
            st.sampled_from([last, min(last + 2, U64), max(0, last - 1), 0, 1, U64]),
            st.integers(0, U64),
        ),
    )
    if seq == last and data.draw(st.booleans(), label="same id"):
        cid = state["cmd_id"]
    else:
        cid = _mostly(
            data,
            "id",
            f"c-{seq}",
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(["", "c" * 200, "c" * 201, "é" * 100, "é" * 101]),
            ),
        )
    action = data.draw(st.sampled_from(list(SPECS)), label="action")
    action = _mostly(data, "other action", action, st.one_of(st.just(""), st.text(max_size=10)))
    later = (now or 0) + 60_000
    deadline = _mostly(
        data,
        "deadline",
        data.draw(st.sampled_from([0, later]), label="deadline or not"),
        st.one_of(
            st.sampled_from([1, (now or 0) - 1, now or 0, (now or 0) + 1]), st.integers(0, U64)
        ),
    )
    return {
        "command_id": cid,
        "device_id": _mostly(data, "device", DEV, st.sampled_from(["plug-08", "", DEV + "x"])),
        "seq": seq,
        "term": _mostly(
            data,
            "term",
            term,
            st.one_of(st.sampled_from([min(term + 1, U64), max(0, term - 1)]), st.integers(0, U64)),
        ),
        "action": action,
        "params": _params(data, action),
        "issued_at_ms": data.draw(st.integers(0, U64), label="issued"),
        "deadline_ms": max(0, min(deadline, U64)),
    }


def encode(fields: dict[str, Any], key: bytes = KEY) -> bytes:
    enc = edge_codec.Encoder(2048)
    enc.message("Command", fields)
    return bytes(enc.seal(edge_codec.Hmac(key)))


def _mutate(data: st.DataObject, frame: bytes) -> bytes:
    out = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, len(out) - 1), label="at")
        out[pos] ^= data.draw(st.integers(1, 255), label="xor")
    if out == frame:  # two edits undid each other
        out[0] ^= 1
    return bytes(out)


# -- the CPython harness --------------------------------------------------------------------


class PowerCut(BaseException):
    """A power cut inside a handler, after it acted: not an Exception, so the
    executor cannot catch it."""


class FlakyMeta(Meta):
    """Metadata whose next saves may fail (flash full, worn out)."""

    def __init__(self, directory: str) -> None:
        self.fail_at: set[int] = set()  # 1 = the next save
        self.saves = 0
        self.stale = False  # the last save failed: the copy on flash is older
        super().__init__(directory)

    def save(self) -> int:
        self.saves += 1
        if self.saves in self.fail_at:
            self.fail_at.discard(self.saves)
            self.stale = True
            raise OSError(28, "no space left on device")
        out = super().save()
        self.stale = False
        return out


@dataclass
class Plug:
    home: Path
    now: int | None = 1_000_000
    acted: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    jam: set[str] = field(default_factory=set)
    cut: str | None = None  # the action whose next run loses power after acting
    ex: executor.Executor = field(init=False)
    meta: FlakyMeta = field(init=False)

    def __post_init__(self) -> None:
        self.boot(recover=True)

    def handler(self, action: str) -> Any:
        def run(params: dict[str, Any]) -> Any:
            cid = self.ex.current_id
            self.acted.append((self._seq, str(cid), dict(params)))
            if self.cut == action:
                self.cut = None
                raise PowerCut()
            if action in self.jam:
                raise RuntimeError(action + " jammed")
            if action == "ota.update":
                return ("downloading",)  # work that ends later: ACCEPTED until finish()
            return action + " ok"

        return run

    def boot(self, recover: bool) -> dict[str, Any] | None:
        self.meta = FlakyMeta(str(self.home))
        handlers = {a: self.handler(a) for a in SPECS}  # reboot's is optional: logged here
        self.ex = executor.Executor(DEV, HM, self.meta, handlers, now_ms=lambda: self.now)
        self._seq = 0
        result: dict[str, Any] | None = self.ex.recover() if recover else None
        return result

    def state(self) -> dict[str, Any]:
        return {k: getattr(self.meta, k) for k in STATE_KEYS}

    def on_flash(self) -> dict[str, Any]:
        disk = Meta(str(self.home))
        return {k: getattr(disk, k) for k in STATE_KEYS}


def _outcome(res: dict[str, Any] | None) -> tuple[S, R]:
    assert res is not None
    return S(res["status"]), R(res["reason"])


class Run:
    """One example: a plug, the steps fed to it and the checks after each."""

    def __init__(self, home: Path, tally: Tally) -> None:
        self.plug = Plug(home)
        self.tally = tally
        self.acted_seqs: list[int] = []

    def step_command(self, data: st.DataObject, as_frame: bool) -> None:
        plug = self.plug
        before = plug.state()
        counter = plug.meta.counter
        f = command_fields(data, before, plug.now)
        frame = encode(f) if as_frame else b""
        if as_frame:
            kind, f = edge_codec.decode(frame, HM)
            assert kind == "Command"
        expect = predict(interrupted(before), f, plug.now)
        self.tally.note(expect.path if expect.path != "refuse" else f"refuse {expect.reason.name}")
        if expect.path == "execute":
            if data.draw(st.integers(0, 9), label="power cut") == 9:
                plug.cut = f["action"]
            if data.draw(st.integers(0, 5), label="jam") == 5:
                plug.jam = {f["action"]}
        saves_fail = data.draw(st.integers(0, 9), label="flash fails") == 9
        if saves_fail:
            plug.meta.fail_at = {plug.meta.saves + data.draw(st.integers(1, 2), label="which")}
        failing = {s - plug.meta.saves for s in plug.meta.fail_at}
        plug._seq = f["seq"]
        jammed = f["action"] in plug.jam
        acted = len(plug.acted)
        self.tally.hit("frame" if as_frame else "fields")
        try:
            res = plug.ex.handle(f)
        except PowerCut:
            self.cut_power(f, expect)
            return
        finally:
            plug.jam = set()
            plug.cut = None
        after = plug.state()
        if before["cmd_state"] == CMD_EXECUTING:  # handle() met an interrupted command first
            before = interrupted(before)
            counter = plug.meta.counter if 1 in failing else counter + 1
            failing = {i - 1 for i in failing}
        if expect.path == "execute" and 1 in failing:  # the intent could not be saved
            expect = Expect("refuse", S.REJECTED, R.BUSY)
        assert res is not None and res["device_id"] == DEV
        if expect.path == "execute":
            if jammed:
                want = (S.FAILED, R.EXECUTION_ERROR)
            elif f["action"] == "ota.update":  # its work ends later
                want = (S.ACCEPTED, R.NONE)
            else:
                want = (S.DONE, R.NONE)
            assert _outcome(res) == want, (res, f)
            if f["action"] == "reboot" and not jammed:
                assert plug.ex.reboot_requested
            assert len(plug.acted) == acted + 1, "an executed command did not act once"
            seq, cid, params = plug.acted[-1]
            assert (seq, cid) == (f["seq"], f["command_id"])
            assert params == check_params(SPECS[f["action"]], f["params"])[1]
            self.acted_seqs.append(seq)
            self.consumed(before, after, f, res)
        else:
            assert len(plug.acted) == acted, f"acted on a refused command: {expect}"
            assert _outcome(res) == (expect.status, expect.reason), (res, expect, f)
            assert (res["command_id"], res["seq"]) == (
                (before["cmd_id"], before["last_cmd_seq"])
                if expect.path == "stored"
                else (f["command_id"], f["seq"])
            )
            if expect.path == "final":
                self.consumed(before, after, f, res)
            else:
                assert after == before, (expect, before, after)
                assert plug.meta.counter == counter, "a refusal wrote metadata"
        if not plug.meta.stale:
            assert plug.on_flash() == plug.state()
        self.at_most_once()
        if plug.ex.reboot_requested:  # the device resets once the answer is out
            self.tally.note("reboot requested")
            plug.boot(recover=True)

    def consumed(
        self, before: dict[str, Any], after: dict[str, Any], f: dict[str, Any], res: dict[str, Any]
    ) -> None:
        assert after["last_cmd_seq"] == f["seq"]
        assert after["highest_term"] == max(before["highest_term"], f["term"])
        assert after["cmd_id"] == f["command_id"] and after["cmd_state"] == CMD_DONE
        assert (after["cmd_status"], after["cmd_reason"]) == (res["status"], res["reason"])

    def cut_power(self, f: dict[str, Any], expect: Expect) -> None:
        """The handler acted, then the power went: reboot; the command is
        recorded as failed with an unknown outcome and never runs again."""
        assert expect.path == "execute"
        self.tally.hit("power_cut")
        seq, cid, _ = self.plug.acted[-1]
        assert (seq, cid) == (f["seq"], f["command_id"])
        self.acted_seqs.append(seq)
        self.at_most_once()
        disk = self.plug.on_flash()
        assert disk["cmd_state"] == CMD_EXECUTING and disk["last_cmd_seq"] == seq
        res = self.plug.boot(recover=True)
        assert res is not None
        assert _outcome(res) == (S.FAILED, R.EXECUTION_ERROR)
        assert (res["command_id"], res["seq"]) == (cid, seq)

    def step_bad_frame(self, data: st.DataObject) -> None:
        plug = self.plug
        before, counter = plug.state(), plug.meta.counter
        f = command_fields(data, before, plug.now)
        how = data.draw(st.sampled_from(["other_key", "mutated", "truncated", "random"]))
        frame = encode(f, OTHER_KEY if how == "other_key" else KEY)
        if how == "mutated":
            frame = _mutate(data, frame)
        elif how == "truncated":
            frame = frame[: data.draw(st.integers(0, len(frame) - 1), label="cut")]
        elif how == "random":
            frame = data.draw(st.binary(max_size=300), label="bytes")
        self.tally.hit(how)
        acted = len(plug.acted)
        try:
            kind, fields = edge_codec.decode(frame, HM)
        except edge_codec.CodecError as exc:
            res = plug.ex.reject_frame(frame, exc)
            if res is not None:
                want = R.BAD_SIGNATURE if exc.reason == "bad_hmac" else R.MALFORMED
                assert _outcome(res) == (S.REJECTED, want)
            assert plug.state() == before and plug.meta.counter == counter
        else:
            raise AssertionError(f"a {how} frame passed the HMAC check: {kind} {fields}")
        assert len(plug.acted) == acted

    def step_finish(self, data: st.DataObject) -> None:
        plug = self.plug
        before, counter = plug.state(), plug.meta.counter
        genuine = data.draw(st.booleans(), label="genuine id")
        cid = before["cmd_id"] if genuine else data.draw(st.text(max_size=8), label="id")
        status = data.draw(st.sampled_from([S.DONE, S.FAILED]), label="status")
        self.tally.hit("finish")
        res = plug.ex.finish(cid, int(status), int(R.NONE), "finished")
        open_ = (
            before["cmd_state"] == CMD_DONE
            and before["cmd_status"] == S.ACCEPTED
            and before["cmd_id"] == cid
        )
        if not open_:
            assert res is None and plug.state() == before and plug.meta.counter == counter
        else:
            assert res is not None and _outcome(res) == (status, R.NONE)
            assert plug.state()["cmd_status"] == status

    def step_progress(self, data: st.DataObject) -> None:
        """News of the open command: an ACCEPTED answer for it, nothing stored."""
        plug = self.plug
        before, counter = plug.state(), plug.meta.counter
        genuine = data.draw(st.booleans(), label="genuine id")
        cid = before["cmd_id"] if genuine else data.draw(st.text(max_size=8), label="id")
        detail = data.draw(st.text(max_size=200), label="detail")
        self.tally.hit("progress")
        res = plug.ex.finish(cid, int(S.ACCEPTED), int(R.NONE), detail)
        open_ = (
            before["cmd_state"] == CMD_DONE
            and before["cmd_status"] == S.ACCEPTED
            and before["cmd_id"] == cid
        )
        assert plug.state() == before and plug.meta.counter == counter
        if not open_:
            assert res is None
        else:
            self.tally.note("progress open")
            assert res is not None and _outcome(res) == (S.ACCEPTED, R.NONE)
            assert (res["command_id"], res["seq"]) == (cid, before["last_cmd_seq"])
            assert detail.startswith(res["detail"]) and len(res["detail"].encode()) <= 120

    def step_reboot(self, data: st.DataObject) -> None:
        recover = data.draw(st.booleans(), label="recover")
        self.tally.hit("reboot")
        disk = self.plug.on_flash()
        res = self.plug.boot(recover)
        state = self.plug.state()
        if recover:
            assert state == interrupted(disk)
            assert (res is None) == (disk["cmd_state"] not in (CMD_EXECUTING, CMD_DONE))
        else:
            assert state == disk

    def at_most_once(self) -> None:
        seqs = self.acted_seqs
        assert len(seqs) == len(set(seqs)), f"a seq acted on twice: {seqs}"
        assert seqs == sorted(seqs), f"acted-on seqs went back: {seqs}"


@pytest.mark.unit
def test_fuzz_executor_on_cpython_at_most_once_and_only_consumed_commands_change_state() -> None:
    tally = Tally("executor_cpython")

    @fuzz_settings(300)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        tally.example()
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(Path(tmp), tally)
            for _ in range(data.draw(st.integers(1, 25), label="steps")):
                step = data.draw(
                    st.sampled_from(
                        ["fields"] * 4
                        + ["frame"] * 3
                        + ["bad", "clock", "reboot", "finish", "progress"]
                    ),
                    label="step",
                )
                if step in ("fields", "frame"):
                    run.step_command(data, as_frame=step == "frame")
                elif step == "bad":
                    run.step_bad_frame(data)
                elif step == "clock":
                    run.plug.now = data.draw(
                        st.one_of(st.none(), st.integers(0, 2**63 - 1)), label="now"
                    )
                elif step == "reboot":
                    run.step_reboot(data)
                elif step == "progress":
                    run.step_progress(data)
                else:
                    run.step_finish(data)

    one()
    tally.done()
    assert tally.kinds.get("fields", 0) > 0 and tally.kinds.get("frame", 0) > 0


# -- under MicroPython ----------------------------------------------------------------------


def _signed_frames(
    data: st.DataObject, state: dict[str, Any], now: int | None, n: int
) -> list[tuple[str, bytes, dict[str, Any] | None]]:
    """n frames (how, bytes, the Command fields when authentic); seq and term
    follow what the device will have recorded, so most commands are new."""
    out: list[tuple[str, bytes, dict[str, Any] | None]] = []
    track = dict(state)
    for _ in range(n):
        f = command_fields(data, track, now)
        how = data.draw(st.sampled_from(["signed"] * 5 + ["other_key", "mutated"]), label="how")
        frame = encode(f, OTHER_KEY if how == "other_key" else KEY)
        if how == "mutated":
            frame = _mutate(data, frame)
        fields = edge_codec.decode(frame, HM)[1] if how == "signed" else None
        if fields is not None and predict(track, fields, now).path in ("final", "execute"):
            track.update(
                last_cmd_seq=fields["seq"],
                highest_term=max(track["highest_term"], fields["term"]),
                cmd_id=fields["command_id"],
            )
        out.append((how, frame, fields))
    return out


FLASH_BLOCKS = 24  # LittleFS on 24 blocks of 512 bytes: the two metadata copies fit


def after_cut(
    before: dict[str, Any], fields: dict[str, Any] | None, now: int | None, jam: list[str]
) -> list[dict[str, Any]]:
    """What flash may hold after the power went during one job, from the
    state before it: untouched, or any state the job writes on its way
    (executor.py: the intent, EXECUTING, before acting; DONE with the result
    after). ``fields`` None: the job was recover()."""
    if fields is None:
        return [before, interrupted(before)]
    expect = predict(before, fields, now)
    if expect.path not in ("execute", "final"):
        return [before]
    common = {
        **{k: v for k, v in before.items() if k != "cmd_detail"},  # the executor's text
        "last_cmd_seq": fields["seq"],
        "highest_term": max(before["highest_term"], fields["term"]),
        "cmd_id": fields["command_id"],
    }
    if expect.path == "final":
        status, reason = expect.status, expect.reason
        return [
            before,
            {**common, "cmd_state": CMD_DONE, "cmd_status": status, "cmd_reason": reason},
        ]
    intent = {
        **common,
        "cmd_state": CMD_EXECUTING,
        "cmd_status": 0,
        "cmd_reason": 0,
        "cmd_detail": "",
    }
    jammed = fields["action"] in jam
    status, reason = (S.FAILED, R.EXECUTION_ERROR) if jammed else (S.DONE, R.NONE)
    done = {**common, "cmd_state": CMD_DONE, "cmd_status": status, "cmd_reason": reason}
    return [before, intent, done]


def _same(state: dict[str, Any], pattern: dict[str, Any]) -> bool:
    """``state`` matches ``pattern`` on the keys the pattern has (a state
    written by a cut job leaves out what only the handler knows)."""
    return all(state[k] == pattern[k] for k in STATE_KEYS if k in pattern)


@pytest.mark.micropython
def test_fuzz_executor_under_micropython_at_most_once() -> None:
    """Three boots of the executor under MicroPython, its metadata on
    LittleFS over a RAM block device that may lose power at any program or
    erase: in the middle of saving a command's intent or its result, or
    while recover() records an interrupted one. After each cut the device
    boots from what the flash holds: it holds a state the cut job could have
    written, recover() runs nothing, the cut command sent again is never
    run a second time, and over all boots every command ran at most once,
    exactly those the model runs."""
    micropython()
    tally = Tally("executor_micropython")

    @fuzz_settings(40)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        tally.example()
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            log = home / "acted.jsonl"
            flash = {"image": str(home / "flash.img"), "blocks": FLASH_BLOCKS}
            state: dict[str, Any] = {
                k: "" if k in ("cmd_id", "cmd_detail") else 0 for k in STATE_KEYS
            }
            allowed = [state]  # what flash may hold at the next boot
            cut_frame: tuple[str, bytes, dict[str, Any] | None] | None = None
            executed: list[str] = []  # ids the model says run, in order, over every boot
            for _boot in range(3):
                now = data.draw(st.one_of(st.none(), st.integers(0, 2**40)), label="now")
                jam = data.draw(st.lists(st.sampled_from(list(SPECS)), max_size=2), label="jam")
                frames = _signed_frames(data, allowed[0], now, data.draw(st.integers(3, 20)))
                if cut_frame is not None:  # the broker delivers the cut command again
                    frames.insert(0, cut_frame)
                cut_at = 0
                if data.draw(st.integers(0, 2), label="power cut") > 0:
                    cut_at = data.draw(st.integers(1, 12), label="cut at")  # 3 or 4 a save
                torn = data.draw(st.sampled_from([None, 16, 100]), label="torn")
                init = {
                    "op": "init",
                    "dir": "",
                    "device_id": DEV,
                    "key_hex": KEY.hex(),
                    "log": str(log),
                    "now": now,
                    "fail": jam,
                    "flash": {**flash, "cut_at": cut_at, "torn": torn},
                }
                jobs = [{"op": "frame", "hex": frame.hex()} for _, frame, _ in frames]
                # The heap holds the flash too (12 KiB, and its image once more).
                outs = boot_micropython(
                    [init, {"op": "recover"}, *jobs], False, "160k", FLASH_RUNNER
                )
                dead = bool(outs[-1].get("dead"))
                assert len(outs) == len(jobs) + 2 or dead, outs[-1]
                logged = log.read_text().split("\n")[:-1] if log.exists() else []
                ids = [json.loads(line)["id"] for line in logged]
                # 1. The boot found on flash a state the last one could leave.
                loaded = {k: outs[0]["meta"][k] for k in STATE_KEYS}
                assert any(_same(loaded, a) for a in allowed), (loaded, allowed)
                # 2. recover() answers an interrupted command failed (4. shows it ran nothing).
                rec = outs[1]
                if loaded["cmd_state"] == CMD_EXECUTING and not rec.get("dead"):
                    assert rec["result"] is not None
                    got = (S(rec["result"]["status"]), R(rec["result"]["reason"]))
                    assert got == (S.FAILED, R.EXECUTION_ERROR), rec
                    assert rec["result"]["command_id"] == loaded["cmd_id"]
                    tally.note("recovered an interrupted command")
                state = {k: rec["meta"][k] for k in STATE_KEYS}
                if rec.get("dead"):
                    tally.note("cut in recover")
                    allowed, cut_frame = after_cut(loaded, None, now, jam), None
                    assert ids == executed, "acted while recovering"
                    continue
                assert _same(state, interrupted(loaded))
                counter = rec["meta"]["counter"]
                allowed, cut_frame = [state], None
                # 3. Each frame as the model says, up to the one the power cut.
                for (how, frame, fields), out in zip(frames, outs[2:], strict=False):
                    tally.hit(how)
                    if out.get("dead"):
                        tally.hit("power_cut")
                        allowed, cut_frame = (
                            after_cut(state, fields, now, jam),
                            (how, frame, fields),
                        )
                        if len(ids) > len(executed):  # it acted before the cut
                            assert fields is not None
                            tally.note("cut after acting")
                            executed.append(fields["command_id"])
                            # ...so flash must hold its intent or its result:
                            # the state before it would let it run again.
                            allowed = allowed[1:]
                        elif fields is not None and predict(state, fields, now).path == "execute":
                            tally.note("cut before acting")
                        break
                    res = out["result"]
                    meta = {k: out["meta"][k] for k in STATE_KEYS}
                    if fields is None:  # forged or mutated: refused, nothing written
                        assert meta == state and out["meta"]["counter"] == counter
                        assert res is None or S(res["status"]) is S.REJECTED
                        continue
                    expect = predict(state, fields, now)
                    tally.note(expect.path)
                    assert res is not None
                    got = (S(res["status"]), R(res["reason"]))
                    if expect.path == "execute":
                        jammed = fields["action"] in jam
                        want = (S.FAILED, R.EXECUTION_ERROR) if jammed else (S.DONE, R.NONE)
                        assert got == want, (got, fields)
                        executed.append(fields["command_id"])
                    else:
                        assert got == (expect.status, expect.reason), (got, expect, fields)
                    if expect.path in ("refuse", "stored"):
                        assert meta == state and out["meta"]["counter"] == counter, expect
                    else:
                        assert meta["last_cmd_seq"] == fields["seq"]
                        assert meta["cmd_id"] == fields["command_id"]
                    state, counter = meta, out["meta"]["counter"]
                    allowed = [state]
                # 4. The device acted on exactly the commands the model runs, once each.
                # (A command run again, by recover() or on its redelivery
                # after a cut, would be an entry the model does not have.)
                assert ids == executed, (ids, executed)

    one()
    tally.done()
    assert tally.inputs > 0
