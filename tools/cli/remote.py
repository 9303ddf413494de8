"""What the commands that talk to a hub node share: the options naming the
node, and a session with it (tools/base/hubclient.py).

Most such commands take the node's client as their first parameter and let
`on_hub` add the options and open the session:

    @device_app.command("remove")
    @on_hub
    def device_remove(client: HubClient, device_id: str) -> None:
        client.delete(f"/v1/devices/{device_id}")

A node that cannot be named (no --config, no --hub and --token, a bad config
file) ends the command with exit status 2; a request the hub refuses, or a
hub that does not answer, with 1.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import reported

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A hub node's config file (or AIOT_CONFIG)."),
]
HubOpt = Annotated[str | None, typer.Option("--hub", help="A hub's HTTP URL (or AIOT_HUB).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Admin token (or AIOT_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

_HUB_OPTIONS = (("config", ConfigOpt), ("hub", HubOpt), ("token", TokenOpt))


@contextlib.contextmanager
def session(config: Path | None, hub: str | None, token: str | None) -> Iterator[HubClient]:
    """The client for the node the options name; a ToolError inside (a
    HubError from a request) ends the command with exit status 1."""
    with reported(2):
        client = HubClient.from_options(config, hub, token)
    with client, reported(1):
        yield client


def on_hub(command: Callable[..., None]) -> Callable[..., None]:
    """``command(client, ...)`` as a command with the options --config, --hub
    and --token after its own (before a last --json); it runs in a `session`
    with the node they name."""
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    at = len(own) - (1 if own and own[-1].name == "json_out" else 0)
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        for name, option in _HUB_OPTIONS
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + added + own[at:]]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        config, hub, token = (options.pop(name) for name, _ in _HUB_OPTIONS)
        with session(config, hub, token) as client:
            command(client, **options)

    run.__annotations__ = {}  # the options are in the signature, evaluated
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return run


def utc_ms(ms: int | None) -> str:
    """Milliseconds since the epoch as a UTC time to the millisecond; "-" for none."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
