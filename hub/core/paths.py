"""Where the hub finds what it ships: the source it runs from and the default models.

``SOURCE_ROOT`` is the folder that holds the ``hub`` package: a checkout, or
site-packages when installed. The shipped models (``models/``: the ONNX anomaly
model, the eval reports, the rules, the default GGUF once installed) sit beside
it in both cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

SOURCE_ROOT: Final = Path(__file__).resolve().parents[2]
SHIPPED_MODELS: Final = SOURCE_ROOT / "models"
