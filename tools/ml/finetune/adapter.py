"""The LoRA adapter as a GGUF file llama.cpp applies (``Llama(lora_path=...)``).

A llama.cpp LoRA adapter is a GGUF of ``general.type = adapter`` with
``adapter.type = lora``, ``adapter.lora.alpha`` and, for each adapted weight
``blk.N.<tensor>.weight``, two tensors ``.lora_a`` (rank x in) and
``.lora_b`` (out x rank). llama.cpp adds ``scale * alpha / rank * B @ A @ x``
to the weight's output, as peft adds ``lora_alpha / r * B(A(x))``.

llama.cpp's GGUF stores the q and k projections of a llama model with each
head's rows reordered (the two halves of a rotary pair interleaved), and
``transformers`` undoes that when it loads the GGUF. The adapter's B rows
(the output side) get the same reordering, per query head for q and per
key/value head for k; A (the input side) stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

# peft's module names -> llama.cpp's tensor names.
TENSORS: Final = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_NAME = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def permute_rows(w: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """llama.cpp's order of a q or k projection's output rows, from the HF order:
    within each head, rows (i, i + d/2) become neighbours (2i, 2i + 1)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of rotary pairs")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(
    lora: Mapping[str, np.ndarray[Any, Any]], n_head: int, n_head_kv: int, *, permute: bool = True
) -> dict[str, np.ndarray[Any, Any]]:
    """peft's LoRA weights (its state dict names, numpy float32) -> the adapter's tensors."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in lora.items():
        match = _NAME.search(name)
        if match is None or match.group(2) not in TENSORS:
            raise ValueError(f"not a LoRA weight of a llama projection: {name}")
        layer, module, ab = match.groups()
        w = np.ascontiguousarray(value, dtype=np.float32)
        if ab == "B" and permute and module in ("q_proj", "k_proj"):
            w = permute_rows(w, n_head if module == "q_proj" else n_head_kv)
        out[f"blk.{layer}.{TENSORS[module]}.weight.lora_{ab.lower()}"] = np.ascontiguousarray(w)
    if not out:
        raise ValueError("no LoRA weights")
    return out


def write(
    path: Path,
    tensors: Mapping[str, np.ndarray[Any, Any]],
    *,
    alpha: float,
    architecture: str = "llama",
    name: str = "",
) -> None:
    """Write the adapter GGUF (tensors from ``gguf_tensors``) to ``path``."""
    import gguf  # lazy: the finetune extra

    writer = gguf.GGUFWriter(str(path), arch=architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        if name:
            writer.add_name(name)
        for key in sorted(tensors, key=_order):
            writer.add_tensor(key, tensors[key])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _order(key: str) -> tuple[int, str]:
    return int(key.split(".")[1]), key


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """(metadata, tensors) of an adapter GGUF, for checks and tests."""
    import gguf  # lazy: the finetune extra

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith(("general.", "adapter.")):
            meta[key] = field.contents()
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed(t.shape))) for t in reader.tensors}
    return meta, tensors
