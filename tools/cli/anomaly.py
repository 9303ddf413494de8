"""`aiot models train-anomaly` and `aiot eval anomaly`.

``register_models(models_app)`` adds ``train-anomaly`` to the ``aiot models``
group and ``register_eval(eval_app)`` adds ``anomaly`` to ``aiot eval``.
tools/ml/anomaly_train.py does the work; docs/anomaly.md describes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hub.decide import anomaly as an
from tools.cli.output import emit, reported, say
from tools.ml import anomaly_train as at


def train_anomaly(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the model and its manifest [models/anomaly]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the training data and the fit.")] = 7,
    hours: Annotated[
        float, typer.Option(min=0.1, help="Hours of simulated plug data to train on.")
    ] = 48.0,
    version: Annotated[str, typer.Option(help="Version written into the manifest.")] = "1",
) -> None:
    """Train the anomaly model on simulator data, export it to ONNX, write its manifest."""
    target = out if out is not None else an.default_manifest_path().parent
    with reported(2, an.AnomalyError):
        result = at.train(target, seed, hours, version=version, log=say)
    man = result.manifest
    held = man["metrics"]["heldout"]
    typer.echo(f"model     {result.model_path} ({man['size']} bytes)")
    typer.echo(f"manifest  {result.manifest_path}")
    typer.echo(f"sha256    {man['sha256']}")
    typer.echo(f"threshold {man['threshold']}")
    typer.echo(
        f"held-out  precision {held['precision']}  recall {held['recall']}  f1 {held['f1']}"
        f"  (seed {held['data']['seed']}, {held['n']} windows)"
    )


def eval_anomaly(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="The model's manifest or .onnx [models/anomaly/anomaly.json]."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the held-out data (not the training seeds).")
    ] = 9001,
    hours: Annotated[float, typer.Option(min=0.1, help="Hours of simulated plug data.")] = 24.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Precision, recall and F1 of the anomaly model on held-out simulator data."""
    path = model if model is not None else an.default_manifest_path()
    with reported(2, an.AnomalyError):
        result: dict[str, Any] = at.evaluate(path, seed, hours)
    emit(result, json_out, width=20)


def register_models(models_app: typer.Typer) -> None:
    """Add ``train-anomaly`` to the ``aiot models`` group."""
    models_app.command("train-anomaly")(train_anomaly)


def register_eval(eval_app: typer.Typer) -> None:
    """Add ``anomaly`` to the ``aiot eval`` group."""
    eval_app.command("anomaly")(eval_anomaly)
