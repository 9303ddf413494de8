"""The cluster CA and node certificates (hub/core/tls.py), the ``[tls]``
table of a hub config, and what the broker's config gets from it."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from hub.core import tls
from hub.core.config import Address, ConfigError, TlsConfig, load
from hub.link.broker import render_conf
from tools.cli import app
from tools.lab.cluster import write_cluster


def _sans(cert: Path) -> list[str]:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def test_a_node_certificate_names_its_addresses_and_chains_to_the_ca(tmp_path: Path) -> None:
    issued = tls.write_node(tmp_path, "hub-1", ["10.0.0.5", "pi1.local", "0.0.0.0"])
    assert _sans(issued.cert) == ["10.0.0.5", "pi1.local", "127.0.0.1", "localhost"]
    tls.check_pair(issued.cert, issued.key, tmp_path / "ca.pem")
    for key in (tmp_path / "ca.key", issued.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # A second node shares the CA; the first certificate still verifies.
    second = tls.write_node(tmp_path, "hub-2", ["10.0.0.6"])
    tls.check_pair(second.cert, second.key, tmp_path / "ca.pem")
    tls.check_pair(issued.cert, issued.key, tmp_path / "ca.pem")


def test_check_pair_refuses_a_foreign_certificate_and_a_wrong_key(tmp_path: Path) -> None:
    ours = tls.write_node(tmp_path / "a", "hub-1", ["127.0.0.1"])
    theirs = tls.write_node(tmp_path / "b", "hub-1", ["127.0.0.1"])
    with pytest.raises(tls.TlsError, match="was not issued by"):
        tls.check_pair(theirs.cert, theirs.key, tmp_path / "a" / "ca.pem")
    with pytest.raises(tls.TlsError, match="cannot load"):
        tls.check_pair(ours.cert, theirs.key, tmp_path / "a" / "ca.pem")


def test_the_client_context_pins_the_ca_and_checks_names(tmp_path: Path) -> None:
    tls.write_node(tmp_path, "hub-1", ["127.0.0.1"])
    ctx = tls.client_context(tmp_path / "ca.pem")
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1


def _config(tmp_path: Path, table: str) -> Path:
    (tmp_path / "cluster.secret").write_text("s" * 32)
    os.chmod(tmp_path / "cluster.secret", 0o600)
    path = tmp_path / "hub.toml"
    path.write_text(
        '[node]\nid = "hub-1"\ndata_dir = "d"\n'
        '[raft]\nbind = "127.0.0.1:4321"\nsecret_file = "cluster.secret"\n' + table
    )
    return path


def test_plain_tcp_only_when_the_config_asks_for_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls: required table is missing") as err:
        load(_config(tmp_path, ""))
    assert "aiot cluster cert" in str(err.value) and "plain = true" in str(err.value)
    cfg = load(_config(tmp_path, "[tls]\nplain = true\n"))
    assert cfg.tls == TlsConfig() and not cfg.tls.on and cfg.scheme == "http"


def test_a_config_with_tls_reads_the_three_files(tmp_path: Path) -> None:
    tls.write_node(tmp_path / "tls", "hub-1", ["127.0.0.1"])
    table = '[tls]\nca = "tls/ca.pem"\ncert = "tls/hub-1.pem"\nkey = "tls/hub-1.key"\n'
    cfg = load(_config(tmp_path, table))
    assert cfg.tls.on and cfg.scheme == "https"
    assert cfg.tls.cert == tmp_path / "tls" / "hub-1.pem"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('[tls]\nca = "tls/ca.pem"\ncert = "tls/hub-1.pem"\n', "tls.key: required key"),
        ('[tls]\nca = "tls/ca.pem"\ncert = "tls/hub-1.pem"\nkey = "nope.key"\n', "no such file"),
        ('[tls]\nplain = true\nca = "tls/ca.pem"\n', "tls.ca: not used with plain = true"),
        ('[tls]\nplain = "yes"\n', "tls.plain: expected true or false"),
        (
            '[tls]\nca = "tls/hub-1.key"\ncert = "tls/hub-1.pem"\nkey = "tls/hub-1.key"\n',
            "tls.cert",
        ),
        ('[tls]\ncert_file = "x"\n', "tls.cert_file"),
    ],
)
def test_a_broken_tls_table_is_one_clear_error(tmp_path: Path, table: str, error: str) -> None:
    tls.write_node(tmp_path / "tls", "hub-1", ["127.0.0.1"])
    with pytest.raises(ConfigError, match=error.replace(".", r"\.")):
        load(_config(tmp_path, table))


def test_the_device_listener_gets_the_certificate_and_the_hub_socket_not(tmp_path: Path) -> None:
    issued = tls.write_node(tmp_path / "tls", "hub-1", ["127.0.0.1"])
    on = TlsConfig(tmp_path / "tls" / "ca.pem", issued.cert, issued.key, plain=False)
    text = render_conf(Address("0.0.0.0", 8883), tmp_path / "broker", tls=on)
    device, _, hub = text.partition("listener 0 ")
    assert f"certfile {issued.cert.resolve()}" in device and "tls_version tlsv1.2" in device
    assert "certfile" not in hub
    assert "certfile" not in render_conf(Address("0.0.0.0", 1883), tmp_path / "broker")


def test_cluster_init_writes_tls_unless_asked_for_plain(tmp_path: Path) -> None:
    secure = write_cluster(tmp_path / "a", 2, tls=True)
    for path in secure:
        assert load(path).tls.on
    plain = write_cluster(tmp_path / "b", 2)
    assert all(not load(p).tls.on for p in plain)
    assert not (tmp_path / "b" / "tls").exists()


def test_aiot_cluster_cert_issues_from_the_same_ca(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["cluster", "cert", "hub-4", "--host", "10.1.1.4", "--tls-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert _sans(tmp_path / "hub-4.pem")[0] == "10.1.1.4"
    tls.check_pair(tmp_path / "hub-4.pem", tmp_path / "hub-4.key", tmp_path / "ca.pem")
