"""`aiot user`: API users and their roles (replicated), through a hub node's API;
`aiot user invite` prints a one-time link with which a new user sets their password."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import group, nothing, say
from tools.cli.remote import on_hub, utc_ms

user_app = group("user", "API users and their roles (replicated).")


@user_app.command("add")
@on_hub
def user_add(
    client: HubClient,
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device a viewer may see (repeat).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Create or update a user (a new user needs a password)."""
    body: dict[str, Any] = {"role": role, "devices": device or []}
    if password_stdin:
        body["password"] = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        body["password"] = getpass.getpass(f"password for {name}: ")
    out = client.request("PUT", f"/v1/users/{name}", json=body)
    typer.echo(
        f"{out['name']}: {out['role']}"
        + (f" ({', '.join(out['devices'])})" if out["devices"] else "")
    )


@user_app.command("list")
@on_hub
def user_list(client: HubClient) -> None:
    """Every user with role and assigned devices."""
    users = client.get("/v1/users")
    if not users:
        nothing("users")
    for u in users:
        typer.echo(f"{u['name']:<24} {u['role']:<9} {', '.join(u['devices']) or '-'}")


@user_app.command("remove")
@on_hub
def user_remove(client: HubClient, name: str) -> None:
    """Remove a user; their tokens stop working."""
    client.delete(f"/v1/users/{name}")
    typer.echo(f"removed {name}")


def _duration_s(text: str) -> int:
    """``90m``, ``24h``, ``7d`` or seconds, as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        return int(float(number) * unit)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: want seconds or 90m, 24h, 7d") from None


@user_app.command("invite")
@on_hub
def user_invite(
    client: HubClient,
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device a viewer may see (repeat).")
    ] = None,
    ttl: Annotated[str, typer.Option(help="How long the link works: 90m, 24h, 7d.")] = "72h",
) -> None:
    """A one-time link with which NAME sets their own password (it expires)."""
    body = {"name": name, "role": role, "devices": device or [], "ttl_s": _duration_s(ttl)}
    out = client.post("/v1/invites", body)
    typer.echo(out["link"])
    say(f"{out['name']} ({out['role']}): the link works once, until {utc_ms(out['expires_ms'])}")
