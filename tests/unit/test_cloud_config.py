"""The [cloud] table of the hub config (hub/core/cloudcfg.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.core import config as c
from tests.unit.test_hub_config import GOOD, load

pytestmark = pytest.mark.unit


def _files(tmp_path: Path) -> None:
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "cloud" / "site.json").write_text(
        json.dumps({"user": "site-north-1", "password": "pw", "servers": [], "ca": "x"})
    )


def test_no_table_exports_nothing(tmp_path: Path) -> None:
    assert not load(tmp_path, GOOD).cloud.on


def test_a_site_over_tls_and_through_a_leaf_node(tmp_path: Path) -> None:
    _files(tmp_path)
    cfg = load(
        tmp_path,
        GOOD
        + """
[cloud]
site = "north-1"
servers = ["tls://cloud.example:4222", "tls://[2001:db8::1]:4223"]
login = "cloud/site.json"
ca = "cloud/ca.pem"
""",
    ).cloud
    assert cfg.on and cfg.site == "north-1" and len(cfg.servers) == 2
    assert cfg.login is not None and cfg.login.user == "site-north-1"
    assert cfg.ca == tmp_path / "cloud" / "ca.pem" and cfg.window == 64
    leaf = load(
        tmp_path,
        GOOD + '[cloud]\nsite = "n"\nservers = ["nats://127.0.0.1:4222"]\ndomain = "aiot-cloud"\n',
    ).cloud
    assert leaf.login is None and leaf.domain == "aiot-cloud"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('site = "North"\nservers = ["nats://127.0.0.1:1"]', "cloud.site: expected a site id"),
        ('site = "n"', "cloud.servers: required key is missing"),
        ('site = "n"\nservers = []', "cloud.servers: name at least one server"),
        ('site = "n"\nservers = ["http://a:1"]', "cloud.servers[0]: expected a URL"),
        ('site = "n"\nservers = ["tls://a:99999"]', "port 99999"),
        ('site = "n"\nservers = ["tls://a:4222"]', "cloud.ca: required with tls://"),
        ('site = "n"\nservers = ["nats://10.0.0.5:4222"]', "cloud.servers[0]: plain nats://"),
        (
            'site = "n"\nservers = ["nats://127.0.0.1:1"]\nlogin = "nope.json"',
            "cloud.login: cannot read",
        ),
        (
            'site = "n"\nservers = ["nats://127.0.0.1:1"]\nlogin = "cloud/ca.pem"',
            "cloud.login:",
        ),
        ('site = "n"\nservers = ["nats://127.0.0.1:1"]\nwindow = 0', "cloud.window"),
        ('site = "n"\nservers = ["nats://127.0.0.1:1"]\nsecret = 1', "cloud.secret: unknown key"),
    ],
)
def test_bad_tables_are_refused_with_the_key(tmp_path: Path, table: str, message: str) -> None:
    _files(tmp_path)
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, GOOD + "[cloud]\n" + table + "\n")
    assert message in str(err.value) and "hub.toml" in str(err.value)
