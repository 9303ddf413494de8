"""The hub finds its shipped models where `[models] shipped_dir` says."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from hub.core.config import DecisionsConfig
from hub.core.paths import SHIPPED_MODELS
from hub.decide import engine, llm

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
