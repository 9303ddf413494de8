"""`aiot demo`: a local hub cluster, simulated smart plugs and the energy
scenario (tools/demo/energy.py), all real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tools.cli.output import reported
from tools.demo.energy import run_demo


def demo(
    hubs: Annotated[int, typer.Option(min=1, max=7, help="Hub nodes.")] = 3,
    devices: Annotated[int, typer.Option(min=1, max=50, help="Simulated smart plugs.")] = 6,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="End with a JSON summary line.")] = False,
    fresh: Annotated[bool, typer.Option(help="Start with empty data.")] = False,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its state.")
    ] = Path(".aiot-demo"),
) -> None:
    """A hub cluster, simulated smart plugs and the energy scenario, all real processes."""
    with reported(1):
        summary = run_demo(
            directory, hubs, devices, duration, fresh, lambda line: typer.echo(line, err=json_out)
        )
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        for k, v in summary.items():
            typer.echo(f"{k:>26}  {json.dumps(v)}")
    if summary["errors"]:
        raise typer.Exit(1)
