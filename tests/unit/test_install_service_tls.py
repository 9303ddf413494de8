"""`aiot hub install-service` with TLS (its default): the sample config
points at this node's certificate, key and the cluster CA from --tls-dir,
which must be there and fit together; the key is given to the service's user
alone. Plain TCP only with --plain."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from hub.core import config as hub_config
from hub.core import tls
from tests.console_support import aiot
from tests.support import ROOT
from tools.cli.service import _local_ip

pytestmark = pytest.mark.unit

ME = pwd.getpwuid(os.getuid()).pw_name


def install(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    etc = tmp_path / "etc"
    return aiot(
        ROOT,
        "hub",
        "install-service",
        "--config",
        str(etc / "hub.toml"),
        "--env-file",
        str(etc / "aiot.env"),
        "--unit-dir",
        str(tmp_path / "units"),
        "--data-root",
        str(tmp_path / "data"),
        "--node-id",
        "pi-1",
        *extra,
    )


def issue(ca_dir: Path, into: Path, host: str) -> None:
    """What the guide does: `aiot cluster cert` where the CA is, then the
    three files copied to the node."""
    tls.write_node(ca_dir, "pi-1", [host])
    into.mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "pi-1.pem", "pi-1.key"):
        shutil.copy(ca_dir / name, into / name)
    os.chmod(into / "pi-1.key", 0o644)  # as a careless copy leaves it


def test_the_sample_config_uses_the_nodes_certificate_and_the_key_goes_to_the_user(
    tmp_path: Path,
) -> None:
    tls_dir = tmp_path / "etc" / "tls"
    issue(tmp_path / "ca", tls_dir, _local_ip())
    out = install(tmp_path, "--user", ME)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    assert f"gave {tls_dir / 'pi-1.key'} to {ME} (mode 600)" in out.stdout
    key = (tls_dir / "pi-1.key").stat()
    assert key.st_mode & 0o777 == 0o600 and key.st_uid == os.getuid()
    assert tls_dir.stat().st_mode & 0o777 == 0o755
    secret = (tmp_path / "etc" / "aiot.env").read_text().split("AIOT_CLUSTER_SECRET=")[1].strip()
    cfg = hub_config.load(tmp_path / "etc" / "hub.toml", env={"AIOT_CLUSTER_SECRET": secret})
    assert cfg.tls.on and cfg.scheme == "https"
    assert (cfg.tls.ca, cfg.tls.cert, cfg.tls.key) == (
        tls_dir / "ca.pem",
        tls_dir / "pi-1.pem",
        tls_dir / "pi-1.key",
    )
    assert cfg.broker.bind is not None and cfg.broker.bind.port == 8883


def test_a_certificate_for_another_address_is_taken_with_a_warning(tmp_path: Path) -> None:
    issue(tmp_path / "ca", tmp_path / "etc" / "tls", "192.0.2.77")
    out = install(tmp_path, "--user", ME)
    assert out.returncode == 0, out.stderr
    assert "names 192.0.2.77" in out.stderr and "issue it again with --host" in out.stderr


def test_missing_tls_files_stop_it_before_anything_is_written(tmp_path: Path) -> None:
    out = install(tmp_path, "--user", ME)
    assert out.returncode == 2
    assert "no ca.pem, pi-1.pem, pi-1.key in" in out.stderr
    assert "aiot cluster cert pi-1 --host" in out.stderr and "--plain" in out.stderr
    assert not (tmp_path / "etc" / "hub.toml").exists()
    assert not (tmp_path / "etc" / "aiot.env").exists()
    assert not (tmp_path / "units").exists()


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    tls_dir = tmp_path / "etc" / "tls"
    issue(tmp_path / "ca", tls_dir, _local_ip())
    tls.ensure_ca(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "ca.pem", tls_dir / "ca.pem")
    out = install(tmp_path, "--user", ME)
    assert out.returncode == 2 and "was not issued by" in out.stderr
    assert not (tmp_path / "etc" / "hub.toml").exists()


def test_an_unknown_user_cannot_be_given_the_key(tmp_path: Path) -> None:
    issue(tmp_path / "ca", tmp_path / "etc" / "tls", _local_ip())
    out = install(tmp_path, "--user", "nobody-here-xyz")
    assert out.returncode == 2
    assert "no system user 'nobody-here-xyz'" in out.stderr and "useradd --system" in out.stderr
    assert not (tmp_path / "etc" / "hub.toml").exists()


def test_plain_and_a_tls_dir_together_are_refused(tmp_path: Path) -> None:
    out = install(tmp_path, "--plain", "--tls-dir", str(tmp_path))
    assert out.returncode == 2 and "--plain and --tls-dir: choose one" in out.stderr


def test_a_config_without_a_tls_table_is_refused(tmp_path: Path) -> None:
    out = install(tmp_path, "--plain", "--user", ME)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "etc" / "hub.toml"
    path.write_text(path.read_text().replace("[tls]", "").replace("plain = true", ""))
    with pytest.raises(hub_config.ConfigError, match="tls: required table is missing"):
        hub_config.load(path, env={"AIOT_CLUSTER_SECRET": "x" * 64})
