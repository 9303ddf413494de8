"""docs/deploy-raspberry-pi.md runs as written, and its systemd units are valid.

The guide's command blocks run in order on three Pis and a workstation made
of namespaces on this machine (tests/docs/site.py), with only the
substitutions its section "Trying this guide on one machine" lists, and the
workstation's commands once from a folder outside the checkout and once from
a clone's root. Every block that runs exits 0; the cluster it builds switches
the guide's first plug off by its rules within 60 s of the plug starting; the
backup the timer's service makes is complete; what the workstation leaves in
a clone is all git-ignored.

`systemd-analyze verify` (Debian's systemd package; it needs no running
systemd) checks the backup service and timer as the guide writes them, under
the file names their first comment line gives. The unit `aiot hub
install-service` writes is checked by tests/unit/test_install_service_paths.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.docs import site as pis
from tests.docs.blocks import blocks, every_block, substitute, substitutions
from tests.docs.runner import environment, reader_folder, running, switched_off_by_a_rule, untracked
from tests.support import ROOT, micropython, need_tool, wait_until

pytestmark = pytest.mark.docs

GUIDE = ROOT / "docs" / "deploy-raspberry-pi.md"
ONE_MACHINE = "Trying this guide on one machine"
SWITCH_OFF_S = 60.0
# What the one-machine section says does not run there, and why.
NOT_RUN = {
    "1. Prepare each Pi": "the machine's own packages, services and clock",
    "4. Ports and the firewall": "the machine's own firewall",
    "8. Updates": "the Pis' LAN here reaches no package index",
}
_WHERE = re.compile(r"^# on (each Pi|hub-[123]|your workstation)(.*)$")


def where(block: str) -> tuple[list[str], str]:
    """The machines a block runs on, from its first line, and the rest of that line."""
    m = _WHERE.match(block.splitlines()[0])
    assert m, f"a block of the guide does not say where it runs:\n{block}"
    names = {"each Pi": list(pis.PIS), "your workstation": [pis.WORKSTATION]}
    return names.get(m.group(1), [m.group(1)]), m.group(2)


def skipped(heading: str, block: str, rest: str) -> str | None:
    """Why a block does not run on one machine, or None."""
    if heading in NOT_RUN:
        return NOT_RUN[heading]
    if "with the board" in rest:
        return "a real board"
    if "aiot restore" in block:
        return "restoring needs every node stopped and emptied (tests/cluster/test_hub_backup.py)"
    return None


def write_units(folder: Path) -> list[Path]:
    """The guide's backup service and timer, written where their first line says."""
    units = []
    folder.mkdir(parents=True, exist_ok=True)
    for text in blocks(GUIDE, "9. Backups", "ini"):
        first = text.splitlines()[0]
        assert first.startswith("# /etc/systemd/system/"), first
        path = folder / first.rsplit("/", 1)[1]
        path.write_text(text)
        units.append(path)
    assert sorted(p.name for p in units) == ["aiot-backup.service", "aiot-backup.timer"]
    return units


