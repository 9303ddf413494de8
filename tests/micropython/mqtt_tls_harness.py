"""TLS for the edge MQTT tests: certificates, real Mosquitto TLS listeners, devices.

- ``Pki``: certificate authorities and broker certificates in a folder, made
  by hub/core/tls.py as `aiot cluster init` makes them, or by hand where a
  test needs one the cluster would never issue (expired, another host).
- ``tls_mosquitto``: a real Mosquitto (tools/lab/mosquitto.py) with a plain
  listener on loopback (for the hub stand-ins) and TLS listeners, each with
  its own certificate.
- ``start_device``: tests/micropython/mqtt_tls_device.py under the real
  MicroPython interpreter (edge/ compiled by mpy-cross, as the firmware is)
  or in this process's asyncio loop, as mqtt_harness.py runs mqtt_device.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.core import tls
from tests.micropython.mqtt_harness import (
    CPythonDevice,
    Device,
    Lab,
    MicroPythonDevice,
    _Events,
    compiled_edge,
)
from tests.support import ROOT, micropython
from tools.lab.mosquitto import running_mosquitto

RUNNER = ROOT / "tests" / "micropython" / "mqtt_tls_device.py"
HOST = "127.0.0.1"


class Pki:
    """Certificate authorities (one folder each, as a cluster's tls/) and leaves."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ca_b64(self, ca: str) -> str:
        """The device config's "ca" for CA ``ca``: base64 of its DER."""
        tls.ensure_ca(self.folder / ca)
        return base64.b64encode(tls.ca_der(self.folder / ca / "ca.pem")).decode()

    def node(self, ca: str, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A node certificate from CA ``ca``, as the cluster issues them."""
        issued = tls.write_node(self.folder / ca, name, hosts)
        return issued.cert, issued.key

    def leaf(
        self,
        ca: str,
        name: str,
        names: list[str],
        valid_from: datetime.timedelta = datetime.timedelta(days=-1),
        valid_until: datetime.timedelta = datetime.timedelta(days=30),
    ) -> tuple[Path, Path]:
        """A certificate from CA ``ca`` naming exactly ``names`` (IP or DNS),
        valid from now + ``valid_from`` until now + ``valid_until``."""
        ca_cert, ca_key = tls.ensure_ca(self.folder / ca)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid_from)
            .not_valid_after(now + valid_until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path = self.folder / ca / f"{name}.pem"
        key_path = self.folder / ca / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), 0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on TLS port {port}") from None
            time.sleep(0.02)


@contextlib.contextmanager
def tls_mosquitto(workdir: Path, listeners: list[tuple[int, tuple[Path, Path]]]) -> Iterator[int]:
    """Mosquitto with a plain listener (its port is yielded) and one TLS
    listener per (port, (certificate, key)); anonymous, loopback only."""
    conf = "".join(
        f"listener {port} {HOST}\ncertfile {cert}\nkeyfile {key}\n"
        for port, (cert, key) in listeners
    )
    if os.geteuid() == 0:
        # As root, Mosquitto drops to the "mosquitto" user before it reads
        # the keys, which a private folder hides from that user.
        conf = "user root\n" + conf
    with running_mosquitto(workdir, extra_conf=conf) as plain:
        for port, _ in listeners:
            _wait_listening(port)
        yield plain


class CPythonTlsDevice(CPythonDevice):
    """mqtt_tls_device.py's Runner in this process's asyncio loop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        _Events.__init__(self)
        from tests.micropython.mqtt_tls_device import Runner

        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.runner = Runner(cfg, self.add)
        self.task = asyncio.create_task(self.runner.main(self.lines.get))
        self.task.add_done_callback(lambda _: self.changed.set())


async def start_device(lab: Lab, runtime: str, cfg: dict[str, Any], heap: str = "96k") -> Device:
    """A device on ``runtime`` ("micropython": compiled edge/, or "cpython"),
    cleaned up with ``lab``."""
    dev: Device
    if runtime == "cpython":
        dev = CPythonTlsDevice(cfg)
    else:
        proc = await asyncio.create_subprocess_exec(
            micropython(),
            "-X",
            f"heapsize={heap}",
            str(RUNNER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, MICROPYPATH=f"{compiled_edge()}:.frozen"),
        )
        dev = MicroPythonDevice(proc)
        dev.send(**cfg)  # the first line is the config
    lab.devices.append(dev)
    return dev
