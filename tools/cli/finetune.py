"""`aiot models finetune`: LoRA on the LLM tier's model from policy-following data,
written as a llama.cpp GGUF adapter with its manifest and signature (tools/ml/finetune).

The training stack (torch, transformers, peft, gguf: the ``finetune`` extra) is
imported inside the command, so the rest of the CLI stays light without it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hub.decide import facts as hf
from hub.decide import registry as reg
from hub.decide.llm import DEFAULT_MODEL, MIN_EVAL_SCENARIOS, MODELS_DIR, ModelError, resolve_model
from tools.cli.output import fail, say
from tools.ml.policy import dataset

EXTRA_HINT = "pip install -e '.[finetune]' (torch==2.13.0, transformers, peft, gguf)"


def _missing() -> list[str]:
    return [
        m
        for m in ("torch", "transformers", "peft", "gguf", "llama_cpp")
        if importlib.util.find_spec(m) is None
    ]


class _Bar:
    """A progress line with the loss, tokens/s and the time left, on stderr."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, r: Any) -> None:
        now = time.monotonic()
        if r.step != r.total and now - self.last < 2.0:
            return
        self.last = now
        width = 24
        done = width * r.step // max(1, r.total)
        eta = time.strftime("%H:%M:%S", time.gmtime(r.eta_s))
        say(
            f"[{'#' * done}{'.' * (width - done)}] {r.step}/{r.total} loss {r.loss:.4f} "
            f"{r.tokens_per_s:.0f} tok/s ETA {eta}"
        )


# The recipe of the shipped adapter (models/llm-adapter/llm-adapter.json records
# it too): the defaults of the command, so that with no options it rebuilds it.
RECIPE_EXAMPLES = 1600
RECIPE_LR = 8e-4
RECIPE_RANK = 32  # alpha twice the rank (docs/llm.md, run 21)
RECIPE_TEST = 300


def _data_for(out: Path, seed: int, train: int, test: int) -> Path:
    """OUT/data: the policy data of ``seed`` with ``train`` and ``test`` examples,
    one a policy (an adapter learns to read policies), written unless a
    previous run left exactly that there."""
    d = out / "data"
    want = {
        "generator": dataset.GENERATOR,
        "prompt_version": hf.ADAPTER_PROMPT_VERSION,
        "seed": seed,
        "counts": {"train": train, "test": test},
        "group": 1,
    }
    try:
        have = json.loads((d / "manifest.json").read_text())
        if all(have.get(k) == v for k, v in want.items()):
            say(f"policy data in {d} (seed {seed}, {train} train, {test} test) is in place")
            return d
    except (OSError, ValueError):
        pass
    say(f"writing policy data into {d}: seed {seed}, {train} train, {test} test examples")
    dataset.write(d, seed=seed, counts={"train": train, "test": test}, group=1, progress=say)
    return d


def _shipped_accuracy() -> float | None:
    try:
        found = reg.shipped_adapter(MODELS_DIR)
    except reg.ModelRefused:
        return None
    if found is None or not found[0].report:
        return None
    return float(found[0].report["accuracy"])