def aiot_on_hub_1(site: pis.Site, *args: str) -> Any:
    """An `aiot` command as root on hub-1, with its secret and config (JSON out)."""
    line = " ".join(["/opt/aiot/.venv/bin/aiot", *args, "--config", "/etc/aiot/hub.toml"])
    out = subprocess.run(
        [*site.on("hub-1"), f"sudo sh -c 'set -a; . /etc/aiot/aiot.env; exec {line}'"],
        env=site.env(environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def wait_switched_off(site: pis.Site) -> tuple[dict[str, Any], float]:
    """The rules' switch-off of plug-1 (its decision and command), and how
    long it took to see it from now."""
    t0 = time.monotonic()
    found: dict[str, Any] = {}

    def off() -> bool:
        hit = switched_off_by_a_rule(lambda *a: aiot_on_hub_1(site, *a))
        found.update(hit or {})
        return hit is not None

    wait_until(off, SWITCH_OFF_S, "the rules switching plug-1 off, its command DONE")
    return found, time.monotonic() - t0


def test_the_guide_says_where_each_block_runs_and_what_changes_on_one_machine() -> None:
    table = substitutions(GUIDE, ONE_MACHINE)
    found = every_block(GUIDE)
    assert len(found) >= 10
    for _, block in found:
        where(block)
    text = "".join(b for _, b in found)
    for phrase in table:
        assert phrase in text, f"the substitution {phrase!r} matches no command of the guide"
    assert set(NOT_RUN) <= {h for h, _ in found}


def on_workstation(
    site: pis.Site,
    stack: contextlib.ExitStack,
    script: str,
    folder: Path,
    home: Path,
) -> Any:
    """Run a block on the workstation from ``folder``; what it leaves running
    runs until ``stack`` closes."""
    env = dict(site.env(environment()), HOME=str(home))
    return stack.enter_context(
        running(script, folder, timeout=600, on=site.on(pis.WORKSTATION), env=env)
    )


def plug_from_both_folders(
    site: pis.Site,
    background: contextlib.ExitStack,
    script: str,
    folders: dict[str, Path],
    home: Path,
) -> float:
    """Section 6's plug block from outside: the rules switch its plug-1 off
    (how long that took is returned), then it stops. Then the block from the
    clone's root: its plug-1 connects and runs a command from hub-1 (the rule's
    cooldown, 300 s, keeps a second switch-off away)."""
    with contextlib.ExitStack() as first:
        ran = on_workstation(site, first, script, folders["outside"], home)
        assert ran.returncode == 0, f"the plug from outside:\n{script}\n{ran.output}"
        assert "plug-1 connected to 192.168.1.1" in ran.output, ran.output
        found, took = wait_switched_off(site)
        assert found["decision"]["rule"] == "plug-over-limit", found
    ran = on_workstation(site, background, script, folders["clone root"], home)
    assert ran.returncode == 0, f"the plug from the clone's root:\n{script}\n{ran.output}"
    assert "plug-1 connected to 192.168.1.1" in ran.output, ran.output
    on = aiot_on_hub_1(site, "command", "send", "plug-1", "relay.set", "on=true", "--wait", "30")
    assert on["state"] == "DONE" and on["params"] == {"on": True}, on
    return took


@pytest.mark.cluster
def test_the_guide_runs_as_written_on_one_machine(tmp_path: Path) -> None:
    """The site is built once; each workstation block runs from a folder
    outside the checkout, then from a clone's root, with one home (so one CA:
    the second run of the certificate block reuses it and issues the
    certificates the cluster then uses); the plug block runs as
    plug_from_both_folders says."""
    need_mosquitto()
    micropython()
    table = substitutions(GUIDE, ONE_MACHINE)
    folders = {kind: reader_folder(kind, tmp_path, ROOT) for kind in ("outside", "clone root")}
    home = tmp_path / "workstation-home"  # the CA's folder, ~/aiot-ca, goes there
    home.mkdir()
    ran_blocks: list[str] = []
    switched_off_after: float | None = None
    with pis.site(tmp_path / "site", ROOT) as site, contextlib.ExitStack() as background:
        for heading, block in every_block(GUIDE):
            names, rest = where(block)
            if skipped(heading, block, rest):
                continue
            script = substitute(block, table)
            if heading == "9. Backups":
                write_units(site.pi("hub-1") / "etc" / "systemd" / "system")
            for name in names:
                if name != pis.WORKSTATION:
                    ran = background.enter_context(
                        running(
                            script,
                            site.pi(name) / "home",
                            timeout=600,
                            on=site.on(name, host_net=heading.startswith("2.")),
                            env=site.env(pis.pi_environment()),
                        )
                    )
                    assert ran.returncode == 0, f"{heading}, on {name}:\n{block}\n{ran.output}"
                    ran_blocks.append(f"{heading} on {name}")
                    continue
                if "aiot device run" in block:
                    switched_off_after = plug_from_both_folders(
                        site, background, script, folders, home
                    )
                    ran_blocks += [f"{heading} on {name} ({kind})" for kind in folders]
                    continue
                for kind, folder in folders.items():
                    ran = on_workstation(site, background, script, folder, home)
                    assert ran.returncode == 0, f"{heading}, {kind}:\n{block}\n{ran.output}"
                    ran_blocks.append(f"{heading} on {name} ({kind})")
        hub_1 = site.pi("hub-1")
        for name in pis.PIS:
            config = tomllib.loads((site.pi(name) / "etc" / "aiot" / "hub.toml").read_text())
            assert config["raft"]["bind"] == f"{pis.ADDRESS[name]}:4321", config
            log = (site.pi(name) / "journal" / "aiot-hub.service").read_text()
            assert f"hub {name} up" in log, log
        backups = list((hub_1 / "var-backups" / "aiot").iterdir())
        assert len(backups) == 1 and (backups[0] / "manifest.json").exists(), backups
    print(f"ran {len(ran_blocks)} blocks; plug-1 switched off {switched_off_after:.1f} s")
    status = untracked(folders["clone root"])
    assert status == "", f"the guide left files git does not ignore:\n{status}"


def test_the_backup_service_and_timer_verify(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "apt-get install -y systemd")
    units = write_units(tmp_path)
    out = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if "aiot-backup" in line and "aiot-hub.service" not in line
    ]
    assert out.returncode == 0 or not problems, out.stdout + out.stderr
    assert not problems, "\n".join(problems)
