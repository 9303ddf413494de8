"""Real GGUF LoRA adapters for the shipped base model, written by the
fine-tune pipeline's own converter (tools/ml/finetune/adapter.py) from small
random LoRA weights: no training (tests/llm/test_finetune.py trains one), but
the same file llama.cpp applies with ``lora_path``, with a manifest in the
shape ``aiot models finetune`` writes next to it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub.decide.llm import DEFAULT_MODEL, ModelError, llama_cpp_available, resolve_model

INSTALL_LLM = "python -m tools.ml.install_llm (make test runs it)"
INSTALL_GGUF = "pip install -e '.[finetune]' (make test installs it)"
# SmolLM2-135M: hidden 576, MLP 1536, 9 query heads and 3 key/value heads of 64, 30 layers.
_SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192)}
_SHAPES |= {"o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536)}
_SHAPES |= {"down_proj": (1536, 576)}
RANK = 4


def base_model() -> Path:
    """The shipped GGUF, or a skip that says what to install."""
    if not llama_cpp_available():
        pytest.skip(f"llama-cpp-python is not installed: {INSTALL_LLM}")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip(f"gguf is not installed: {INSTALL_GGUF}")
    try:
        return resolve_model(DEFAULT_MODEL)
    except ModelError:
        pytest.skip(f"the default GGUF is not in models/: {INSTALL_LLM}")


def base_sha256(base: Path) -> str:
    return str(json.loads(base.with_suffix(".json").read_text())["sha256"])


def write_adapter(
    out: Path, base: Path, seed: int, *, layers: int = 30, scale: float = 0.02
) -> tuple[Path, dict[str, Any]]:
    """``out/adapter.gguf`` and its manifest ``out/adapter.json``."""
    from tools.ml.finetune import adapter as ad

    rng = np.random.default_rng(seed)
    lora: dict[str, np.ndarray[Any, Any]] = {}
    for layer in range(layers):
        for module, (n_in, n_out) in _SHAPES.items():
            group = (
                "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            )
            stem = f"base_model.model.model.layers.{layer}.{group}.{module}"
            lora[f"{stem}.lora_A.weight"] = rng.normal(0, scale, (RANK, n_in)).astype(np.float32)
            lora[f"{stem}.lora_B.weight"] = rng.normal(0, scale, (n_out, RANK)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapter.gguf"
    ad.write(path, ad.gguf_tensors(lora, 9, 3), alpha=2.0 * RANK, name=f"test-{seed}")
    data = path.read_bytes()
    manifest = {
        "kind": "lora-adapter",
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "base": {"file": base.name, "sha256": base_sha256(base)},
        "eval": None,
    }
    (out / "adapter.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return path, manifest
