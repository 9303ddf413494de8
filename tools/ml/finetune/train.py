"""LoRA training (peft) on the answer tokens (an adapter's reading of a policy), with
checkpoints and resume.

Deterministic for a seed as far as torch allows: the LoRA initialisation
comes from ``torch.manual_seed(seed)``, each epoch's batches from
``random.Random(f"{seed}:{epoch}")`` (``batches``), there is no dropout, torch runs its
deterministic algorithms, and a checkpoint holds the LoRA weights, the
optimizer state, the step and the loss curve, so a resumed run continues
with the very batch and state it stopped at (with the same thread count,
which sets the order of float sums).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F

from tools.ml.finetune.adapter import TENSORS
from tools.ml.finetune.data import IGNORE, Encoded

CHECKPOINT: Final = "checkpoint.pt"
MIN_SHARED: Final = 16  # a shorter common prefix is not worth a forward of its own


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 1
    steps: int | None = None  # None: every batch of every epoch
    batch: int = 4
    lr: float = 5e-4
    warmup: int = 10
    rank: int = 16
    alpha: float = 32.0
    # LoRA on the layers from this one up: the backward pass stops there.
    lora_from: int = 0
    threads: int = 2
    bf16: bool = True
    save_every: int = 50
    bucket: int = 16  # batches cut from one run of examples sorted by length; 1: none
    # The tokens a batch's examples share (the prompt's head) run once
    # (``shared_prefix``): the same loss and gradients, less work.
    shared_head: bool = True
    # A batch holds examples of one group (one device's actions: a longer
    # shared head). Not the recipe: it scored lower (docs/llm.md).
    group_actions: bool = False

    def total_steps(self, per_epoch: int) -> int:
        """``steps`` when set (the epochs go on as far as needed), else every epoch."""
        return self.steps or per_epoch * self.epochs

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up, then linear decay to a tenth."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        left = max(1, total - self.warmup)
        return self.lr * (1.0 - 0.9 * (step - self.warmup) / left)


@dataclass(frozen=True, slots=True)
class StepReport:
    step: int  # steps done
    total: int
    loss: float
    tokens_per_s: float
    eta_s: float


@dataclass
class Run:
    """What a run did; ``lora`` is peft's state dict of the adapter (float32)."""

    config: TrainConfig
    total: int
    losses: list[float] = field(default_factory=list)  # one per step, mean over answer tokens
    tokens: int = 0  # the examples' tokens (a head run once for a batch counts in each)
    seconds: float = 0.0  # training time, over every session of a resumed run
    resumed_at: int | None = None
    lora: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class ResumeError(ValueError):
    """The checkpoint belongs to another run (data, base model or settings differ)."""


class Stop(Exception):
    """Raised by a progress callback to stop after a saved step (tests, Ctrl-C)."""


def lora_model(model: Any, cfg: TrainConfig) -> Any:
    """``model`` with LoRA on the attention and MLP projections, seeded."""
    from peft import LoraConfig, get_peft_model  # lazy: the finetune extra

    torch.manual_seed(cfg.seed)
    n_layers = int(model.config.num_hidden_layers)
    if not 0 <= cfg.lora_from < n_layers:
        raise ValueError(
            f"lora_from {cfg.lora_from} is outside the model's 0..{n_layers - 1} layers"
        )
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=list(TENSORS),
        layers_to_transform=list(range(cfg.lora_from, n_layers)) if cfg.lora_from else None,
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the stack, not ours
        return get_peft_model(model, lcfg)


def lora_state(peft_model: Any) -> dict[str, Any]:
    from peft import get_peft_model_state_dict  # lazy: the finetune extra

    sd = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {k: v.detach().to(torch.float32).clone() for k, v in sd.items()}