def models_finetune(
    out: Annotated[Path, typer.Option(help="Directory for the adapter, manifest, checkpoint.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The policy-data directory (train.jsonl, test.jsonl, manifest); default: "
            "write it into OUT/data with --data-seed, --examples and --eval."
        ),
    ] = None,
    data_seed: Annotated[
        int, typer.Option(help="The policy data's seed when the command writes it.")
    ] = 0,
    base: Annotated[
        Path | None, typer.Option(help="The base GGUF (default: the shipped model).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training examples.")] = 1,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Steps in all (instead of --epochs).")
    ] = None,
    examples: Annotated[
        int, typer.Option(min=1, help="Train on the first N examples.")
    ] = RECIPE_EXAMPLES,
    batch: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    bucket: Annotated[
        int,
        typer.Option(min=1, help="Batches cut from one run sorted by length (1: random batches)."),
    ] = 16,
    shared_head: Annotated[
        bool,
        typer.Option(
            help="Run the prompt head a batch's examples share once a batch (the same loss "
            "and gradients, less work: docs/llm.md, 'The shared head')."
        ),
    ] = True,
    group_actions: Annotated[
        bool,
        typer.Option(
            help="Batch one device's actions together: a longer shared head, but it scored "
            "lower (not the recipe)."
        ),
    ] = False,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = RECIPE_LR,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank (alpha twice it).")] = RECIPE_RANK,
    lora_from: Annotated[
        int,
        typer.Option(
            min=0,
            help="LoRA on the layers from this one up (0: all); the backward pass stops there.",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Same seed, data and threads: same adapter.")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch and llama.cpp.")] = 2,
    eval_n: Annotated[
        int,
        typer.Option(
            "--eval",
            min=0,
            help="Held-out scenarios to score (0: none; the trust gate needs 60 or more).",
        ),
    ] = 300,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 50,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoint if it is there.")
    ] = False,
    sign_key: Annotated[
        Path | None, typer.Option(help="Ed25519 private key (aiot models keygen) to sign with.")
    ] = None,
    name: Annotated[
        str, typer.Option(help="The adapter's name in the registry (default: llm-adapter).")
    ] = "",
    version: Annotated[str, typer.Option(help="Its version (default: a UTC timestamp).")] = "",
) -> None:
    """Fine-tune the LLM tier's model with LoRA on policy-data and write a GGUF adapter
    (docs/llm.md, "Fine-tuning")."""
    missing = _missing()
    if missing:
        raise fail(f"{', '.join(missing)} missing: {EXTRA_HINT}")
    from tools.ml.finetune import pipeline  # lazy: the finetune extra (torch)
    from tools.ml.finetune.data import DataError  # lazy: the finetune extra
    from tools.ml.finetune.train import ResumeError, TrainConfig  # lazy: the finetune extra

    try:
        base_path = base or resolve_model(DEFAULT_MODEL)
    except ModelError as exc:
        raise fail(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise fail(f"{out} exists and is not a directory")
    if data is None:
        test = max(eval_n, RECIPE_TEST) if eval_n else 0
        data = _data_for(out, data_seed, examples, test)
    elif not data.is_dir():
        raise fail(f"{data} is not a directory: write it with aiot models policy-data --out {data}")
    cfg = TrainConfig(
        seed=seed,
        epochs=epochs,
        steps=steps,
        batch=batch,
        bucket=bucket,
        shared_head=shared_head,
        group_actions=group_actions,
        lr=lr,
        rank=rank,
        alpha=2.0 * rank,
        lora_from=lora_from,
        threads=threads,
        save_every=save_every,
    )
    if 0 < eval_n < MIN_EVAL_SCENARIOS:
        say(
            f"warning: --eval {eval_n} scores fewer than the {MIN_EVAL_SCENARIOS} scenarios the "
            "trust gate needs: the adapter's report will keep the LLM tier advisory"
        )
    job = pipeline.Job(data, out, base_path, cfg, examples, eval_n, resume, sign_key, name, version)
    try:
        man = pipeline.run(job, say=say, progress=_Bar())
    except (DataError, ResumeError, ValueError) as exc:
        raise fail(str(exc)) from None
    _report(man, out / pipeline.ADAPTER)


def _report(man: dict[str, Any], adapter: Path) -> None:
    """The run's figures on stderr, then its JSON line on stdout."""
    t = man["training"]
    loss = man["loss_curve"]
    say(
        f"{t['steps_done']} steps, {t['tokens_per_s']} tok/s, {t['seconds']} s; "
        f"loss {loss[0]:.4f} -> {loss[-1]:.4f}"
    )
    result: dict[str, Any] = {"adapter": str(adapter), "sha256": man["sha256"]}
    if man["eval"]:
        e = man["eval"]
        say(f"eval: accuracy {e['accuracy']} on {e['n']} (majority {e['majority_baseline']})")
        result["accuracy"] = e["accuracy"]
        shipped = _shipped_accuracy()
        if shipped is not None:
            result["shipped_accuracy"] = shipped
            result["accuracy_minus_shipped"] = round(e["accuracy"] - shipped, 4)
            say(f"the shipped adapter's report: accuracy {shipped}")
    typer.echo(json.dumps(result))


def register_models(models_app: typer.Typer) -> None:
    """Add ``finetune`` to the ``aiot models`` group."""
    models_app.command("finetune")(models_finetune)
