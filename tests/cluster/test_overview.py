"""The home overview against the readings API, on a real hub process.

Two plugs send their energy counters over MQTT (real Mosquitto, signed
frames, committed through Raft) around both daylight-saving changes of
Europe/Berlin in 2025, at irregular times. The hub's tariff has a night
period across midnight. For the 23-hour and the 25-hour day, each device's
energy and cost in ``GET /v1/overview`` equal what this test computes on its
own from ``GET /v1/devices/{id}/readings`` (the counter spread linearly
between readings, split at local hours, each hour priced at its local time);
the totals are the sums; a viewer gets their own device only; and
``aiot overview --json --day D`` prints the API's answer."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import running_cluster, watermark
from tests.support import wait_until
from tools.base.hubclient import HubClient
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

BERLIN = ZoneInfo("Europe/Berlin")
HOUR_MS = 3_600_000
NIGHT, DAY = 0.12, 0.31
TARIFF = f"""
[tariff]
currency = "EUR"
timezone = "Europe/Berlin"
periods = {{ "22:00-06:00" = {NIGHT}, "06:00-22:00" = {DAY} }}

[retention]
raw_days = 36500  # the 2025 readings stay, for the readings API to show them
"""
SPRING, AUTUMN = date(2025, 3, 30), date(2025, 10, 26)  # 23 and 25 hours
DEVICES = ("plug-a", "plug-b")
VIEWER = ("vic", "vic's long password")


def local_ms(d: date, hour: int = 0) -> int:
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=BERLIN).timestamp() * 1000)


def counter(rng: random.Random, start_ms: int, end_ms: int, wh: float) -> list[tuple[int, float]]:
    """Counter readings from start to end, 5 to 50 minutes apart, rising by
    up to 400 Wh each (a reboot resets it once to a small value)."""
    out, t = [], start_ms
    reset_at = start_ms + (end_ms - start_ms) // 3
    while t < end_ms:
        t += rng.randint(5 * 60_000, 50 * 60_000)
        if out and out[-1][0] < reset_at <= t:
            wh = rng.uniform(0, 5)
        else:
            wh += rng.uniform(0, 400)
        out.append((t, round(wh, 2)))
    return out


def frames(device: str, key: bytes, readings: list[tuple[int, int, float]]) -> list[bytes]:
    """One signed batch per reading (sensor, ts_ms, value), seq 1, 2, ..."""
    out = []
    for seq, (sensor, ts, value) in enumerate(readings, 1):
        msg = m.TelemetryBatch(device, 1, seq, ts, (m.Reading(sensor, 0, value),), 0)
        out.append(wire.seal(wire.encode(msg), key))
    return out


async def publish(port: int, device: str, password: str, payloads: list[bytes]) -> None:
    """Publish as the device, once its broker knows its new credentials."""
    for _ in range(100):
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, username=device, password=password, identifier=f"t-{device}"
            ) as c:
                for p in payloads:
                    await c.publish(topics.topic(device, "up"), p, qos=1)
                return
        except aiomqtt.MqttError:  # not authorized yet: the broker reloads its users
            await asyncio.sleep(0.1)
    raise AssertionError(f"the broker never accepted {device}")


def expected_day(cluster: LocalCluster, device: str, day: date) -> tuple[float, float, int]:
    """The device's Wh and cost on the local day, from the readings API."""
    start, end = local_ms(day), local_ms(day + timedelta(days=1))
    rows = cluster.client(0).get(
        f"/v1/devices/{device}/readings", sensor=1, from_ms=start - HOUR_MS, to_ms=end + HOUR_MS
    )["readings"]
    rows.sort(key=lambda r: (r["ts_ms"], r["seq"]))
    hours = list(range(start, end, HOUR_MS))
    wh = dict.fromkeys(hours, 0.0)
    for a, b in itertools.pairwise(rows):
        delta = b["value"] - a["value"] if b["value"] >= a["value"] else b["value"]
        for h in hours:
            lo, hi = max(a["ts_ms"], h), min(b["ts_ms"], h + HOUR_MS)
            if hi > lo:
                wh[h] += delta * (hi - lo) / (b["ts_ms"] - a["ts_ms"])

    def price(h: int) -> float:
        hour = datetime.fromtimestamp(h / 1000, BERLIN).hour
        return NIGHT if hour >= 22 or hour < 6 else DAY

    cost = sum(w / 1000 * price(h) for h, w in wh.items())
    return sum(wh.values()), cost, len(hours)


