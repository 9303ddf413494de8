"""`aiot token`: cluster admin tokens (hub/core/auth.py) to hand to a person or
a script, and their revocation (replicated: hub/http/routes/tokens.py).

    aiot token create -c hub.toml [--ttl 8h] [--json]   mint one (needs the cluster secret)
    aiot token revoke ID                                 revoke one by its id
    aiot token revoke --all-before now                   revoke every token issued before
    aiot token revoked [--json]                          what is revoked

`create` mints locally from a node's config: it needs the cluster secret,
never a hub, and is refused a lifetime over the config's
``http.admin_token_max_ttl_s`` (the nodes would refuse such a token).
`aiot` commands given a config mint their own short-lived tokens, so they
never need one of these. `revoke --all-before now` takes this machine's
clock: tokens minted here afterwards work, and so do the nodes' own.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import typer

from hub.core import auth
from hub.core import config as hub_config
from hub.core.clock import wall_ms
from tools.base.hubclient import HubClient
from tools.cli.output import emit, fail, group, nothing, print_json
from tools.cli.remote import ConfigOpt, JsonOpt, on_hub, utc_ms

token_app = group("token", "Cluster admin tokens: mint one, revoke them.")

_DURATION: Final = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_ttl(text: str) -> int:
    """``90s``, ``30m``, ``8h``, ``7d`` or plain seconds, as seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or int(m[1]) == 0:
        raise fail(f"--ttl {text!r}: expected a duration such as 90s, 30m, 8h or 7d")
    return int(m[1]) * _UNIT_S[m[2]]


def parse_before(text: str) -> int:
    """``now``, ms since the epoch, or an ISO 8601 time (UTC unless it says)."""
    if text.strip().lower() == "now":
        return wall_ms()
    if text.strip().isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"--all-before {text!r}: expected now, ms since the epoch or an ISO 8601 time"
        ) from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


@token_app.command("create")
def token_create(
    config: ConfigOpt = None,
    ttl: Annotated[
        str, typer.Option(help="How long it is valid: 90s, 30m, 8h, 7d (at most the config's).")
    ] = "1h",
    json_out: JsonOpt = False,
) -> None:
    """Mint an admin token with the cluster secret of a node's config."""
    path = config or (Path(os.environ["AIOT_CONFIG"]) if os.environ.get("AIOT_CONFIG") else None)
    if path is None:
        raise fail("which cluster? give --config hub.toml (or AIOT_CONFIG)")
    try:
        cfg = hub_config.load(path)
    except hub_config.ConfigError as exc:
        raise fail(str(exc)) from None
    seconds, limit = parse_ttl(ttl), cfg.http.admin_token_max_ttl_s
    if seconds > limit:
        raise fail(f"--ttl {ttl}: over http.admin_token_max_ttl_s ({limit} s) of {path}")
    token, claim = auth.mint_admin_token(cfg.raft.secret, seconds)
    result: dict[str, str | int] = {"token": token, "id": claim.token_id}
    if json_out:
        result.update(issued_ms=claim.issued_ms, expires_ms=claim.expires_ms)
    else:
        result.update(issued=utc_ms(claim.issued_ms), expires=utc_ms(claim.expires_ms))
    emit(result, json_out, width=7)


@token_app.command("revoke")
@on_hub
def token_revoke(
    client: HubClient,
    token_id: Annotated[
        str | None, typer.Argument(metavar="ID", help="The id of the token to revoke.")
    ] = None,
    all_before: Annotated[
        str | None,
        typer.Option(help="Revoke every token issued before: now, ms or ISO 8601."),
    ] = None,
) -> None:
    """Revoke an admin token by its id, or every one issued before a time."""
    if token_id is None and all_before is None:
        raise fail("give the ID of a token, or --all-before now")
    if token_id is not None and not auth.TOKEN_ID.fullmatch(token_id):
        raise fail(f"{token_id!r} is not a token id (16 hex digits, from aiot token create)")
    body: dict[str, str | int] = {}
    if token_id is not None:
        body["id"] = token_id
    if all_before is not None:
        body["before_ms"] = parse_before(all_before)
    out = client.post("/v1/tokens/revocations", body)
    if token_id is not None:
        typer.echo(f"revoked {token_id}")
    if all_before is not None:
        typer.echo(f"revoked every admin token issued before {utc_ms(out['before_ms'])}")


@token_app.command("revoked")
@on_hub
def token_revoked(client: HubClient, json_out: JsonOpt = False) -> None:
    """The revoked token ids, and the cut-off (tokens issued before it)."""
    out = client.get("/v1/tokens/revocations")
    if json_out:
        print_json(out)
        return
    if out["before_ms"]:
        typer.echo(f"every token issued before {utc_ms(out['before_ms'])}")
    if not out["revoked"] and not out["before_ms"]:
        nothing("revoked tokens")
    for rv in out["revoked"]:
        typer.echo(f"{rv['id']}  revoked {utc_ms(rv['revoked_at_ms'])}")
