"""`aiot inbox` and `aiot reply`: the admins' side of the conversations.

`aiot inbox` lists the threads waiting for a person (``GET /v1/inbox``,
hub/http/routes/threads.py): each user with their unread count and last
message; `--all` every thread, `--user NAME` one whole thread. `aiot reply
USER TEXT` answers a user privately (they see it live); `--resolve` hands the
thread back to the bot afterwards.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import nothing, print_json
from tools.cli.remote import JsonOpt, on_hub, utc_ms


def _line(m: dict[str, Any]) -> str:
    who = m["by"] if m["author"] == "admin" else m["author"]
    flag = " (to a person)" if m["escalate"] else ""
    return f"  {m['seq']:>4} {utc_ms(m['at_ms'])} {who}{flag}: {m['text']}"


@on_hub
def inbox(
    client: HubClient,
    every: Annotated[
        bool, typer.Option("--all", help="Every thread, not only the waiting.")
    ] = False,
    user: Annotated[str | None, typer.Option(help="Show this user's whole thread.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The threads waiting for a person, with their unread counts."""
    if user is not None:
        out = client.get(f"/v1/threads/{user}")
        if json_out:
            print_json(out)
            return
        typer.echo(f"{out['user']}: {out['state']}, {out['admin_unread']} unread")
        for m in out["messages"]:
            typer.echo(_line(m))
        return
    out = client.get("/v1/inbox", all="true" if every else "false")
    if json_out:
        print_json(out)
        return
    if not out["threads"]:
        nothing("threads waiting for a person" if not every else "threads")
        return
    typer.echo(f"{out['unread']} unread")
    for t in out["threads"]:
        last = t["last"]
        text = "" if last is None else last["text"].replace("\n", " ")[:60]
        typer.echo(f"{t['user']:<24} {t['state']:<7} {t['admin_unread']:>4} unread  {text}")


@on_hub
def reply(
    client: HubClient,
    user: str,
    text: str,
    resolve: Annotated[
        bool, typer.Option("--resolve", help="Then hand the thread back to the bot.")
    ] = False,
) -> None:
    """Answer USER privately in their thread."""
    out = client.post(f"/v1/threads/{user}/messages", {"text": text})
    for m in out["messages"]:
        typer.echo(_line(m))
    if resolve:
        client.post(f"/v1/threads/{user}/resolve", {})
        typer.echo(f"{user}: back to the bot")
