"""TLS from outside: a real hub node (its Mosquitto, its HTTPS API) made by
the configs `aiot cluster init` writes, with the cluster CA in ``tls/``
(hub/core/tls.py, docs/security.md "TLS").

- the API answers HTTPS only, and a client that pins the CA is the only one
  that gets an answer; one that pins another CA refuses the node;
- the device listener takes MQTT over TLS only; a device pinning the CA gets
  in with its login, and a broker with a certificate from another CA is
  refused by the client;
- a capture on the wire (tcpdump on loopback) of a login, admin requests, a
  device's CONNECT and a signed batch shows none of the password, the tokens,
  the device's broker password or the batch; the same capture of a plain-TCP
  hub shows them all, so the capture would see them;
- ``mqtts://`` is honoured for an external broker: the hub's session goes
  over TLS with the CA pinned, and a broker whose certificate the CA did not
  issue gets no session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from hub.core import tls
from hub.core.config import ConfigError, load
from tests.cluster.hubs import need_mosquitto
from tests.security.http_hubs import PASSWORD, add_user, admin_token, bearer
from tests.security.mqtt_attack import batch
from tools.base.hubclient import HubClient, HubError
from tools.base.ports import free_port
from tools.lab.cluster import LocalCluster
from tools.lab.mosquitto import running_mosquitto

pytestmark = pytest.mark.timeout(600)
# As root, Mosquitto drops to the "mosquitto" user, which cannot read the keys.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""


@contextlib.contextmanager
def hub(root: Path, secure: bool = True, extra: str = "") -> Iterator[LocalCluster]:
    need_mosquitto()
    cluster = LocalCluster(root / "cluster", 1, tls=secure, extra=extra)
    try:
        cluster.start(90)
        yield cluster
    except BaseException:
        print(f"--- hub-1 ---\n{cluster.tail(0, 60)}")
        raise
    finally:
        cluster.stop()


def other_ca(root: Path) -> Path:
    """A CA of another cluster, with a node certificate for 127.0.0.1."""
    tls.write_node(root / "other", "impostor", ["127.0.0.1"])
    return root / "other" / "ca.pem"


def device_connects(port: int, user: str, password: str, ca: Path | None) -> bool:
    """Whether a device's MQTT CONNECT over TLS (pinning ``ca``), or plain
    TCP (``ca`` None), gets a CONNACK that accepts it."""

    async def attempt() -> bool:
        ctx = None if ca is None else tls.client_context(ca)
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                username=user,
                password=password,
                identifier=user,
                tls_context=ctx,
                timeout=10,
            ):
                return True
        except aiomqtt.MqttError:
            return False

    return asyncio.run(attempt())


def test_the_api_answers_https_only_to_clients_that_pin_the_ca(tmp_path: Path) -> None:
    with hub(tmp_path) as cluster:
        client = cluster.client(0)
        assert client.url.startswith("https://")
        assert client.get("/v1/health")["ready"] is True

        plain = "http://" + client.url.split("://", 1)[1]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/v1/health", timeout=10)

        for verify in (tls.client_context(other_ca(tmp_path)), True):  # another CA, the system's
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{client.url}/v1/health", verify=verify, timeout=10)

        wrong = HubClient(client.url, admin_token(cluster), ca=tmp_path / "other" / "ca.pem")
        with pytest.raises(HubError, match=r"not reachable.*CERTIFICATE_VERIFY_FAILED"):
            wrong.get("/v1/health")


def test_devices_reach_the_broker_over_tls_only(tmp_path: Path) -> None:
    with hub(tmp_path) as cluster:
        dev = cluster.add_device("plug-1")
        pinned = base64.b64decode(dev["ca"])
        assert pinned == tls.ca_der(cluster.root / "tls" / "ca.pem"), "the config pins the CA"
        port = dev["hubs"][0][1]
        deadline = time.monotonic() + 30  # the broker learns a new device on a reload
        while not device_connects(port, "plug-1", dev["password"], cluster.ca_pem):
            assert time.monotonic() < deadline, "the device never got in over TLS"
            time.sleep(0.5)
        assert not device_connects(port, "plug-1", dev["password"], None), "plain MQTT got in"
        # A client that pins the cluster CA refuses a broker the CA did not certify.
        impostor_ca = other_ca(tmp_path)
        conf = (
            f"certfile {tmp_path / 'other' / 'impostor.pem'}\n"
            f"keyfile {tmp_path / 'other' / 'impostor.key'}\n" + AS_ROOT
        )
        with running_mosquitto(tmp_path / "impostor", extra_conf=conf) as fake:
            assert device_connects(fake, "x", "y", impostor_ca), "the impostor serves TLS"
            ctx = tls.client_context(cluster.ca_pem)
            with (
                socket.create_connection(("127.0.0.1", fake), 10) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                ctx.wrap_socket(raw, server_hostname="127.0.0.1")


# -- the capture ------------------------------------------------------------------------


def need_tcpdump() -> str:
    found = shutil.which("tcpdump") or shutil.which("/usr/bin/tcpdump")
    if found is None:
        pytest.skip("tcpdump not found: apt-get update && apt-get install -y tcpdump")
    if os.geteuid() != 0:
        pytest.skip("capturing on loopback needs root (tcpdump)")
    return found


@contextlib.contextmanager
def capture(binary: str, out: Path, ports: list[int]) -> Iterator[None]:
    """tcpdump on loopback for ``ports``, whole packets, written to ``out``."""
    expr = " or ".join(f"tcp port {p}" for p in ports)
    errors = out.with_suffix(".log")
    with errors.open("wb") as err:
        proc = subprocess.Popen(
            [binary, "-i", "lo", "-s", "0", "-U", "-n", "-w", str(out), expr],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.stat().st_size > 0):  # the pcap header: listening
            assert proc.poll() is None, errors.read_text()
            assert time.monotonic() < deadline, "tcpdump did not start"
            time.sleep(0.05)
        yield
        time.sleep(1.0)  # the last packets reach the file (-U: per packet)
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def talk(cluster: LocalCluster, ca: Path | None) -> dict[str, bytes]:
    """A login, admin requests, a device's CONNECT and one signed batch: the
    secrets that crossed the wire, by name."""
    add_user(cluster, "alice", "operator", [])
    dev = cluster.add_device("plug-1")
    url = cluster.client(0).url
    verify: Any = True if ca is None else tls.client_context(ca)
    r = httpx.post(
        f"{url}/v1/login", json={"username": "alice", "password": PASSWORD}, verify=verify
    )
    assert r.status_code == 200, r.text
    user_token = r.json()["token"]
    assert httpx.get(f"{url}/v1/devices", headers=bearer(user_token), verify=verify).is_success
    key = bytes.fromhex(dev["key"])
    frame = batch("plug-1", 1, 20, key)

    async def device() -> None:
        ctx = None if ca is None else tls.client_context(ca)
        port = dev["hubs"][0][1]
        deadline = time.monotonic() + 30
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    port,
                    username="plug-1",
                    password=dev["password"],
                    identifier="plug-1",
                    tls_context=ctx,
                    timeout=10,
                ) as c:
                    await c.publish("aiot/v1/plug-1/up", frame, qos=1)
                    return
            except aiomqtt.MqttError:
                assert time.monotonic() < deadline, "the device never got in"
                await asyncio.sleep(0.5)

    asyncio.run(device())
    deadline = time.monotonic() + 30
    while cluster.client(0).get("/v1/devices/plug-1").get("watermark", 0) < 20:
        assert time.monotonic() < deadline, "the batch was not committed"
        time.sleep(0.2)
    return {
        "the user's password": PASSWORD.encode(),
        "the user's session token": user_token.encode(),
        "the admin token": admin_token(cluster).encode(),
        "the device's broker password": dev["password"].encode(),
        "the signed batch": frame,
        "the device key": dev["key"].encode(),
    }


def seen(pcap: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, value in secrets.items() if value in pcap]


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
def test_a_capture_on_the_wire_shows_no_secret(tmp_path: Path, secure: bool) -> None:
    tcpdump = need_tcpdump()
    with hub(tmp_path, secure) as cluster:
        ports = [cluster.ports[0].http, cluster.ports[0].broker]
        pcap = tmp_path / "wire.pcap"
        with capture(tcpdump, pcap, ports):
            secrets = talk(cluster, cluster.ca_pem)
        wire = pcap.read_bytes()
        assert len(wire) > 10_000, "the capture holds the traffic"
        if secure:
            assert seen(wire, secrets) == [], "in clear on the wire"
        else:  # the same exchange in plain TCP: the capture sees every secret
            assert seen(wire, secrets) == list(secrets)


# -- an external broker -----------------------------------------------------------------


def test_mqtts_is_honoured_for_an_external_broker(tmp_path: Path) -> None:
    need_mosquitto()
    # The cluster's CA and a certificate for the external broker.
    issued = tls.write_node(tmp_path / "ca", "broker", ["127.0.0.1"])
    port = free_port()
    good = f"certfile {issued.cert}\nkeyfile {issued.key}\n{AS_ROOT}"
    with running_mosquitto(tmp_path / "external", port, extra_conf=good):
        cluster = LocalCluster(tmp_path / "cluster", 1, tls=True)
        # The node pins the same CA as the broker's; its broker is the external one.
        (cluster.root / "tls" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
        ca_key = (tmp_path / "ca" / "ca.key").read_bytes()
        (cluster.root / "tls" / "ca.key").write_bytes(ca_key)
        tls.write_node(cluster.root / "tls", "hub-1", ["127.0.0.1"])
        cfg = cluster.configs[0]
        text = cfg.read_text()
        start = text.index("[broker]")
        end = text.index("[http]")
        broker = f'[broker]\nmode = "external"\nurl = "mqtts://127.0.0.1:{port}"\n\n'
        cfg.write_text(text[:start] + broker + text[end:])
        try:
            cluster.start(90)
            deadline = time.monotonic() + 30
            while not cluster.status(0)["broker"]["consumer_connected"]:
                assert time.monotonic() < deadline, cluster.tail(0, 30)
                time.sleep(0.2)
        finally:
            cluster.stop()
    # A broker whose certificate another CA issued: the hub gets no session.
    other = tls.write_node(tmp_path / "other", "broker", ["127.0.0.1"])
    bad = f"certfile {other.cert}\nkeyfile {other.key}\n{AS_ROOT}"
    with running_mosquitto(tmp_path / "external2", port, extra_conf=bad):
        try:
            cluster.start(90)
            time.sleep(5)  # the consumer retries every half second
            assert cluster.status(0)["broker"]["consumer_connected"] is False
            log = cluster.log_path(0).read_text()
            assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
        finally:
            cluster.stop()


def test_the_config_refuses_a_certificate_the_ca_did_not_issue(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", 1, tls=True)
    issued = tls.write_node(tmp_path / "other", "hub-1", ["127.0.0.1"])
    shutil.copy(issued.cert, cluster.root / "tls" / "hub-1.pem")
    shutil.copy(issued.key, cluster.root / "tls" / "hub-1.key")
    with pytest.raises(ConfigError, match=r"tls\.cert: .*was not issued by"):
        load(cluster.configs[0])
