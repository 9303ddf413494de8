"""The hub installed with pip, outside a checkout, finds its shipped models.

Builds the wheel from this checkout (no network: the venv's setuptools),
installs it into a folder, and runs Python from elsewhere with only that
folder and the venv's dependencies on its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.base.paths import ROOT

pytestmark = pytest.mark.integration

PROBE = """
import hub, models
from hub.core.paths import SHIPPED_MODELS
from hub.decide.anomaly import AnomalyModel, default_manifest_path
from hub.decide.registry import SHIPPED
from hub.http.dashboard import STATIC_DIR
model = AnomalyModel.load(default_manifest_path())
print(hub.__file__)
print(SHIPPED_MODELS)
print(SHIPPED.exists(), (STATIC_DIR / "index.html").exists(), model.version)
"""


def test_an_installed_hub_finds_its_models_and_dashboard(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "models/anomaly/anomaly.onnx",
        "models/anomaly/anomaly.json",
        "models/eval/results/smollm2-135m-instruct-q4_0.json",
        "models/eval/results/smollm2-135m-instruct-q4_1.json",
        "models/rules/energy.toml",
        "models/llm-adapter/llm-adapter.json",
        "models/llm-adapter/llm-adapter.gguf",
        "hub/http/static/index.html",
        "protocol/aiot.fbs",
    ):
        assert shipped in names, shipped
    # The base model's weights are installed (python -m tools.ml.install_llm),
    # not packaged; the fine-tuned adapter is made here and ships like the
    # ONNX model.
    ggufs = {n for n in names if n.endswith(".gguf")}
    assert ggufs == {"models/llm-adapter/llm-adapter.gguf"}, ggufs

    target = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONSAFEPATH="1")
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=True,
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    ).stdout.splitlines()
    assert out[0].startswith(str(target)), f"hub imported from {out[0]}, not the install"
    assert out[1] == str((target / "models").resolve())
    assert out[2].startswith("True True ")
