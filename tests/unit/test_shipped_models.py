"""The hub finds its shipped models where `[models] shipped_dir` says."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from hub.core.config import DecisionsConfig
from hub.core.paths import SHIPPED_MODELS
from hub.decide import engine, llm
from hub.decide import registry as reg

pytestmark = pytest.mark.unit


@pytest.mark.skipif(not llm.llama_cpp_available(), reason="needs llama-cpp-python: make test")
def test_the_llm_tier_looks_for_its_model_in_the_shipped_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="aiot.engine"):
        assert engine.llm_tier(DecisionsConfig(), tmp_path) is None
    assert f"looked in {tmp_path}" in caplog.text


@pytest.mark.skipif(not llm.llama_cpp_available(), reason="needs llama-cpp-python: make test")
def test_a_model_and_its_report_in_another_folder_are_found_there(tmp_path: Path) -> None:
    name = DecisionsConfig().llm
    gguf = SHIPPED_MODELS / f"{name}.gguf"
    if not gguf.exists():
        pytest.skip(f"the default model is missing: {llm.INSTALL_HINT}")
    try:  # a hard link: resolve() must not lead back to the default folder
        os.link(gguf, tmp_path / f"{name}.gguf")
    except OSError:
        shutil.copy(gguf, tmp_path)
    (tmp_path / "eval" / "results").mkdir(parents=True)
    shutil.copy(SHIPPED_MODELS / "eval" / "results" / f"{name}.json", tmp_path / "eval" / "results")
    tier = engine.llm_tier(DecisionsConfig(), tmp_path)
    assert tier is not None
    assert tier.model_path == (tmp_path / f"{name}.gguf").resolve()


def _ship_adapter(models_dir: Path, data: bytes, **manifest: object) -> Path:
    d = models_dir / "llm-adapter"
    d.mkdir(parents=True)
    (d / "llm-adapter.gguf").write_bytes(data)
    doc = {
        "schema": "finetune/1",
        "sha256": hashlib.sha256(data).hexdigest(),
        "base": {"sha256": "ab" * 32},
        "version": "20261205",
        "eval": {"accuracy": 0.5, "n": 300},
        **manifest,
    }
    (d / "llm-adapter.json").write_text(json.dumps(doc))
    return d


def test_the_shipped_adapter_is_found_and_checked(tmp_path: Path) -> None:
    assert reg.shipped_adapter(tmp_path) is None  # none shipped
    d = _ship_adapter(tmp_path, b"GGUF adapter bytes")
    found = reg.shipped_adapter(tmp_path)
    assert found is not None
    adapter, version = found
    assert version == "20261205" and adapter.name == "llm-adapter@shipped-20261205"
    assert adapter.base_sha256 == "ab" * 32 and adapter.report == {"accuracy": 0.5, "n": 300}
    assert adapter.path == d / "llm-adapter.gguf"
    (d / "llm-adapter.gguf").write_bytes(b"GGUF other bytes")  # not the manifest's file
    with pytest.raises(reg.ModelRefused, match="sha256"):
        reg.shipped_adapter(tmp_path)
    other = tmp_path / "other"
    _ship_adapter(other, b"GGUF", base={"sha256": "no"})
    with pytest.raises(reg.ModelRefused, match="no base"):
        reg.shipped_adapter(other)


def test_eval_resolves_the_default_to_the_shipped_adapter_on_its_base(tmp_path: Path) -> None:
    from tools.ml import eval_decisions as ev

    name = DecisionsConfig().llm
    gguf = SHIPPED_MODELS / f"{name}.gguf"
    if not gguf.exists():
        pytest.skip(f"the default model is missing: {llm.INSTALL_HINT}")
    try:  # a hard link: resolve() must not lead back to the default folder
        os.link(gguf, tmp_path / f"{name}.gguf")
    except OSError:
        shutil.copy(gguf, tmp_path)
    shutil.copy(SHIPPED_MODELS / f"{name}.json", tmp_path)
    base = (tmp_path / f"{name}.gguf").resolve()
    assert ev.resolve("default", tmp_path) == (base, None)
    with pytest.raises(llm.ModelError, match="no adapter is shipped"):
        ev.resolve("llm-adapter", tmp_path)
    base_sha = json.loads((SHIPPED_MODELS / f"{name}.json").read_text())["sha256"]
    d = _ship_adapter(tmp_path, b"GGUF adapter", base={"sha256": base_sha})
    for model in ("default", "llm-adapter"):
        assert ev.resolve(model, tmp_path) == (tmp_path / f"{name}.gguf", d / "llm-adapter.gguf")
    assert ev.resolve(name, tmp_path) == (base, None)  # a base by name: that model alone
