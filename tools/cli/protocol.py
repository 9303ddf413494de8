"""`aiot protocol`: decode one message of the wire format (protocol/), and the
walkthrough of a signed batch from a MicroPython device through Mosquitto
(tools/demo/walkthrough.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from protocol import messages as m
from protocol import wire
from protocol.errors import CodecError
from tools.cli.output import fail, group, reported
from tools.demo.walkthrough import run

protocol_app = group("protocol", "Wire protocol tools.")


@protocol_app.command("decode")
def protocol_decode(
    path: Annotated[Path, typer.Argument(help="File with a frame or envelope; - for stdin.")],
    key: Annotated[
        str | None,
        typer.Option(help="Device key (hex): the input is a frame with an HMAC trailer."),
    ] = None,
    hex_input: Annotated[bool, typer.Option("--hex", help="The input is hex text.")] = False,
) -> None:
    """Verify and decode one message; print it as JSON."""
    raw = sys.stdin.buffer.read() if str(path) == "-" else _read(path)
    if hex_input:
        try:
            raw = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise fail("--hex input is not hex text") from None
    key_bytes = None
    if key is not None:
        try:
            key_bytes = bytes.fromhex(key)
        except ValueError:
            raise fail("--key must be hex") from None
    try:
        msg = wire.decode(raw) if key_bytes is None else wire.decode_frame(raw, key_bytes)
    except CodecError as exc:
        raise fail(f"not a valid aiot v1 message: {exc}", 1) from None
    typer.echo(json.dumps(m.to_dict(msg), indent=2))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None


@protocol_app.command("walkthrough")
def protocol_walkthrough(
    device_seconds: Annotated[
        float, typer.Option(min=0, help="Seconds of part 2, the device firmware (0: skip it).")
    ] = 12.0,
) -> None:
    """A signed batch from MicroPython through Mosquitto and back; then the device firmware."""
    with reported():
        summary = run(lambda line: typer.echo(line), device_seconds)
    typer.echo(json.dumps(summary))
    if not summary["ok"]:
        raise typer.Exit(1)
