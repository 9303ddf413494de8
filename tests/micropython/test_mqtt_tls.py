"""edge/mqtt.py over TLS against a real Mosquitto, the cluster CA pinned.

The client runs under the real MicroPython interpreter (edge/ compiled by
mpy-cross, mbedTLS underneath) and, for the same scenarios, under CPython
asyncio (OpenSSL). Every broker is a real Mosquitto with TLS listeners whose
certificates come from hub/core/tls.py, or are made by hand where the cluster
would never issue them (another CA, expired, another host).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.mqtt import tls_context
from tests.device import Device as FirmwareDevice
from tests.integration.test_edge_device import KEY, device_config
from tests.micropython.mqtt_harness import Device, Lab, run_lab
from tests.micropython.mqtt_tls_harness import HOST, Pki, start_device, tls_mosquitto
from tests.support import ROOT, free_port, micropython
from tools.lab.acker import Acker

pytestmark = pytest.mark.integration

RUNTIMES = [
    pytest.param("micropython", marks=pytest.mark.micropython),
    pytest.param("cpython"),
]
LONG = 30.0  # failovers on a loaded machine: generous, never a measured duration


def config(ca: str | None, *ports: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client_id": "dev-tls",
        "servers": [[HOST, p] for p in ports],
        "ca": ca,
        "keepalive": 30,
        "timeout_s": 5,
        "ack_timeout_s": 5,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
        "return_after_s": None,
    }
    cfg.update(kw)
    return cfg


async def status(dev: Device, **match: Any) -> dict[str, Any]:
    """Ask for the status until it matches (the client gets there on its own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LONG
    while True:
        dev.send(op="status")
        st = await dev.wait("status")
        if all(st.get(k) == v for k, v in match.items()):
            return st
        if loop.time() > deadline:
            raise AssertionError(f"status never matched {match}: {st}")
        await asyncio.sleep(0.05)


async def echo(dev: Device, topic: str, n: int, qos: int = 1) -> None:
    """Publish message ``n`` on ``topic`` (subscribed) and see it come back through the broker."""
    payload = f"reading {n}".encode().hex()
    dev.send(op="pub", id=n, topic=topic, hex=payload, qos=qos)
    await dev.wait("pub_done", timeout=LONG, id=n)
    await dev.wait("msg", timeout=LONG, topic=topic, hex=payload)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_publishes_and_subscribes_over_tls_with_the_cluster_ca(
    runtime: str, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    port = free_port()
    cert = pki.node("cluster", "hub-1", [HOST])  # as `aiot cluster init` issues it

    async def scenario(lab: Lab) -> None:
        # A device without the CA speaks plain MQTT, which the TLS listener refuses.
        plain = await start_device(lab, runtime, config(None, port, client_id="dev-plain"))
        assert (await plain.wait("connect_failed", timeout=LONG))["error"]

        dev = await start_device(lab, runtime, config(ca, port, subs=[["t/tls", 1]]))
        assert (await dev.wait("up", timeout=LONG))["server"] == 0
        assert (await dev.wait("sub_done", timeout=LONG, id="t/tls"))["rc"] == 1
        await echo(dev, "t/tls", 1, qos=1)
        await echo(dev, "t/tls", 2, qos=0)
        st = await status(dev, up=True)
        assert st["connects"] == 1 and st["reconnects"] == 0 and st["last_error"] is None
        await dev.stop()

    with tls_mosquitto(tmp_path / "broker", [(port, cert)]):
        run_lab(scenario)


def _refused(ca: str, port: int) -> dict[str, Any]:
    return config(ca, port, client_id="dev-refused")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        # mbedTLS (MicroPython) words it one way, OpenSSL (CPython) another.
        ("other_ca", ("not correctly signed by the trusted CA", "unable to get local issuer")),
        ("expired", ("has expired", "has expired")),
        ("not_yet_valid", ("starts in the future", "not yet valid")),
        ("other_host", ("does not match", "mismatch")),
    ],
)
def test_refuses_a_broker_certificate_that_does_not_check_out(
    runtime: str, case: str, reasons: tuple[str, str], tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    day = datetime.timedelta(days=1)
    cert = {
        "other_ca": lambda: pki.node("intruder", "hub-1", [HOST]),
        "expired": lambda: pki.leaf("cluster", "hub-1", [HOST], -10 * day, -day),
        "not_yet_valid": lambda: pki.leaf("cluster", "hub-1", [HOST], day, 10 * day),
        # Right CA, right dates, but issued for another address and name.
        "other_host": lambda: pki.leaf("cluster", "hub-1", ["10.9.9.9", "broker.example"]),
    }[case]()
    port = free_port()

    async def scenario(lab: Lab) -> None:
        dev = await start_device(lab, runtime, _refused(ca, port))
        err = (await dev.wait("connect_failed", timeout=LONG))["error"]
        assert err.startswith("TLS: "), err
        assert reasons[0 if runtime == "micropython" else 1] in err, err
        assert "\n" not in err and len(err) < 200, err  # a short reason

    with tls_mosquitto(tmp_path / "broker", [(port, cert)]):
        run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_ip_subject_alternative_name_is_enough(runtime: str, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    port = free_port()
    cert = pki.leaf("cluster", "hub-1", [HOST])  # the IP address only: no DNS name

    async def scenario(lab: Lab) -> None:
        dev = await start_device(lab, runtime, config(ca, port, subs=[["t/ip", 1]]))
        assert (await dev.wait("up", timeout=LONG))["server"] == 0
        await dev.wait("sub_done", timeout=LONG, id="t/ip")
        await echo(dev, "t/ip", 1)
        await dev.stop()

    with tls_mosquitto(tmp_path / "broker", [(port, cert)]):
        run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fails_over_along_the_list_over_tls(runtime: str, tmp_path: Path) -> None:
    """Servers: an impostor (another CA), hub A, hub B. The device skips the
    impostor, works through A, and once A dies, through B."""
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    p_bad, p_a, p_b = free_port(), free_port(), free_port()
    impostor = pki.node("intruder", "hub-x", [HOST])
    cert_a = pki.node("cluster", "hub-a", [HOST])
    cert_b = pki.node("cluster", "hub-b", [HOST])

    with contextlib.ExitStack() as b_side, contextlib.ExitStack() as a_side:
        b_side.enter_context(
            tls_mosquitto(tmp_path / "broker-b", [(p_bad, impostor), (p_b, cert_b)])
        )
        a_side.enter_context(tls_mosquitto(tmp_path / "broker-a", [(p_a, cert_a)]))

        async def scenario(lab: Lab) -> None:
            cfg = config(ca, p_bad, p_a, p_b, subs=[["t/fo", 1]])
            dev = await start_device(lab, runtime, cfg)
            assert (await dev.wait("up", timeout=LONG))["server"] == 1
            st = await status(dev, up=True)
            assert st["last_error"].startswith("TLS: "), st  # why the impostor was skipped
            await dev.wait("sub_done", timeout=LONG, id="t/fo")
            await echo(dev, "t/fo", 1)

            await asyncio.to_thread(a_side.close)  # hub A's broker is gone
            down = await dev.wait("down", timeout=LONG)
            assert down["server"] == 1
            up = await dev.wait("up", timeout=LONG)
            assert up["server"] == 2 and up["reconnects"] == 1
            await echo(dev, "t/fo", 2)  # resubscribed, and publishing, through B
            await dev.stop()

        run_lab(scenario, timeout=120)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_returns_to_the_preferred_hub_only_once_its_tls_checks_out(
    runtime: str, tmp_path: Path
) -> None:
    """Away from hub A, the probe must complete a verified handshake: while an
    impostor answers on A's address the device stays on B; once A is back
    with its own certificate, the device returns to it."""
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    p_a, p_b = free_port(), free_port()
    cert_a = pki.node("cluster", "hub-a", [HOST])
    impostor = pki.node("intruder", "hub-a", [HOST])
    cert_b = pki.node("cluster", "hub-b", [HOST])

    with contextlib.ExitStack() as stack:
        stack.enter_context(tls_mosquitto(tmp_path / "broker-b", [(p_b, cert_b)]))
        a_side = contextlib.ExitStack()
        stack.callback(a_side.close)
        a_side.enter_context(tls_mosquitto(tmp_path / "broker-a", [(p_a, cert_a)]))

        async def scenario(lab: Lab) -> None:
            cfg = config(ca, p_a, p_b, return_after_s=0.5, probe_s=0.1)
            dev = await start_device(lab, runtime, cfg)
            assert (await dev.wait("up", timeout=LONG))["server"] == 0

            await asyncio.to_thread(a_side.close)
            up = await dev.wait("up", timeout=LONG)
            assert up["server"] == 1 and up["connects"] == 2

            # An impostor on A's address: probes fail their handshake, so the
            # device never leaves B for it (each return would be a reconnect).
            await asyncio.to_thread(
                a_side.enter_context,
                tls_mosquitto(tmp_path / "broker-a2", [(p_a, impostor)]),
            )
            await asyncio.sleep(3.0)  # six times return_after_s: long enough to go back
            st = await status(dev, up=True)
            assert st["server"] == 1 and st["connects"] == 2, st
            await asyncio.to_thread(a_side.close)

            # A itself again: the probes succeed and the device goes back.
            await asyncio.to_thread(
                a_side.enter_context, tls_mosquitto(tmp_path / "broker-a3", [(p_a, cert_a)])
            )
            up = await dev.wait("up", timeout=LONG, server=0)
            assert up["connects"] >= 3
            await dev.stop()

        run_lab(scenario, timeout=120)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_ca_that_is_not_a_certificate_is_a_clear_error(runtime: str, tmp_path: Path) -> None:
    bad = ["bm90IGEgY2VydGlmaWNhdGU=", "%%% not base64 %%%"]  # "not a certificate"
    if runtime == "cpython":
        for ca in bad:
            with pytest.raises(ValueError, match=r"^ca: not a base64 DER certificate"):
                tls_context(ca)
        return
    script = tmp_path / "bad_ca.py"
    script.write_text(
        "from edge.mqtt import tls_context\n"
        f"for ca in {bad!r}:\n"
        "    try:\n"
        "        tls_context(ca)\n"
        "        print('accepted')\n"
        "    except ValueError as e:\n"
        "        print(str(e))\n"
    )
    out = subprocess.run(
        [micropython(), "-X", "heapsize=256k", str(script)],
        capture_output=True,
        text=True,
        env={"MICROPYPATH": f"{ROOT}:.frozen"},
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 2, out
    assert all(line.startswith("ca: not a base64 DER certificate") for line in lines), lines


@pytest.mark.micropython
def test_the_firmware_uploads_over_tls_with_the_ca_from_its_config(tmp_path: Path) -> None:
    """edge/node.py builds its client from the device config's "ca": the real
    firmware, over a TLS listener, to the hub stand-in on the same broker."""
    micropython()
    pki = Pki(tmp_path / "pki")
    ca = pki.ca_b64("cluster")
    port = free_port()
    cert = pki.node("cluster", "hub-1", [HOST])
    total = 300
    cfg = device_config([port], ca=ca, stop_after=total, exit_when_done=True)
    dev = FirmwareDevice(tmp_path / "dev", cfg)  # from source: the default heap
    with (
        tls_mosquitto(tmp_path / "broker", [(port, cert)]) as plain,
        Acker({"plug-1": KEY}, [plain]) as acker,
    ):
        dev.start()
        try:
            acker.wait_for("plug-1", total, timeout=60)
            stats = dev.wait(timeout=60)
        finally:
            dev.stop()
    assert acker.received("plug-1") == set(range(1, total + 1))
    assert stats["unacked"] == 0 and stats["reconnects"] == 0, stats
