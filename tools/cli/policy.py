"""`aiot policy`: the LLM tier's policies in words per device class
(replicated), through a hub node's API (docs/llm.md "Operator policies").

    aiot policy list                               the default and each class's policy
    aiot policy set heater --text "Never switch a heater off before 09:00."
    aiot policy set plug --file plug-policy.txt    the words from a UTF-8 file
    aiot policy unset heater                       back to the config's policy
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail, group, nothing
from tools.cli.remote import JsonOpt, on_hub, utc_ms

policy_app = group("policy", "The LLM tier's policies in words per device class (replicated).")

ClassArg = Annotated[
    str,
    typer.Argument(
        metavar="CLASS", help='A device class: a device id up to its first "-" (plug for plug-7).'
    ),
]


def _path(device_class: str) -> str:
    # "." and ".." would be taken for path steps: dots go percent-encoded.
    return "/v1/policies/" + device_class.replace(".", "%2E")


def _origin(p: dict[str, Any]) -> str:
    if p["source"] == "api":
        return f"set by {p['by']} at {utc_ms(p['at_ms'])}"
    return {"config": "from the config", "default": "[decisions] policy"}[p["source"]]


def _show(name: str, p: dict[str, Any]) -> None:
    typer.echo(f"{name} ({_origin(p)}):")
    for line in p["policy"].splitlines() or [""]:
        typer.echo(f"  {line}")


@policy_app.command("list")
@on_hub
def policy_list(client: HubClient, json_out: JsonOpt = False) -> None:
    """The default policy and each class's, with where each comes from."""
    out = client.get("/v1/policies")
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    _show("default", out["default"])
    if not out["classes"]:
        nothing("class with a policy of its own")
    for name, p in out["classes"].items():
        _show(name, p)


def _words(text: str | None, file: Path | None) -> str:
    if (text is None) == (file is None):
        raise fail("give the policy with --text or --file (one of them)")
    if file is None:
        assert text is not None
        return text
    try:
        return file.read_bytes().decode("utf-8").replace("\r\n", "\n").strip("\n")
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise fail(f"{file} is not UTF-8 text") from None


@policy_app.command("set")
@on_hub
def policy_set(
    client: HubClient,
    device_class: ClassArg,
    text: Annotated[str | None, typer.Option("--text", help="The policy in words.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A UTF-8 file holding the policy in words.")
    ] = None,
) -> None:
    """Set a device class's policy on every hub (at most 4000 characters)."""
    words = _words(text, file)
    out = client.request("PUT", _path(device_class), json={"policy": words})
    typer.echo(f"{device_class}: set" if out["changed"] else f"{device_class}: unchanged")


@policy_app.command("unset")
@on_hub
def policy_unset(client: HubClient, device_class: ClassArg) -> None:
    """A device class back to the config's policy."""
    out = client.delete(_path(device_class))
    if not out["changed"]:
        typer.echo(f"{device_class}: had no policy set through the API")
    _show(device_class, out)
