"""Child processes the tools start: stopping one for good.

    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent)
    stop_process(proc)          # SIGTERM, then SIGKILL if it lingers

``die_with_parent`` (hub/core/procs.py) ties a child's life to its starter's.
"""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM and wait up to ``timeout`` seconds; SIGKILL and wait if it is
    still running then. Nothing happens to a process that has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