def test_the_overview_equals_the_readings_priced_across_midnight_and_dst(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    with running_cluster(tmp_path, nodes=1, extra=TARIFF) as cluster:
        admin = cluster.client(0)
        for device in DEVICES:
            secrets = cluster.add_device(device)
            readings = []
            for day in (SPRING, AUTUMN):
                start, end = (
                    local_ms(day - timedelta(days=1)) - 2 * HOUR_MS,
                    local_ms(day + timedelta(days=1), 2),
                )
                readings += [(1, ts, v) for ts, v in counter(rng, start, end, 1000.0)]
            readings.append((0, int(time.time() * 1000), 321.0 if device == "plug-a" else 0.0))
            payloads = frames(device, bytes.fromhex(secrets["key"]), readings)
            asyncio.run(publish(cluster.ports[0].broker, device, secrets["password"], payloads))
            n = len(payloads)
            wait_until(lambda d=device, n=n: watermark(cluster, 0, d) == n, 60, f"{device} stored")
        body = {"role": "viewer", "password": VIEWER[1], "devices": ["plug-a"]}
        admin.request("PUT", f"/v1/users/{VIEWER[0]}", json=body)

        for day, hours in ((SPRING, 23), (AUTUMN, 25)):
            out = admin.get("/v1/overview", day=day.isoformat())
            assert (out["day"], out["hours"], out["timezone"], out["currency"]) == (
                day.isoformat(),
                hours,
                "Europe/Berlin",
                "EUR",
            )
            rows = {d["device_id"]: d for d in out["devices"]}
            assert set(rows) == set(DEVICES)
            for device in DEVICES:
                wh, cost, n = expected_day(cluster, device, day)
                y_wh, y_cost, _ = expected_day(cluster, device, day - timedelta(days=1))
                assert n == hours and wh > 0
                assert rows[device]["wh"] == pytest.approx(wh, abs=1e-5), (day, device)
                assert rows[device]["cost"] == pytest.approx(cost, abs=1e-5), (day, device)
                assert rows[device]["yesterday_wh"] == pytest.approx(y_wh, abs=1e-5)
                assert rows[device]["yesterday_cost"] == pytest.approx(y_cost, abs=1e-5)
            for key, field in (("today_wh", "wh"), ("today_cost", "cost")):
                assert out[key] == pytest.approx(sum(d[field] for d in rows.values()), abs=1e-5)
            assert out["yesterday_wh"] == pytest.approx(
                sum(d["yesterday_wh"] for d in rows.values()), abs=1e-5
            )
            assert [d["wh"] for d in out["devices"]] == sorted(
                (d["wh"] for d in out["devices"]), reverse=True
            )
        assert out["power_w_now"] == 321.0 and out["stale"] == []

        # A viewer's overview holds their device alone, with the same figures.
        token = admin.post("/v1/login", {"username": VIEWER[0], "password": VIEWER[1]})["token"]
        with HubClient(cluster.url(0), token) as viewer:
            mine = viewer.get("/v1/overview", day=SPRING.isoformat())
        assert [d["device_id"] for d in mine["devices"]] == ["plug-a"]
        everyone = {
            d["device_id"]: d for d in admin.get("/v1/overview", day=SPRING.isoformat())["devices"]
        }
        assert mine["devices"] == [{**everyone["plug-a"], "share": 1.0}]
        assert mine["today_wh"] == everyone["plug-a"]["wh"]

        # The command prints what the API answers.
        aiot = [sys.executable, "-m", "tools.cli", "overview", "--config", str(cluster.configs[0])]
        cli = subprocess.run(
            [*aiot, "--json", "--day", SPRING.isoformat()],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        printed = json.loads(cli.stdout)
        api = admin.get("/v1/overview", day=SPRING.isoformat())
        printed.pop("now_ms"), api.pop("now_ms")
        assert printed == api
        for key in ("power_w_now", "today_wh", "today_cost", "yesterday_wh", "devices"):
            assert key in printed
        assert {"device_id", "wh", "cost"} <= set(printed["devices"][0])

        text = subprocess.run(
            [*aiot, "--day", AUTUMN.isoformat()],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        assert text[0].split() == ["day", AUTUMN.isoformat(), "(Europe/Berlin,", "25", "h)"]
        autumn = admin.get("/v1/overview", day=AUTUMN.isoformat())
        assert text[2].split()[:3] == [
            AUTUMN.isoformat(),
            f"{autumn['today_wh'] / 1000:.3f}",
            "kWh",
        ]
        assert f"{autumn['today_cost']:.2f} EUR" in text[2]
        assert {line.split()[0] for line in text[5:7]} == set(DEVICES)

        bad = subprocess.run(
            [*aiot, "--day", "30.3.2025"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "expected YYYY-MM-DD" in bad.stderr
