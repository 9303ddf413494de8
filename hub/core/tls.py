"""The cluster's certificate authority, its nodes' certificates, and TLS contexts.

`aiot cluster init` makes one CA per cluster and one certificate per node
(``write_cluster_tls``); a node's config names them in ``[tls]``
(hub/core/config.py)::

    <dir>/tls/ca.pem            the CA certificate: devices, the CLI and peers pin it
    <dir>/tls/ca.key            the CA's private key (0600): keep it off the nodes
    <dir>/tls/<node>.pem        the node's certificate, signed by the CA
    <dir>/tls/<node>.key        its private key (0600)

Keys are ECDSA P-256 (what mbedTLS on an ESP32 or a Pico W verifies cheaply).
A node's certificate names every address it is reached at (its binds and
advertised addresses, as IP or DNS subject alternative names), so clients
check the host name as well as the chain. Certificates last ``NODE_DAYS``;
``aiot cluster cert`` issues a new one from the same CA (docs/security.md,
"Rotation").

Contexts: ``server_context`` for the broker's device listener and the HTTP
API, ``client_context`` for whoever connects to them (the hub to an external
``mqtts://`` broker or to a peer, the CLI): TLS 1.2 or later, the CA pinned,
host names checked.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.core.fsutil import write_atomic

CA_DAYS: Final = 10 * 365
NODE_DAYS: Final = 2 * 365
_SKEW: Final = datetime.timedelta(minutes=5)  # clocks of small boards drift


class TlsError(ValueError):
    """A certificate or key that is missing, unreadable or does not fit."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str = "aiot cluster CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA that can sign node certificates (and nothing below them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def alt_names(hosts: Iterable[str]) -> list[str]:
    """The names a node certificate should carry: ``hosts`` without the
    wildcard binds, plus loopback and ``localhost`` (for tools on the node)."""
    out: list[str] = []
    for h in (*hosts, "127.0.0.1", "localhost"):
        h = h.strip("[]")
        if h and h not in ("0.0.0.0", "::") and h not in out:
            out.append(h)
    return out


def issue_node(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node_id: str,
    hosts: Iterable[str],
    days: int = NODE_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server and client certificate for ``node_id``, valid for ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    names = [_alt_name(h) for h in alt_names(hosts)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``folder`` (ca.pem, ca.key); TlsError when it is not there."""
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    except OSError as exc:
        raise TlsError(f"cannot read the CA in {folder}: {exc.strerror}") from None
    except ValueError as exc:
        raise TlsError(f"{folder}: not a PEM certificate and key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{folder / 'ca.key'}: expected an EC private key")
    return cert, key


def ensure_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``folder``, made (0700 folder, 0600 key) when there is none."""
    if (folder / "ca.pem").exists():
        return load_ca(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, key = make_ca()
    write_atomic(folder / "ca.key", _key_pem(key), 0o600)
    write_atomic(folder / "ca.pem", _cert_pem(cert), 0o644)
    return cert, key


def write_node(folder: Path, node_id: str, hosts: Iterable[str]) -> Issued:
    """Issue ``node_id`` a certificate from the CA in ``folder`` (made if
    missing) and write ``<node_id>.pem`` and ``<node_id>.key`` (0600)."""
    ca_cert, ca_key = ensure_ca(folder)
    cert, key = issue_node(ca_cert, ca_key, node_id, hosts)
    out = Issued(folder / f"{node_id}.pem", folder / f"{node_id}.key")
    write_atomic(out.key, _key_pem(key), 0o600)
    write_atomic(out.cert, _cert_pem(cert), 0o644)
    return out


def read_cert(path: Path) -> x509.Certificate:
    """The PEM certificate in ``path``; TlsError when it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM certificate: {exc}") from None


def ca_der(ca_pem: Path) -> bytes:
    """The CA certificate in DER, as a device pins it (its config's ``ca``)."""
    return read_cert(ca_pem).public_bytes(serialization.Encoding.DER)


def names_of(cert: Path) -> list[str]:
    """The host names and addresses ``cert`` is valid for (its subject
    alternative names); TlsError when it cannot be read."""
    try:
        san = read_cert(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName)
    )


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ for a listener that presents ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load {cert} with {key}: {exc}") from None
    return ctx


def client_context(ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ that trusts ``ca`` only (None: the system's CAs), host names checked."""
    ctx = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_pair(cert: Path, key: Path, ca: Path) -> None:
    """TlsError unless ``key`` fits ``cert`` and ``ca`` signed ``cert``."""
    server_context(cert, key)
    leaf, root = read_cert(cert), read_cert(ca)
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{cert} was not issued by {ca}: {exc}") from None
    except Exception as exc:  # cryptography's InvalidSignature
        raise TlsError(f"{cert} was not issued by {ca}: {type(exc).__name__}") from None
    if leaf.not_valid_after_utc < _now():
        raise TlsError(f"{cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
