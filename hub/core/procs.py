"""Child processes that do not outlive their parent."""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> None:
    """``preexec_fn`` (it runs in the child between fork and exec): SIGTERM
    when the thread that started it exits, however the parent dies (a kill -9
    included). Linux only; elsewhere a no-op."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
