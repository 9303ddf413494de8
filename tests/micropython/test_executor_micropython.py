"""edge/executor.py under the real MicroPython interpreter, one process per boot.

The scenarios live in executor_cases.py; here each boot is a real
``micropython -X heapsize=96k`` process, and a crash is a real SIGKILL that
the handler sends to its own interpreter after it has actuated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.micropython.executor_cases import SCENARIOS, Device, boot_micropython
from tests.support import run_micropython

pytestmark = pytest.mark.micropython


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_executor_under_micropython(scenario: Callable[[Device], None], tmp_path: Path) -> None:
    dev = Device(tmp_path, boot_micropython, crash_mode="kill")
    scenario(dev)
    dev.check()


def test_executor_imports_under_micropython_without_cpython_only_syntax() -> None:
    # The module loads under the firmware heap and keeps its table in the
    # form the edge encoder takes for DeviceStatus.capabilities.
    out = run_micropython(
        "-c",
        "from edge import codec, executor\n"
        "e = codec.Encoder(1024)\n"
        "env = e.message('DeviceStatus', {'device_id': 'p', 'capabilities': "
        "executor.PLUG_CAPABILITIES})\n"
        "k, f = codec.decode_envelope(env)\n"
        "print(len(f['capabilities']), f['capabilities'][1]['params'][0]['max'])",
    )
    assert out.split() == ["5", "3680.0"]
