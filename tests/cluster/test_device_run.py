"""A newcomer's path through a hub cluster by hand, run from a folder outside
the repository: `aiot device list` on an empty registry says so; `aiot device
add --out` writes a device config; `aiot device run` starts the real firmware
from it, says which hub it connected to, says so again when the hub it is on
is killed and it fails over, and on Ctrl-C stops the device cleanly and prints
its counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.hubs import running_cluster
from tests.console_support import Running, aiot
from tests.support import wait_until
from tools.base.paths import ROOT
from tools.lab.cluster import LocalCluster
from tools.lab.device import edge_runtime

pytestmark = pytest.mark.cluster


def broker_node(cluster: LocalCluster, port: int) -> int:
    return next(i for i, p in enumerate(cluster.ports) if p.broker == port)


def test_device_run_from_outside_the_repository_reports_connect_and_failover(
    tmp_path: Path,
) -> None:
    home = tmp_path / "newcomer"  # not the checkout, not below it
    home.mkdir()
    assert ROOT not in home.resolve().parents
    with running_cluster(tmp_path) as cluster:
        hub_config = str(cluster.configs[0])
        listed = aiot(home, "device", "list", "--config", hub_config)
        assert listed.returncode == 0, listed.stderr
        assert (listed.stdout, listed.stderr) == ("", "no devices\n")
        assert json.loads(aiot(home, "device", "list", "-c", hub_config, "--json").stdout) == []

        added = aiot(
            home, "device", "add", "plug-r", "--config", hub_config, "--out", "plug-r.json"
        )
        assert added.returncode == 0, added.stderr
        hubs = json.loads((home / "plug-r.json").read_text())["hubs"]

        run = Running(home, "plug-r.json")
        try:
            wait_until(lambda: bool(run.links()), 60, "a line saying the device connected")
            (what, port), *_ = run.links()
            # Its first hub, unless that broker refused it for a moment (the
            # hubs load a new device's credentials each on its own).
            at = [p for _, p in hubs].index(port)
            assert what == "connected to"
            assert run.out[0].endswith(f"plug-r connected to 127.0.0.1:{port} (hub {at + 1} of 3)")
            first = broker_node(cluster, port)
            device = cluster.client((first + 1) % 3).get  # a node that stays up

            def holder() -> str | None:
                node: str | None = (device("/v1/devices/plug-r")["presence"] or {}).get("node")
                return node

            # The hub it names holds the device; its readings are stored.
            wait_until(lambda: holder() == cluster.node_id(first), 30, "the hub it names")
            wait_until(lambda: device("/v1/devices/plug-r")["watermark"] > 0, 60, "readings stored")

            # The hub it is on dies: it fails over, and says so once.
            cluster.kill(first)
            wait_until(lambda: len(run.links()) > 1, 60, "a line saying the device failed over")
            what, port = run.links()[1]
            assert what == "failed over to" and port != hubs[at][1]
            assert run.out[1].endswith(f", from 127.0.0.1:{hubs[at][1]}")
            # The hub it names is the one that holds the device now.
            now = cluster.node_id(broker_node(cluster, port))
            wait_until(lambda: holder() == now, 30, f"{now} holding the device")
            assert len(run.links()) == 2
            assert len(run.device_pids()) == 1
        except BaseException:
            run.stop()
            print("stdout:", *run.out, "stderr:", *run.err, sep="\n")
            raise
        code = run.interrupt()
        assert code == 0, "\n".join(run.err)
        assert run.device_pids() == []  # the device stopped with it
        tail = "\n".join(run.out)
        assert "plug-r stopped; its counters:" in tail
        counters = json.loads(tail[tail.index("\n{") :])
        assert counters["watermark"] > 0 and counters["dropped"] == 0
        runtime = "MicroPython" if edge_runtime() == "micropython" else "CPython"
        assert run.err[0].startswith(f"plug-r: the firmware on {runtime}")
        assert "Traceback" not in "\n".join(run.err)

    # Its data lives beside its config; nothing else was written here.
    assert sorted(p.name for p in home.iterdir()) == ["plug-r.data", "plug-r.json"]
    assert (home / "plug-r.data" / "data").is_dir()
    assert (home / "plug-r.data" / "config.json").stat().st_mode & 0o077 == 0
