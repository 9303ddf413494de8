"""The device's broker order (edge/hubs.py) and the hubs.set command under
the real MicroPython interpreter: parsed, refused when malformed, saved on
flash so that the next boot (a new interpreter) starts from it, executed
once through the executor as a system command that the device does not
advertise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_micropython

pytestmark = pytest.mark.micropython

_SET = """
import sys, json
from edge import hubs
d = sys.argv[1]
print(json.dumps(hubs.load(d)))
new = hubs.parse(sys.argv[2])
hubs.save(d, new)
print(json.dumps(hubs.load(d)))
"""

_BAD = """
from edge import hubs
for text in ("", "a", ":1883", "h:0", "h:65536", "h:x", "h:1,h:1", "a b:1", "h:1,"):
    try:
        hubs.parse(text)
        print("accepted", repr(text))
    except ValueError as e:
        print("refused")
"""

# The executor with the node's table: hubs.set runs once (a redelivery gets
# the stored answer), is not among the advertised capabilities, and its
# handler's refusal of a bad list is a failure the device reports.
_EXECUTE = """
import sys, json
from edge import codec, hubs
from edge.executor import Executor, PLUG_CAPABILITIES, SYSTEM_CAPABILITIES
from edge.meta import Meta
d = sys.argv[1]
runs = []
def set_hubs(params):
    new = hubs.parse(params["hubs"])
    hubs.save(d, new)
    runs.append(new)
    return "%d hubs" % len(new)
handlers = {"relay.set": None, "limit.set": None, "sample.set": None, "ota.update": None,
            "hubs.set": set_hubs}
ex = Executor("p", codec.Hmac(b"k" * 32), Meta(d), handlers, PLUG_CAPABILITIES,
              system=SYSTEM_CAPABILITIES)
def cmd(seq, text):
    return {"command_id": "c%d" % seq, "device_id": "p", "seq": seq, "term": 1,
            "action": "hubs.set", "deadline_ms": 0,
            "params": [{"name": "hubs", "kind": 3, "text_value": text}]}
first = ex.handle(cmd(1, "10.0.0.3:8883,10.0.0.2:8883"))
again = ex.handle(cmd(1, "10.0.0.3:8883,10.0.0.2:8883"))
bad = ex.handle(cmd(2, "nonsense"))
print(json.dumps({
    "first": [first["status"], first["detail"]],
    "again": [again["status"], again["detail"]],
    "bad": [bad["status"], bad["reason"]],
    "runs": len(runs),
    "advertised": [c["action"] for c in ex.capabilities],
    "saved": hubs.load(d),
}))
"""


def test_parse_save_and_load_survive_a_new_interpreter(tmp_path: Path) -> None:
    d = str(tmp_path)
    out = run_micropython("-c", _SET, d, "10.0.0.2:1883,[::1]:8883").splitlines()
    assert [json.loads(x) for x in out] == [None, [["10.0.0.2", 1883], ["::1", 8883]]]
    # The next boot is a new process: it reads what the last one saved.
    out = run_micropython("-c", _SET, d, "10.0.0.9:1883").splitlines()
    assert json.loads(out[0]) == [["10.0.0.2", 1883], ["::1", 8883]]
    assert json.loads(out[1]) == [["10.0.0.9", 1883]]
    assert not (tmp_path / "hubs.tmp").exists()


def test_a_torn_file_is_ignored_and_the_tmp_copy_is_used(tmp_path: Path) -> None:
    (tmp_path / "hubs.json").write_text('[["10.0.0.2", 18')  # cut by a power loss
    out = run_micropython("-c", _SET, str(tmp_path), "h:1").splitlines()
    assert json.loads(out[0]) is None
    (tmp_path / "hubs.json").unlink()
    (tmp_path / "hubs.tmp").write_text('[["10.0.0.7", 1883]]')  # renamed away, not back
    out = run_micropython("-c", _SET, str(tmp_path), "h:1").splitlines()
    assert json.loads(out[0]) == [["10.0.0.7", 1883]]


def test_malformed_lists_are_refused() -> None:
    assert run_micropython("-c", _BAD).split() == ["refused"] * 9


def test_hubs_set_runs_once_as_a_system_command(tmp_path: Path) -> None:
    out = json.loads(run_micropython("-c", _EXECUTE, str(tmp_path)))
    assert out["first"] == [1, "2 hubs"]  # DONE
    assert out["again"] == [1, "2 hubs"]  # the stored answer, not a second run
    assert out["runs"] == 1
    assert out["bad"] == [2, 9]  # FAILED EXECUTION_ERROR: nothing saved
    assert "hubs.set" not in out["advertised"]
    assert out["saved"] == [["10.0.0.3", 8883], ["10.0.0.2", 8883]]
