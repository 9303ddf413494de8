"""``aiot eval ...``: measure models before they are trusted.

    aiot eval decisions [--model NAME_OR_PATH] [--scenarios FILE] [--json] [--limit N]

``register(app)`` adds the ``eval`` group to the ``aiot`` application.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hub.decide.llm import DEFAULT_MODEL, MODELS_DIR, ModelError, resolve_model
from tools.ml.eval_decisions import (
    DEFAULT_EVAL_DEADLINE_MS,
    DEFAULT_SCENARIOS,
    ScenarioError,
    evaluate,
    load_scenarios,
)

eval_app = typer.Typer(
    help="Evaluate models on scenario sets (the numbers the trust gate reads).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"aiot: {message}", err=True)
    return typer.Exit(code)


@eval_app.command("decisions")
def decisions(
    model: Annotated[
        str,
        typer.Option(help="A GGUF path, or a model name or file name in --models-dir."),
    ] = DEFAULT_MODEL,
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
) -> None:
    """Run the LLM on every scenario: accuracy, invalid_rate, latency_ms_p50/p95, n."""
    try:
        path = resolve_model(model, models_dir)
        cases = load_scenarios(scenarios)
    except (ModelError, ScenarioError) as exc:
        raise _fail(str(exc)) from None
    if limit is not None:
        cases = cases[:limit]
    typer.echo(f"evaluating {path.name} on {len(cases)} scenarios from {scenarios}", err=True)
    try:
        result = evaluate(
            path,
            cases,
            threads=threads,
            deadline_ms=deadline_ms,
            progress=lambda line: typer.echo(line, err=True),
        )
    except ModelError as exc:
        raise _fail(str(exc), 1) from None
    if json_out:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>24}  {json.dumps(value) if isinstance(value, dict) else value}")