def set_lora_state(peft_model: Any, state: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict  # lazy: the finetune extra

    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ResumeError(f"checkpoint does not fit the model: {missing[:2] or result}")


def batch_tensors(batch: Sequence[Encoded], pad: int) -> tuple[Any, Any, Any]:
    """(input ids, attention mask, labels), right-padded; prompt and padding labelled IGNORE."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.n_prompt : n] = torch.tensor(e.ids[e.n_prompt :])
    return ids, mask, labels


def shared_prefix(batch: Sequence[Encoded]) -> int:
    """How many leading tokens every example of ``batch`` shares (0 when fewer
    than ``MIN_SHARED``), short of the last prompt token of the shortest
    prompt: every position whose output carries a loss stays in the batch's
    own forward."""
    if len(batch) < 2:
        return 0
    first, limit = batch[0].ids, min(e.n_prompt for e in batch) - 1
    n = 0
    while n < limit and all(e.ids[n] == first[n] for e in batch[1:]):
        n += 1
    return n if n >= MIN_SHARED else 0


def answer_loss(
    peft_model: Any, ids: Any, mask: Any, labels: Any, bf16: bool, shared: int = 0
) -> Any:
    """Mean cross-entropy over the answer tokens; logits only where a label is.

    With ``shared`` > 0 the first ``shared`` tokens, the same in every row,
    run once (a batch of one) and their keys and values are expanded to the
    batch for the rest of the rows: the same attention, the same loss and
    the same gradients (summed over the rows through the expansion) as the
    whole batch run row by row, for a fraction of the work of the head."""
    from transformers import DynamicCache  # lazy: the finetune extra

    inner = peft_model.get_base_model()
    body = inner.model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if shared:
            head = body(input_ids=ids[:1, :shared], use_cache=True).cache
            rows = ids.shape[0]
            kv = [
                (layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
                for layer in head.layers
            ]
            cache = DynamicCache(kv, config=inner.config)
            hidden = body(
                input_ids=ids[:, shared:], attention_mask=mask, cache=cache, use_cache=True
            ).last_hidden_state
        else:
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, shared + 1 :]
    where = target != IGNORE
    h = hidden[:, :-1][where]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = inner.lm_head(h)
    return F.cross_entropy(logits.float(), target[where])


def step_loss(
    peft_model: Any,
    examples: Sequence[Encoded],
    picked: Sequence[int],
    pad: int,
    bf16: bool,
    share: bool = False,
) -> tuple[Any, int]:
    """(mean loss over the answer tokens, the examples' tokens) of one step's
    examples; ``share``: their common prefix runs once."""
    batch = [examples[i] for i in picked]
    ids, mask, labels = batch_tensors(batch, pad)
    shared = shared_prefix(batch) if share else 0
    return answer_loss(peft_model, ids, mask, labels, bf16, shared), int(mask.sum())


def batches(
    seed: int,
    epoch: int,
    lengths: Sequence[int],
    take: int,
    bucket: int,
    groups: Sequence[str] | None = None,
) -> list[list[int]]:
    """One epoch's batches of example indices. The examples in a random order
    are cut into runs of ``take * bucket``; each run is sorted by length and
    cut into batches, and the batches are shuffled. A batch is padded to its
    longest example, so with ``bucket`` 16 little of a step goes on padding
    (a fifth of it in random batches of the recipe's data). ``bucket`` 1:
    the random order cut into batches. With ``groups`` (a key per example),
    each group's examples, in that random order, are cut the same way on
    their own, so that no batch mixes two groups."""
    rng = random.Random(f"{seed}:{epoch}")
    n = len(lengths)
    idx = rng.sample(range(n), n)
    if bucket <= 1 and groups is None:
        return [idx[k : k + take] for k in range(0, n, take)]
    if groups is None:
        out = _cut(idx, lengths, take, bucket)
    else:
        members: dict[str, list[int]] = {}
        for i in idx:
            members.setdefault(groups[i], []).append(i)
        out = [b for key in sorted(members) for b in _cut(members[key], lengths, take, bucket)]
    rng.shuffle(out)
    return out


def _cut(idx: list[int], lengths: Sequence[int], take: int, bucket: int) -> list[list[int]]:
    if bucket <= 1:
        return [idx[k : k + take] for k in range(0, len(idx), take)]
    out: list[list[int]] = []
    span = take * bucket
    for k in range(0, len(idx), span):
        run = sorted(idx[k : k + span], key=lambda i: (lengths[i], i))
        out += [run[j : j + take] for j in range(0, len(run), take)]
    return out


def _save(path: Path, run: Run, optim: Any, peft_model: Any, fingerprint: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "fingerprint": fingerprint,
            "losses": run.losses,
            "tokens": run.tokens,
            "seconds": run.seconds,
            "lora": lora_state(peft_model),
            "optim": optim.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _resume(path: Path, run: Run, optim: Any, peft_model: Any, fingerprint: dict[str, Any]) -> None:
    ck = torch.load(path, weights_only=True)
    if ck["fingerprint"] != fingerprint:
        diff = sorted(k for k in fingerprint if ck["fingerprint"].get(k) != fingerprint[k])
        raise ResumeError(f"{path} is from another run: {', '.join(diff)} differ")
    set_lora_state(peft_model, ck["lora"])
    optim.load_state_dict(ck["optim"])
    run.losses = [float(x) for x in ck["losses"]]
    run.tokens = int(ck["tokens"])
    run.seconds = float(ck["seconds"])
    run.resumed_at = run.steps


def fingerprint(cfg: TrainConfig, data_sha256: str, base_sha256: str, n: int) -> dict[str, Any]:
    """What must be the same for a checkpoint to be resumed (steps may grow)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in ("steps", "save_every")}
    return {**d, "data_sha256": data_sha256, "base_sha256": base_sha256, "examples": n}


def train(
    model: Any,
    examples: Sequence[Encoded],
    cfg: TrainConfig,
    *,
    pad: int,
    checkpoint_dir: Path,
    key: dict[str, Any],
    resume: bool = False,
    progress: Callable[[StepReport], None] = lambda _r: None,
    groups: Sequence[str] | None = None,
) -> Run:
    """Train LoRA on ``model`` (changed in place: the peft model is ``run``'s input
    afterwards); a checkpoint every ``save_every`` steps and at the end.
    ``groups``: a key per example (the device's actions, which the prompt's
    head is rendered from); with ``cfg.group_actions`` a batch holds one
    group's examples. With ``cfg.shared_head`` the tokens a batch's examples
    share run once."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    peft_model = lora_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    take = cfg.batch
    lengths = [len(e.ids) for e in examples]
    keys = groups if cfg.group_actions else None
    if cfg.group_actions and keys is None:
        raise ValueError("group_actions needs a group key per example")
    if keys is not None and len(keys) != len(examples):
        raise ValueError(f"{len(keys)} group keys for {len(examples)} examples")
    # The count of batches does not depend on the epoch's order.
    per_epoch = len(batches(cfg.seed, 0, lengths, take, cfg.bucket, keys))
    run = Run(cfg, cfg.total_steps(per_epoch))
    ck_path = checkpoint_dir / CHECKPOINT
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume and ck_path.exists():
        _resume(ck_path, run, optim, peft_model, key)
    peft_model.train()
    t_start, tokens_start, seconds_before = time.monotonic(), run.tokens, run.seconds
    epoch_batches: tuple[int, list[list[int]]] = (-1, [])
    for step in range(run.steps, run.total):
        epoch, b = divmod(step, per_epoch)
        if epoch_batches[0] != epoch:
            epoch_batches = (epoch, batches(cfg.seed, epoch, lengths, take, cfg.bucket, keys))
        picked = epoch_batches[1][b]
        for pg in optim.param_groups:
            pg["lr"] = cfg.lr_at(step, run.total)
        loss, tokens = step_loss(peft_model, examples, picked, pad, cfg.bf16, cfg.shared_head)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        run.losses.append(float(loss.detach()))
        run.tokens += tokens
        elapsed = time.monotonic() - t_start
        run.seconds = seconds_before + elapsed
        rate = (run.tokens - tokens_start) / elapsed if elapsed > 0 else 0.0
        per_step = elapsed / (step + 1 - (run.resumed_at or 0))
        saved = run.steps % cfg.save_every == 0 or run.steps == run.total
        if saved:
            _save(ck_path, run, optim, peft_model, key)
        try:
            progress(
                StepReport(
                    run.steps, run.total, run.losses[-1], rate, per_step * (run.total - run.steps)
                )
            )
        except Stop:
            if not saved:
                _save(ck_path, run, optim, peft_model, key)
            raise
    peft_model.eval()
    run.lora = lora_state(peft_model)
    return run
