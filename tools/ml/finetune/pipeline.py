"""``aiot models finetune`` end to end: data -> LoRA -> GGUF adapter -> eval -> manifest, signature.

Files written into the output directory:

- ``adapter.gguf``: the LoRA adapter llama.cpp applies to the base GGUF
- ``adapter.json``: its manifest (base and adapter sha256, the data's
  generator, seed and sha256, the settings, steps, the loss curve, speed,
  the eval report)
- ``adapter.sig.json`` (with a signing key): the signed manifest of the model
  registry (``hub.decide.registry.signed_manifest``) and its Ed25519
  signature, the body ``POST /v1/models`` takes
- ``eval-readings.jsonl`` (with an eval): each held-out scenario's id, the
  adapter's reading of its policy, the expected and the chosen action
- ``checkpoint/checkpoint.pt``: the state ``--resume`` continues from
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from hub.core import keys
from hub.decide import registry as reg
from tools.ml.finetune import adapter as ad
from tools.ml.finetune import base as bm
from tools.ml.finetune import data as dm
from tools.ml.finetune.evaluate import evaluate
from tools.ml.finetune.train import Run, StepReport, TrainConfig, fingerprint, train

SCHEMA: Final = "finetune/1"
ADAPTER: Final = "adapter.gguf"
MANIFEST: Final = "adapter.json"
SIGNATURE: Final = "adapter.sig.json"
READINGS: Final = "eval-readings.jsonl"
MAX_TOKENS: Final = 2048  # the hub's context (LlmWorker n_ctx)
_STACK: Final = ("torch", "transformers", "peft", "gguf", "llama_cpp_python")


@dataclass(frozen=True, slots=True)
class Job:
    data: Path
    out: Path
    base: Path
    config: TrainConfig
    limit: int | None = None  # training examples (the first N); None: all
    eval_n: int = 48  # held-out scenarios from test.jsonl; 0: none
    resume: bool = False
    sign_key: Path | None = None
    name: str = ""
    version: str = ""


def _versions() -> dict[str, str]:
    out = {}
    for pkg in _STACK:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    return out


def encode(ds: dm.Dataset, base: Path) -> tuple[list[dm.Encoded], int]:
    """The examples as token ids, and the pad id (the end-of-turn token)."""
    tok = dm.Tokenizer(base)
    try:
        encoded = [tok.encode(e) for e in ds.examples]
    finally:
        tok.close()
    for e, x in zip(ds.examples, encoded, strict=True):
        if len(x.ids) > MAX_TOKENS:
            raise dm.DataError(f"{e.id}: {len(x.ids)} tokens, over the hub's {MAX_TOKENS}")
    return encoded, tok.eos


def sign(out: Path, name: str, version: str, manifest: dict[str, Any], key_path: Path) -> str:
    """``adapter.sig.json``: the registry's signed manifest of the adapter; the key id."""
    data = (out / ADAPTER).read_bytes()
    signed = reg.signed_manifest(name, version, reg.LORA, data, manifest)
    signature, kid = keys.sign(signed, keys.private_key(key_path))
    body = {
        "manifest": signed.decode(),
        "signature": base64.b64encode(signature).decode(),
        "key_id": kid,
    }
    (out / SIGNATURE).write_text(json.dumps(body, indent=1) + "\n")
    return kid


def _manifest(
    job: Job,
    name: str,
    version: str,
    base_sha256: str,
    ds: dm.Dataset,
    result: Run,
    report: dict[str, Any] | None,
) -> dict[str, Any]:
    adapter_bytes = (job.out / ADAPTER).read_bytes()
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "lora-adapter",
        "name": name,
        "version": version,
        "file": ADAPTER,
        "sha256": hashlib.sha256(adapter_bytes).hexdigest(),
        "size": len(adapter_bytes),
        "base": {"file": job.base.name, "sha256": base_sha256},
        "data": {
            "dir": str(job.data),
            "train_sha256": ds.sha256,
            "examples": len(ds.examples),
            "schema": ds.manifest.get("schema"),
            "generator": ds.manifest.get("generator"),
            "seed": ds.manifest.get("seed"),
            "group": ds.manifest.get("group", 1),
            "prompt_version": ds.manifest.get("prompt_version"),
        },
        "training": {
            **asdict(job.config),
            "targets": list(ad.TENSORS),
            "trainable_parameters": sum(int(v.numel()) for v in result.lora.values()),
            "steps_done": result.steps,
            "resumed_at": result.resumed_at,
            "tokens": result.tokens,
            "seconds": round(result.seconds, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
        },
        "loss_curve": [round(x, 5) for x in result.losses],
        "eval": report,
        "stack": _versions(),
        "machine": f"{platform.machine()}, {platform.system()}",
    }
    return manifest


def run(
    job: Job,
    *,
    say: Callable[[str], None] = lambda _line: None,
    progress: Callable[[StepReport], None] = lambda _r: None,
) -> dict[str, Any]:
    """Fine-tune, write the adapter, evaluate, write (and sign) the manifest; the manifest."""
    if job.sign_key:
        keys.private_key(job.sign_key)  # a bad key fails now, not after the training
    ds = dm.load(job.data, "train", job.limit)
    test = job.data / "test.jsonl"
    if job.eval_n and not test.exists():
        raise dm.DataError(f"{test} is missing: write it with policy-data, or pass --eval 0")
    encoded, pad = encode(ds, job.base)
    n_answer = sum(x.n_answer for x in encoded)
    say(f"{len(encoded)} examples, {sum(len(x.ids) for x in encoded)} tokens ({n_answer} trained)")
    say(f"loading {job.base.name} into torch")
    base = bm.load(job.base)
    model = base.copy()
    job.out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(job.config, ds.sha256, base.sha256, len(encoded))
    result = train(
        model,
        encoded,
        job.config,
        pad=pad,
        checkpoint_dir=job.out / "checkpoint",
        key=fp,
        resume=job.resume,
        progress=progress,
        groups=[e.group for e in ds.examples],
    )
    tensors = ad.gguf_tensors(
        {k: v.numpy() for k, v in result.lora.items()}, base.n_head, base.n_head_kv
    )
    name = job.name or reg.LLM_ADAPTER  # the name the LLM tier runs (hub/decide/registry.py)
    version = job.version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ad.write(
        job.out / ADAPTER,
        tensors,
        alpha=job.config.alpha,
        architecture=base.architecture,
        name=name,
    )
    report = None
    if job.eval_n:
        say(f"evaluating on the first {job.eval_n} scenarios of {test}")
        report = evaluate(
            job.base,
            job.out / ADAPTER,
            test,
            limit=job.eval_n,
            threads=job.config.threads,
            progress=say,
            readings_out=job.out / READINGS,
        )
    manifest = _manifest(job, name, version, base.sha256, ds, result, report)
    (job.out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if job.sign_key:
        kid = sign(job.out, name, version, manifest, job.sign_key)
        say(f"signed {name}@{version} with key {kid}")
    return manifest
