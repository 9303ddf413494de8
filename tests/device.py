"""The firmware as a test device: tools/lab/device.py, skipping (outside CI) when
the MicroPython interpreter is missing."""

from __future__ import annotations

from tests.support import micropython
from tools.lab.device import Device as _Device


class Device(_Device):
    def start(self) -> Device:
        micropython()  # skip with a reason that says what to install
        super().start()
        return self
