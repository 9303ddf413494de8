"""Which hub an `aiot` command talks to: --config, then --hub/--token, then
AIOT_CONFIG, then AIOT_HUB/AIOT_TOKEN (tools/base/hubclient.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.base.hubclient import HubClient, HubError
from tools.lab.cluster import write_cluster

pytestmark = pytest.mark.unit


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("AIOT_CONFIG", "AIOT_HUB", "AIOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (path,) = write_cluster(tmp_path, 1)
    return path


def test_hub_given_on_the_command_line_beats_aiot_config(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOT_CONFIG", str(config))
    with HubClient.from_options(None, "http://192.0.2.7:8080", "tok") as c:
        assert c.url == "http://192.0.2.7:8080"


def test_config_on_the_command_line_beats_everything(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOT_HUB", "http://192.0.2.7:8080")
    monkeypatch.setenv("AIOT_TOKEN", "tok")
    with HubClient.from_options(config, "http://192.0.2.8:8080", "tok") as c:
        assert c.url != "http://192.0.2.8:8080" and "127.0.0.1" in c.url


def test_aiot_config_beats_aiot_hub(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOT_CONFIG", str(config))
    monkeypatch.setenv("AIOT_HUB", "http://192.0.2.7:8080")
    monkeypatch.setenv("AIOT_TOKEN", "tok")
    with HubClient.from_options(None, None, None) as c:
        assert "127.0.0.1" in c.url


def test_the_environment_alone(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOT_HUB", "http://192.0.2.7:8080")
    monkeypatch.setenv("AIOT_TOKEN", "tok")
    with HubClient.from_options(None, None, None) as c:
        assert c.url == "http://192.0.2.7:8080"
    monkeypatch.delenv("AIOT_TOKEN")
    with pytest.raises(HubError):
        HubClient.from_options(None, None, None)
