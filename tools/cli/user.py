"""`aiot user`: API users and their roles (replicated), through a hub node's API."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import group, nothing
from tools.cli.remote import on_hub

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
