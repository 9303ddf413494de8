"""The shipped energy rules: on in the configs `aiot cluster init` and `aiot
hub install-service` write, named by `[rules] shipped` so that a config keeps
them wherever the hub is installed, and validated like every other key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hub.core import config as c
from hub.core.paths import SHIPPED_MODELS
from hub.decide import engine
from hub.decide import rules as r
from tests import console_support as console
from tests.support import ROOT, free_port

pytestmark = pytest.mark.unit

ENERGY_IDS = {"plug-over-limit", "plug-high-load", "night-heavy-load", "undervoltage"}
SECRET = "s" * 32


def aiot(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return console.aiot(cwd, *args)


def rule_ids(config: Path, env: dict[str, str] | None = None) -> set[str]:
    """The rules a hub started with ``config`` runs (as hub/daemon.py loads them)."""
    cfg = c.load(config, env=env)
    ruleset, _ = engine.load(cfg.source, cfg.decisions)
    return {rule.rule_id for rule in ruleset.rules}


def node_config(tmp_path: Path, tables: str) -> Path:
    (tmp_path / "cluster.secret").write_text(SECRET)
    path = tmp_path / "hub.toml"
    path.write_text(
        f'[node]\nid = "hub-1"\ndata_dir = "d"\n[raft]\nbind = "127.0.0.1:{free_port()}"\n'
        f'secret_file = "cluster.secret"\n[broker]\nbind = "127.0.0.1:{free_port()}"\n'
        f'[http]\nbind = "127.0.0.1:{free_port()}"\n[tls]\nplain = true\n' + tables
    )
    return path


def test_cluster_init_turns_the_energy_rules_on_in_every_config(tmp_path: Path) -> None:
    out = aiot("cluster", "init", str(tmp_path / "cluster"), "--nodes", "3")
    assert out.returncode == 0, out.stderr
    configs = sorted((tmp_path / "cluster").glob("hub-*.toml"))
    assert len(configs) == 3
    for path in configs:
        assert 'shipped = ["energy"]' in path.read_text()
        assert rule_ids(path) >= ENERGY_IDS
    readme = (tmp_path / "cluster" / "README.txt").read_text()
    assert "--limit-w" in readme and "shipped = [] turns them off" in readme


def test_install_service_turns_the_energy_rules_on_in_its_sample_config(tmp_path: Path) -> None:
    cfg, env = tmp_path / "etc" / "hub.toml", tmp_path / "etc" / "aiot.env"
    out = aiot(
        "hub",
        "install-service",
        "--config",
        str(cfg),
        "--env-file",
        str(env),
        "--unit-dir",
        str(tmp_path / "units"),
        "--data-root",
        str(tmp_path / "data"),
        "--plain",
    )
    assert out.returncode == 0, out.stderr
    secret = env.read_text().split("AIOT_CLUSTER_SECRET=", 1)[1].strip()
    assert rule_ids(cfg, {"AIOT_CLUSTER_SECRET": secret}) >= ENERGY_IDS


def test_a_config_keeps_the_rules_when_it_moves(tmp_path: Path) -> None:
    assert aiot("cluster", "init", str(tmp_path / "here"), "--nodes", "1").returncode == 0
    text = (tmp_path / "here" / "hub-1.toml").read_text()
    assert str(ROOT) not in text and str(SHIPPED_MODELS) not in text
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(tmp_path / "here", moved)
    assert rule_ids(moved / "hub-1.toml") >= ENERGY_IDS


def test_the_rule_sets_come_from_the_configured_shipped_folder(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "rules").mkdir(parents=True)
    (share / "rules" / "mine.toml").write_text(
        '[[rule]]\nid = "mine"\ndevices = ["plug-*"]\nsensor = "power_w"\n'
        'above = 10.0\naction = "alert"\n'
    )
    path = node_config(tmp_path, '[models]\nshipped_dir = "share"\n[rules]\nshipped = ["mine"]\n')
    (rule,) = r.load_rules(path).rules
    assert rule.rule_id == "mine" and Path(rule.source) == share / "rules" / "mine.toml"


def test_shipped_empty_or_absent_turns_them_off(tmp_path: Path) -> None:
    assert rule_ids(node_config(tmp_path, "[rules]\nshipped = []\n")) == set()
    assert rule_ids(node_config(tmp_path, "")) == set()


@pytest.mark.parametrize(
    ("tables", "key", "problem"),
    [
        (
            '[rules]\nshipped = ["enrgy"]\n',
            "rules.shipped[0]",
            f"no rule set 'enrgy' in {SHIPPED_MODELS / 'rules'} (it has energy) "
            "(did you mean 'energy'?)",
        ),
        ('[rules]\nshipped = "energy"\n', "rules.shipped", "expected a list of rule set names"),
        (
            '[rules]\nshipped = ["../rules/energy"]\n',
            "rules.shipped[0]",
            "expected the name of a rule set, like 'energy'",
        ),
        (
            '[models]\nshipped_dir = "."\n[rules]\nshipped = ["energy"]\n',
            "rules.shipped[0]",
            "(it has none)",
        ),
        (
            '[rules]\nshipped = ["energy"]\nfiles = ["energy.toml"]\n',
            "rule[0].id",
            "rule id 'plug-over-limit' is already defined",
        ),
    ],
)
def test_a_bad_shipped_key_is_one_clear_error(
    tmp_path: Path, tables: str, key: str, problem: str
) -> None:
    shutil.copy(SHIPPED_MODELS / "rules" / "energy.toml", tmp_path / "energy.toml")
    path = node_config(tmp_path, tables)
    with pytest.raises(c.ConfigError) as exc:
        rule_ids(path)
    assert exc.value.key == key and problem in exc.value.problem


def test_a_hub_with_an_unknown_rule_set_does_not_start(tmp_path: Path) -> None:
    path = node_config(tmp_path, '[rules]\nshipped = ["enrgy"]\n')
    out = aiot("hub", "run", "--config", str(path))
    assert out.returncode == 2
    assert f"{path}: rules.shipped[0]: no rule set 'enrgy'" in out.stderr
    assert "Traceback" not in out.stderr
