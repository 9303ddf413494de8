"""`aiot device run` without a hub: a bad config is one line; a device whose
hubs are all down says so once and still stops cleanly with its counters; a
second run of the same device is refused while the first holds its data.
(tests/cluster/test_device_run.py runs it against real hubs.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.console_support import Running, aiot
from tests.support import free_port, wait_until

pytestmark = pytest.mark.micropython

CONFIG = {"device_id": "plug-q", "key": "00" * 32, "user": "plug-q", "password": "pw"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "cannot read device config"),
        ("{not json", "is not valid JSON"),
        ('["plug-q"]', "expected a JSON object"),
        ('{"device_id": "plug-q"}', "lacks key, hubs: `aiot device add ID --out FILE`"),
        ('{"device_id": "plug-q", "key": "", "hubs": [["h"]]}', "hubs must be a list of"),
    ],
)
def test_a_bad_config_is_one_line(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "plug-q.json"
    if text is not None:
        path.write_text(text)
    out = aiot(tmp_path, "device", "run", "plug-q.json")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("aiot: ") and len(out.stderr.splitlines()) == 1
    assert says in out.stderr
    assert not (tmp_path / "plug-q.data").exists()


def test_no_hub_up_then_ctrl_c(tmp_path: Path) -> None:
    cfg = {**CONFIG, "hubs": [["127.0.0.1", free_port()], ["localhost", free_port()]]}
    (tmp_path / "plug-q.json").write_text(json.dumps(cfg))
    data = tmp_path / "elsewhere"
    run = Running(tmp_path, "plug-q.json", "--data", str(data))
    try:
        wait_until(lambda: len(run.err) > 1, 60, "a line saying no hub took the device")
        assert run.err[0].endswith(f"data in {data}; Ctrl-C stops it")
        hubs = ", ".join(f"{h}:{p}" for h, p in cfg["hubs"])
        assert run.err[1].endswith(
            f"plug-q not connected after 10s: no hub of {hubs} has taken it yet"
        )
        # The same device a second time, on the same data: refused.
        again = aiot(tmp_path, "device", "run", "plug-q.json", "--data", str(data))
        assert again.returncode == 2
        assert (
            again.stderr == f"aiot: {data} is in use: this device already runs (aiot device run)\n"
        )
        assert run.out == [] and run.proc.poll() is None
    except BaseException:
        run.stop()
        raise
    assert run.interrupt() == 0, "\n".join(run.err)
    assert run.out[0].endswith("plug-q stopped; its counters:")
    counters = json.loads("\n".join(run.out[1:]))
    assert counters["watermark"] == 0 and counters["sampled"] > 0  # kept on its flash
    assert (data / "data").is_dir() and not (tmp_path / "plug-q.data").exists()
