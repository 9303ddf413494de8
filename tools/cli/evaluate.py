"""`aiot eval`: measure models before they are trusted.

    aiot eval decisions [--model default|llm-adapter|NAME_OR_PATH] [--scenarios FILE]
                        [--json] [--limit N] [--adapter GGUF]
                        (with an adapter: the base, then base + adapter, side by side)
    aiot eval anomaly [--model MANIFEST] [--seed N] [--json]    (tools/cli/anomaly.py)

``register(app)`` adds the ``eval`` group to an application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hub.decide.llm import MODELS_DIR, ModelError
from tools.cli import anomaly
from tools.cli.output import emit, group, reported, say
from tools.ml.eval_decisions import (
    DEFAULT,
    DEFAULT_EVAL_DEADLINE_MS,
    DEFAULT_SCENARIOS,
    ScenarioError,
    evaluate,
    load_scenarios,
    resolve,
    side_by_side,
)

eval_app = group("eval", "Measure models before they are trusted.")


def register(app: typer.Typer) -> None:
    """Add the `eval` group to ``app``."""
    app.add_typer(eval_app)


def decisions(
    model: Annotated[
        str,
        typer.Option(
            help="default: what the hub runs by default (the shipped adapter on its base, "
            "side by side with the base; else the default model); llm-adapter: the shipped "
            "adapter; or a GGUF path, model name or file name in --models-dir (that model alone)."
        ),
    ] = DEFAULT,
    scenarios: Annotated[
        Path, typer.Option(help="Scenario file (JSON Lines, format in models/eval/README.md).")
    ] = DEFAULT_SCENARIOS,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Run only the first N scenarios.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads.")] = 1,
    deadline_ms: Annotated[
        float,
        typer.Option(min=1, help="Deadline per decision; a miss counts as wrong."),
    ] = DEFAULT_EVAL_DEADLINE_MS,
    models_dir: Annotated[Path, typer.Option(help="Where model names are looked up.")] = MODELS_DIR,
    adapter: Annotated[
        Path | None,
        typer.Option(
            help="A GGUF LoRA adapter (aiot models finetune): the base alone, then with it, "
            "side by side."
        ),
    ] = None,
) -> None:
    """Run the LLM on every scenario: accuracy, invalid_rate, latency_ms_p50/p95, n;
    by category and, for generated lines, by policy shape. With an adapter (the
    shipped one by default, or --adapter), the base model and the adapter on the
    same scenarios, side by side."""
    with reported(2, ModelError, ScenarioError):
        path, shipped = resolve(model, models_dir)
        cases = load_scenarios(scenarios)
        if adapter is not None and not adapter.is_file():
            raise ModelError(f"--adapter {adapter}: no such file")
        adapter = adapter or shipped
    if limit is not None:
        cases = cases[:limit]
    say(f"evaluating {path.name} on {len(cases)} scenarios from {scenarios}")
    with reported(1, ModelError):
        result = evaluate(path, cases, threads=threads, deadline_ms=deadline_ms, progress=say)
        if adapter is not None:
            say(f"evaluating {path.name} with the adapter {adapter.name}")
            tuned = evaluate(
                path, cases, threads=threads, deadline_ms=deadline_ms, progress=say, adapter=adapter
            )
            result = side_by_side(result, tuned)
    emit(result, json_out, width=24)


anomaly.register_eval(eval_app)
eval_app.command("decisions")(decisions)
