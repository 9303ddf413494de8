"""Where the hub finds what it ships: the source it runs from and the default models.

``SOURCE_ROOT`` is the folder that holds the ``hub`` package: a checkout, or
site-packages when installed. The shipped models (the ``models`` package:
the ONNX anomaly model, the eval reports, the rules, and the default GGUF
once `python -m tools.ml.install_llm` has put it there) install as package
data beside it, so a hub installed with pip finds them as a checkout does.
The hub config's ``[models] shipped_dir`` points elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import models

SOURCE_ROOT: Final = Path(__file__).resolve().parents[2]
SHIPPED_MODELS: Final = Path(models.__file__).resolve().parent
