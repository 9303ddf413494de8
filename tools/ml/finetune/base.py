"""The base model in torch: the shipped GGUF, loaded and dequantized by transformers.

``transformers`` reads the GGUF directly (``gguf_file=``), dequantizes every
tensor to float32 and undoes llama.cpp's permutation of the q and k rows, so
the torch model computes what llama.cpp computes from the same file (up to
llama.cpp's quantized dot products). Loading takes tens of seconds (the
GGUF's metadata is parsed in Python), so one process loads a file once and
hands out copies: a fine-tune changes its copy, never the loaded base.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.core.fsutil import sha256_file


@dataclass(frozen=True, slots=True)
class Base:
    path: Path
    sha256: str
    model: Any  # transformers' LlamaForCausalLM, float32, never trained
    n_head: int
    n_head_kv: int
    n_layer: int
    architecture: str

    def copy(self) -> Any:
        """A fresh copy of the model to train."""
        return copy.deepcopy(self.model)


_loaded: dict[tuple[str, str], Base] = {}
_lock = threading.Lock()


def load(path: Path) -> Base:
    """The GGUF at ``path`` as a torch model (loaded once per process and sha256)."""
    sha = sha256_file(path)
    key = (str(path.resolve()), sha)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(path, sha)
        return _loaded[key]


def _load(path: Path, sha: str) -> Base:
    import torch  # lazy: the finetune extra
    from transformers import AutoModelForCausalLM  # lazy: the finetune extra
    from transformers.utils import logging as tf_logging  # lazy: the finetune extra

    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"{path}: a {cfg.model_type} model; the adapter writer knows llama")
    return Base(
        path=path,
        sha256=sha,
        model=model,
        n_head=int(cfg.num_attention_heads),
        n_head_kv=int(cfg.num_key_value_heads),
        n_layer=int(cfg.num_hidden_layers),
        architecture="llama",
    )
