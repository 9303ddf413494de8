"""start-unit [--restart] NAME: start /etc/systemd/system/NAME as systemd would,
on a machine that runs no systemd (tests/docs/test_pi_guide.py, on a "Pi").

What it honours, as systemd.exec(5) and systemd.service(5) define it:
``User``, ``Group``, ``EnvironmentFile`` (KEY=VALUE lines), ``StateDirectory``
(made under /var/lib, owned by the user, ``StateDirectoryMode``),
``WorkingDirectory``, ``UMask``, ``ExecStart`` (``%%`` for ``%``, quoted as
systemd quotes) and, for ``Type=oneshot``, ``ExecStartPost``. A ``simple``
service runs in the background, its output appended to ``$JOURNAL/NAME`` and
its pid in ``$JOURNAL/NAME.pid``; a ``oneshot`` runs to the end and its exit
status is this program's. ``--restart`` stops the running service first
(``KillSignal``, then SIGKILL after ``TimeoutStopSec``). Anything else in the
unit (the sandboxing, restart policy, ordering) is systemd's alone:
``systemd-analyze verify`` checks the units themselves.
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNITS = Path("/etc/systemd/system")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse(text: str) -> dict[str, list[str]]:
    """The [Service] section's keys, each with every value it was given."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def command(line: str) -> list[str]:
    return shlex.split(line.replace("%%", "%"))


def environment(svc: dict[str, list[str]], user: str | None) -> dict[str, str]:
    env = {"PATH": PATH, "LANG": "C.UTF-8"}
    if user:
        entry = pwd.getpwnam(user)
        env.update(USER=user, LOGNAME=user, HOME=entry.pw_dir)
    for name in svc.get("EnvironmentFile", []):
        for line in Path(name.lstrip("-")).read_text().splitlines():
            key, eq, value = line.strip().partition("=")
            if eq and not key.startswith("#"):
                env[key.strip()] = value.strip().strip("'\"")
    return env


def state_directories(svc: dict[str, list[str]], user: str | None) -> None:
    mode = int(svc.get("StateDirectoryMode", ["0755"])[-1], 8)
    for names in svc.get("StateDirectory", []):
        for name in names.split():
            path = Path("/var/lib") / name
            path.mkdir(parents=True, exist_ok=True)
            if user:
                entry = pwd.getpwnam(user)
                os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(mode)


def stop(name: str, svc: dict[str, list[str]], journal: Path) -> None:
    pidfile = journal / f"{name}.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    sig = getattr(signal, svc.get("KillSignal", ["SIGTERM"])[-1])
    timeout = float(svc.get("TimeoutStopSec", ["90"])[-1])
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    restart = "--restart" in argv
    names = [a for a in argv if a != "--restart"]
    if len(names) != 1:
        print("usage: start-unit [--restart] NAME", file=sys.stderr)
        return 2
    name = names[0]
    svc = parse((UNITS / name).read_text())
    journal = Path(os.environ["JOURNAL"])
    user = svc.get("User", [None])[-1]
    group = svc.get("Group", [user])[-1]
    if restart:
        stop(name, svc, journal)
    state_directories(svc, user)
    kw = {
        "env": environment(svc, user),
        "cwd": svc.get("WorkingDirectory", ["/"])[-1],
        "user": user,
        "group": group,
        "extra_groups": [] if user else None,
        "umask": int(svc.get("UMask", ["0022"])[-1], 8),
    }
    with (journal / name).open("a") as out:
        if svc.get("Type", ["simple"])[-1] == "oneshot":
            for line in svc["ExecStart"] + svc.get("ExecStartPost", []):
                code = subprocess.run(command(line), stdout=out, stderr=out, **kw).returncode
                if code:
                    return code
            return 0
        proc = subprocess.Popen(
            command(svc["ExecStart"][-1]),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
    (journal / f"{name}.pid").write_text(str(proc.pid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
