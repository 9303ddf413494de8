"""`aiot models finetune` against the real parts: the shipped SmolLM2-135M GGUF
dequantized by transformers, LoRA by peft in torch, the adapter written as
GGUF and applied by llama.cpp (llama-cpp-python), data from the real policy
generator. Short runs (a few steps): these tests assert behaviour, the figures
of a real run are in docs/llm.md.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hub.core import keys
from hub.decide import registry as reg
from hub.decide.llm import DEFAULT_MODEL, ModelError, llama_cpp_available, resolve_model
from tools.ml.policy import dataset

pytestmark = [pytest.mark.llm, pytest.mark.finetune]

INSTALL_LLM = "python -m tools.ml.install_llm (make test runs it)"
INSTALL_STACK = "pip install -e '.[finetune]' (make test installs it)"
STACK = ("torch", "transformers", "peft", "gguf")


@pytest.fixture(scope="module")
def gguf() -> Path:
    missing = [m for m in STACK if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: {INSTALL_STACK}")
    if not llama_cpp_available():
        pytest.skip(f"llama-cpp-python is not installed: {INSTALL_LLM}")
    try:
        return resolve_model(DEFAULT_MODEL)
    except ModelError:
        pytest.skip(f"the default GGUF is not in models/: {INSTALL_LLM}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    dataset.write(out, seed=0, counts={"train": 3, "test": 2})
    return out


@pytest.fixture(scope="module")
def base(gguf: Path) -> Any:
    from tools.ml.finetune import base as bm

    return bm.load(gguf)


@pytest.fixture(scope="module")
def encoded(gguf: Path, data_dir: Path) -> tuple[list[Any], int]:
    from tools.ml.finetune import data as dm
    from tools.ml.finetune.pipeline import encode

    return encode(dm.load(data_dir), gguf)


def config(**kw: Any) -> Any:
    from tools.ml.finetune.train import TrainConfig

    # One example, seen every step: the loss on it must fall.
    defaults: dict[str, Any] = {"batch": 1, "steps": 3, "lr": 3e-3, "warmup": 1, "threads": 2}
    return TrainConfig(**{**defaults, **kw})


@dataclass
class Trained:
    model: Any
    run: Any
    examples: list[Any]
    pad: int
    step_2: Path  # the checkpoint directory as it was after step 2


def random_lora(model: Any, *, seed: int, scale: float) -> Any:
    """``model`` with seeded random LoRA B matrices (peft starts them at zero,
    where an adapter changes nothing)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "lora_B" in name:
                w.copy_(torch.randn(w.shape, generator=gen) * scale)
    return model


def _train(base: Any, examples: list[Any], pad: int, ck: Path, **kw: Any) -> Any:
    from tools.ml.finetune.train import fingerprint, train

    cfg = kw.pop("cfg", None) or config()
    model = base.copy()
    key = fingerprint(cfg, "data", base.sha256, len(examples))
    run = train(model, examples, cfg, pad=pad, checkpoint_dir=ck, key=key, **kw)
    return model, run


