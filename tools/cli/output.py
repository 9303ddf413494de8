"""How every `aiot` command reports: results on stdout, progress and errors on stderr.

An error is one line, ``aiot: <message>``, and an exit status, never a traceback:

    raise fail("--key must be hex")      # exit status 2
    with reported(1):                     # a ToolError raised inside (HubError,
        report = flash(port, out)         # FlashError, ...) ends the command the same way

A list that comes back empty says so, ``no decisions`` (`nothing`), on
stderr: stdout, the result, stays empty for a script, and a person sees
that the command ran. A command printing JSON prints ``[]`` and no more.

Exit statuses: 0 when it worked; 1 when the command ran and failed (the hub
refused, the board did not answer, a check found a violation); 2 when it could
not run as asked (a bad argument or file, no hub named, a program missing).
Each command keeps the status it has always given for each error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import typer

from tools.base.errors import ToolError


def group(name: str, help: str) -> typer.Typer:
    """A command group: ``aiot NAME`` alone prints its help."""
    return typer.Typer(name=name, help=help, no_args_is_help=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``aiot: message`` on stderr; the exit to raise."""
    typer.echo(f"aiot: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def reported(code: int = 2, *errors: type[Exception]) -> Iterator[None]:
    """A ToolError (or one of ``errors``) raised inside ends the command:
    its message as one line on stderr, exit status ``code``."""
    caught: tuple[type[Exception], ...] = (ToolError, *errors)
    try:
        yield
    except caught as exc:
        raise fail(str(exc), code) from None


def say(line: str) -> None:
    """A progress line, on stderr so that stdout stays the result."""
    typer.echo(line, err=True)


def nothing(what: str) -> None:
    """Say that a list is empty: ``nothing("alerts for plug-1")`` prints
    ``no alerts for plug-1`` on stderr."""
    say(f"no {what}")


def progress(quiet: bool) -> Callable[[str], None]:
    """`say`, or nothing when ``quiet`` (a command printing only JSON)."""

    def maybe_say(line: str) -> None:
        if not quiet:
            say(line)

    return maybe_say


def print_fields(fields: Mapping[str, Any], width: int) -> None:
    """One line per key, right-aligned to ``width``; a dict value as JSON."""
    for key, value in fields.items():
        typer.echo(f"{key:>{width}}  {json.dumps(value) if isinstance(value, dict) else value}")


def emit(result: Mapping[str, Any], json_out: bool, width: int = 32) -> None:
    """A result: one JSON line, or `print_fields`."""
    if json_out:
        typer.echo(json.dumps(result))
    else:
        print_fields(result, width)


def print_json(obj: Any) -> None:
    """A record from the hub, indented."""
    typer.echo(json.dumps(obj, indent=2))