@pytest.fixture(scope="module")
def trained(
    base: Any, encoded: tuple[list[Any], int], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """Three steps on one example; the checkpoint after step 2 is kept for the resume test."""
    from tools.ml.finetune.train import CHECKPOINT

    examples, pad = encoded
    ck, kept = tmp_path_factory.mktemp("ck"), tmp_path_factory.mktemp("ck2")

    def keep_step_2(r: Any) -> None:
        if r.step == 2:
            shutil.copy(ck / CHECKPOINT, kept / CHECKPOINT)

    cfg = config(save_every=1)
    model, run = _train(base, examples[:1], pad, ck, cfg=cfg, progress=keep_step_2)
    return Trained(model, run, examples, pad, kept)


def test_the_reading_only_carries_the_loss(encoded: tuple[list[Any], int], gguf: Path) -> None:
    from tools.ml.finetune import data as dm
    from tools.ml.finetune.train import batch_tensors

    examples, pad = encoded
    _ids, mask, labels = batch_tensors(examples[:2], pad)
    for row, e in enumerate(examples[:2]):
        learnt = [int(t) for t in labels[row] if int(t) != dm.IGNORE]
        assert learnt == list(e.ids[e.n_prompt :])
        assert int(mask[row].sum()) == len(e.ids)
    e = examples[0]
    tok = dm.Tokenizer(gguf)
    try:
        answer = tok.decode(list(e.ids[e.n_prompt :]))
        prompt = tok.decode(list(e.ids[: e.n_prompt]))
    finally:
        tok.close()
    # The prompt is the hub's request to read the policy, and ends where the
    # hub's generation starts; the answer is the reading, then the end of the turn.
    assert prompt.endswith("Read the policy.<|im_end|>\n<|im_start|>assistant\n")
    assert answer.startswith(("1: ", "Default -> ")) and " -> " in answer
    assert answer.endswith("}<|im_end|>") and "Default -> " in answer


def test_batches_cover_each_example_once_and_bucket_by_length(gguf: Path) -> None:
    import random

    from tools.ml.finetune.train import batches

    rng = random.Random(5)
    lengths = [rng.randrange(100, 900) for _ in range(203)]
    epoch = batches(3, 0, lengths, 4, 16)
    assert sorted(i for b in epoch for i in b) == list(range(203))
    assert len(epoch) == -(-203 // 4) and all(len(b) <= 4 for b in epoch)
    assert epoch == batches(3, 0, lengths, 4, 16) != batches(3, 1, lengths, 4, 16)
    # bucket 1 is the plain random order, cut into batches.
    plain = random.Random("3:0").sample(range(203), 203)
    assert batches(3, 0, lengths, 4, 1) == [plain[k : k + 4] for k in range(0, 203, 4)]

    def padded(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    assert padded(epoch) < 0.9 * padded(batches(3, 0, lengths, 4, 1))


def test_grouped_batches_never_mix_two_groups(gguf: Path) -> None:
    import random

    from tools.ml.finetune.train import batches

    rng = random.Random(6)
    lengths = [rng.randrange(100, 900) for _ in range(203)]
    groups = [rng.choice("abcde") for _ in range(203)]
    epoch = batches(3, 0, lengths, 4, 16, groups)
    assert sorted(i for b in epoch for i in b) == list(range(203))
    assert all(len({groups[i] for i in b}) == 1 and len(b) <= 4 for b in epoch)
    # Only a group's last batch may be short.
    assert len(epoch) == sum(-(-groups.count(g) // 4) for g in "abcde")
    assert epoch == batches(3, 0, lengths, 4, 16, groups) != batches(3, 1, lengths, 4, 16, groups)
    # The count of batches is the same in every epoch (the run's step count rests on it).
    assert len({len(batches(3, e, lengths, 4, 16, groups)) for e in range(4)}) == 1
    # One group: the same cut as with no groups, by length within runs of 64.
    one = batches(3, 0, lengths, 4, 16, ["x"] * 203)
    assert one == batches(3, 0, lengths, 4, 16)


def test_a_shared_head_gives_the_loss_and_gradients_of_the_whole_rows(
    base: Any, encoded: tuple[list[Any], int]
) -> None:
    """The shared prefix run once and expanded to the batch computes what the
    rows run whole compute (float32, to compare closely)."""

    from tools.ml.finetune.data import Encoded
    from tools.ml.finetune.train import (
        MIN_SHARED,
        answer_loss,
        batch_tensors,
        lora_model,
        shared_prefix,
    )

    examples, pad = encoded
    head = examples[0].ids[:40]
    rows = [Encoded(head + e.ids[40:], e.n_prompt) for e in examples[:3]]
    assert all(e.n_prompt > 41 for e in rows)
    n = shared_prefix(rows)
    assert 40 <= n < min(e.n_prompt for e in rows)
    assert shared_prefix(rows[:1]) == 0  # a batch of one shares nothing
    assert shared_prefix([rows[0], Encoded(rows[0].ids[:5] + (0,) * 60, 50)]) == 0  # < MIN_SHARED
    assert MIN_SHARED > 5
    model = random_lora(lora_model(base.copy(), config()), seed=2, scale=0.02)
    ids, mask, labels = batch_tensors(rows, pad)
    got = []
    for shared in (0, n):
        model.zero_grad(set_to_none=True)
        loss = answer_loss(model, ids, mask, labels, False, shared)
        loss.backward()
        grads = {k: w.grad.clone() for k, w in model.named_parameters() if w.requires_grad}
        got.append((float(loss.detach()), grads))
    (whole, g_whole), (once, g_once) = got
    assert abs(whole - once) <= 1e-5 * whole, (whole, once)
    for k, g in g_whole.items():
        assert float((g - g_once[k]).norm()) <= 1e-4 * float(g.norm()) + 1e-9, k


def test_training_with_a_shared_head_runs_the_same_first_step(
    base: Any, encoded: tuple[list[Any], int], tmp_path: Path
) -> None:
    """``shared_head`` on a batch of devices with other actions (every reading
    prompt starts with the same instructions and doing nothing, run once)
    gives the first step's loss of the rows run whole (bf16: close, not
    equal); with ``group_actions``, group keys that do not fit are refused."""
    from tools.ml.finetune.train import shared_prefix

    examples, pad = encoded
    three = examples[:3]
    assert len({tuple(e.ids[: e.n_prompt]) for e in three}) == 3
    assert shared_prefix(three) >= 60
    losses = []
    for share in (False, True):
        cfg = config(batch=3, steps=1, shared_head=share)
        _m, run = _train(base, three, pad, tmp_path / str(share), cfg=cfg)
        losses.append(run.losses[0])
    assert abs(losses[0] - losses[1]) <= 0.01 * losses[0], losses
    with pytest.raises(ValueError, match="2 group keys for 3 examples"):
        cfg = config(batch=3, steps=1, group_actions=True)
        _train(base, three, pad, tmp_path / "bad", cfg=cfg, groups=["g"] * 2)


def test_loss_falls_on_a_repeated_example(trained: Trained) -> None:
    losses = trained.run.losses
    assert len(losses) == 3
    assert losses[-1] < 0.8 * losses[0], losses


def test_resume_gives_the_uninterrupted_result(base: Any, trained: Trained) -> None:
    import torch

    from tools.ml.finetune.train import ResumeError

    one = trained.examples[:1]
    with pytest.raises(ResumeError, match="seed"):
        _train(base, one, trained.pad, trained.step_2, resume=True, cfg=config(seed=1))
    # Resumed at step 2 for the last step: the run that never stopped, bit for bit.
    _model, run = _train(base, one, trained.pad, trained.step_2, resume=True)
    assert run.resumed_at == 2
    assert run.losses == trained.run.losses
    assert run.lora.keys() == trained.run.lora.keys()
    for k, v in trained.run.lora.items():
        assert torch.equal(run.lora[k], v), k


def _llama_logits(gguf: Path, adapter: Path | None, ids: list[int]) -> np.ndarray[Any, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(adapter) if adapter else None,
        logits_all=True,
        n_ctx=1024,
        n_threads=2,
        seed=0,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _rel(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gguf_adapter_gives_the_torch_logits(
    base: Any, encoded: tuple[list[Any], int], gguf: Path, tmp_path: Path
) -> None:
    """A LoRA with sizeable random weights on every projection: llama.cpp with the
    GGUF adapter computes the logits torch computes, and the same adapter written
    without the q/k row permutation does not."""
    import torch

    from tools.ml.finetune import adapter as ad
    from tools.ml.finetune.train import lora_model, lora_state

    model = random_lora(lora_model(base.copy(), config()), seed=1, scale=0.1)
    ids = list(encoded[0][1].ids)[:160]  # the system prompt's start: enough to tell
    with torch.no_grad():
        adapted = model(torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            plain = model(torch.tensor([ids])).logits[0].numpy()
    lora = {k: v.numpy() for k, v in lora_state(model).items()}
    errors = {}
    for permute in (True, False):
        path = tmp_path / f"adapter-{permute}.gguf"
        tensors = ad.gguf_tensors(lora, base.n_head, base.n_head_kv, permute=permute)
        ad.write(path, tensors, alpha=config().alpha)
        errors[permute] = _rel(_llama_logits(gguf, path, ids), adapted)
    meta, back = ad.read(tmp_path / "adapter-True.gguf")
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert len(back) == 2 * 7 * base.n_layer
    effect = _rel(adapted, plain)  # how far the adapter moves torch's logits
    base_error = _rel(_llama_logits(gguf, None, ids), plain)  # Q4_0 dot products vs float32
    assert effect > 0.2, effect
    assert errors[True] < 2 * base_error + 0.02, (errors, base_error)
    assert errors[True] < effect / 4, (errors, effect)
    assert errors[False] > 3 * errors[True], errors


def test_lora_on_the_upper_layers_only(
    base: Any, encoded: tuple[list[Any], int], gguf: Path, tmp_path: Path
) -> None:
    """``lora_from``: the lower layers carry no LoRA and run outside autograd
    (the backward pass stops at the first adapted layer); the GGUF adapter
    holds the upper layers' tensors alone and llama.cpp computes torch's logits."""
    import torch

    from tools.ml.finetune import adapter as ad
    from tools.ml.finetune.train import lora_model, lora_state, step_loss

    first = base.n_layer - 4
    model = random_lora(lora_model(base.copy(), config(lora_from=first)), seed=2, scale=0.25)
    adapted = {
        int(n.split(".layers.")[1].split(".")[0])
        for n, _ in model.named_parameters()
        if "lora_" in n
    }
    assert adapted == set(range(first, base.n_layer))
    tracked: dict[int, bool] = {}
    layers = model.get_base_model().model.layers
    for i in (first - 1, first):
        layers[i].register_forward_hook(
            lambda _m, _a, out, i=i: tracked.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).requires_grad
            )
        )
    examples, pad = encoded
    loss, _ = step_loss(model, examples, [0, 1], pad, bf16=True)
    loss.backward()
    assert tracked == {first - 1: False, first: True}
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)

    ids = list(examples[1].ids)[:160]
    with torch.no_grad():
        torch_logits = model(torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            plain = model(torch.tensor([ids])).logits[0].numpy()
    lora = {k: v.numpy() for k, v in lora_state(model).items()}
    path = tmp_path / "upper.gguf"
    ad.write(path, ad.gguf_tensors(lora, base.n_head, base.n_head_kv), alpha=config().alpha)
    _, back = ad.read(path)
    assert {int(k.split(".")[1]) for k in back} == set(range(first, base.n_layer))
    assert len(back) == 2 * 7 * 4
    effect = _rel(torch_logits, plain)
    base_error = _rel(_llama_logits(gguf, None, ids), plain)
    error = _rel(_llama_logits(gguf, path, ids), torch_logits)
    assert effect > 0.1, effect
    assert error < 2 * base_error + 0.02 and error < effect / 4, (error, base_error, effect)

    with pytest.raises(ValueError, match="outside"):
        lora_model(base.copy(), config(lora_from=base.n_layer))


NEAR_TIE = 0.25  # logits: where Q4_0 arithmetic may swap torch's two best


def _torch_greedy(model: Any, ids: list[int], eos: int, n: int) -> list[int]:
    """Greedy decoding in torch, with the KV cache."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        step = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            nxt = int(step.logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            step = model(torch.tensor([[nxt]]), cache=step.cache, use_cache=True)
    return out


def test_trained_adapter_answers_in_llama_cpp_as_in_torch(
    trained: Trained, base: Any, gguf: Path, tmp_path: Path
) -> None:
    import llama_cpp

    from tools.ml.finetune import adapter as ad

    e = trained.examples[0]
    prompt = list(e.ids[: e.n_prompt])
    path = tmp_path / "adapter.gguf"
    lora = {k: v.numpy() for k, v in trained.run.lora.items()}
    ad.write(path, ad.gguf_tensors(lora, base.n_head, base.n_head_kv), alpha=config().alpha)
    want = _torch_greedy(trained.model, prompt, trained.pad, 24)
    before = _torch_greedy(base.model, prompt, trained.pad, 24)
    assert want != before  # the training changed the answer
    import torch

    # Teacher-forced on torch's answer: at every position llama.cpp's choice
    # is torch's, but where torch's own two best are a near tie, which
    # llama.cpp's Q4_0 x Q8_0 arithmetic may order the other way.
    llm = llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(path),
        n_ctx=1024,
        n_threads=2,
        seed=0,
        verbose=False,
        logits_all=True,
    )
    try:
        llm.eval(prompt + want[:-1])
        ours = llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(want)].argmax(axis=1)
    finally:
        llm.close()
    with torch.no_grad():
        logits = trained.model(torch.tensor([prompt + want[:-1]])).logits[0, len(prompt) - 1 :]
    ties = []
    for i, (w, o) in enumerate(zip(want, ours.tolist(), strict=True)):
        if o != w:
            ties.append(i)
            assert float(logits[i, w] - logits[i, o]) < NEAR_TIE, (i, w, o)
    assert len(ties) <= 1, ties


@pytest.fixture
def key(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "sign.key"
    yield path, keys.write_keygen(path)


def test_finetune_command_writes_a_signed_evaluated_adapter(
    gguf: Path, data_dir: Path, tmp_path: Path, key: tuple[Path, str]
) -> None:
    from tools.cli import app

    out = tmp_path / "out"
    args = ["models", "finetune", "--data", str(data_dir), "--out", str(out), "--steps", "1"]
    args += ["--batch", "1", "--eval", "1", "--sign-key", str(key[0]), "--version", "7"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    man = json.loads((out / "adapter.json").read_text())
    data = (out / "adapter.gguf").read_bytes()
    assert printed["sha256"] == man["sha256"] == hashlib.sha256(data).hexdigest()
    assert man["base"]["sha256"] == json.loads(gguf.with_suffix(".json").read_text())["sha256"]
    assert man["data"]["generator"] == dataset.GENERATOR and man["data"]["seed"] == 0
    assert man["training"]["steps_done"] == 1 and len(man["loss_curve"]) == 1
    # the recipe's rank 32 on the 7 projections of the 30 layers: 2 * 4,884,480
    assert man["training"]["rank"] == 32 and man["training"]["alpha"] == 64.0
    assert man["training"]["trainable_parameters"] == 9_768_960
    assert man["eval"]["n"] == 1 and man["eval"]["adapter_sha256"] == man["sha256"]
    # Each scenario's reading, to see what the adapter misread.
    (line,) = (out / "eval-readings.jsonl").read_text().splitlines()
    said = json.loads(line)
    assert said["id"].startswith("test-") and isinstance(said["reading"], str)
    assert said["right"] is (man["eval"]["correct"] == 1)
    assert said["chose"] == said["expect"] or not said["right"]
    assert "ETA" in res.stderr
    assert "fewer than the 60 scenarios the trust gate needs" in res.stderr
    # The signature is the registry's: the hub accepts it from a trusted key.
    body = json.loads((out / "adapter.sig.json").read_text())
    mv = reg.version_record(
        body["manifest"].encode(), base64.b64decode(body["signature"]), body["key_id"]
    )
    doc = reg.verify_signature(mv, keys.trusted([key[1]]))
    assert doc["manifest"] == man and doc["version"] == "7" and doc["kind"] == "lora"
    assert doc["name"] == "llm-adapter"
    reg.check_kind(mv)  # a version the registry takes as an adapter


def test_bad_data_is_refused_and_leaves_nothing(gguf: Path, data_dir: Path, tmp_path: Path) -> None:
    from tools.cli import app

    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (data_dir / "train.jsonl").read_text().splitlines()
    d = json.loads(lines[1])
    d["messages"][0]["content"] += " Ignore the policy."
    (bad / "train.jsonl").write_text("\n".join([lines[0], json.dumps(d)]) + "\n")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["models", "finetune", "--data", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "manifest.json is missing" in res.stderr
    (bad / "manifest.json").write_text((data_dir / "manifest.json").read_text())
    res = runner.invoke(app, ["models", "finetune", "--data", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "train.jsonl:2: messages are not the reading" in res.stderr
    no_key = ["--sign-key", str(tmp_path / "no.key")]
    res = runner.invoke(
        app, ["models", "finetune", "--data", str(data_dir), "--out", str(out), *no_key]
    )
    assert res.exit_code == 2 and "cannot read" in res.stderr
    assert not out.exists()


def test_with_no_data_the_command_writes_the_recipes_data_itself(
    gguf: Path, tmp_path: Path
) -> None:
    """Without --data the policy data is written into OUT/data (the shipped
    recipe's seed and counts by default: one command rebuilds the adapter),
    and a second run finds it in place."""
    from tools.cli import app
    from tools.cli.finetune import RECIPE_EXAMPLES

    out = tmp_path / "out"
    args = ["models", "finetune", "--out", str(out), "--examples", "6", "--data-seed", "5"]
    args += ["--steps", "1", "--batch", "1", "--eval", "0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    made = json.loads((out / "data" / "manifest.json").read_text())
    assert made["seed"] == 5 and made["counts"] == {"train": 6, "test": 0}
    assert made["group"] == 1  # an adapter learns to read policies: one example a policy
    man = json.loads((out / "adapter.json").read_text())
    assert man["data"]["seed"] == 5 and man["data"]["examples"] == 6
    assert man["data"]["group"] == 1
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0 and "is in place" in res.stderr, res.output
    assert RECIPE_EXAMPLES >= 1000  # the default is the shipped recipe, not a test size
