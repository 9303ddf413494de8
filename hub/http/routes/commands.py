"""Commands to devices, through the replicated ledger.

POST /v1/commands {device, action, params, deadline_s, approved, command_id}
                                    (operator) checked by the guard, then committed
GET  /v1/commands?device=ID         the device's ledger
GET  /v1/commands/{id}              one command with its history

An ota.update names a firmware release by its sha256 (params url, sha256 and
optionally allow_downgrade). This route is the only way one enters the
ledger (the guard blocks it from every other origin: OPERATOR_ONLY), and it
lets one through only for a registered release signed by a key of
``[firmware] trusted_keys``, for the platform the device runs and not older
than the version it runs unless allow_downgrade is true; it adds the
release's signed manifest and signature, which the device checks again
(hub/decide/registry.py "firmware releases", edge/ota.py). A refusal is 422
(409 for a downgrade) and proposes nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException

from hub.core import keys
from hub.core.clock import wall_ms
from hub.decide import registry
from hub.decide.guard import Guard, ParamError, Proposal, normalize_params
from hub.http.bodies import CommandIn
from hub.http.principal import Operator, Principal, Raft, ThisNode, Viewer, known
from hub.http.replica import commit_group, key_ok
from hub.http.serializers import ledger_json
from hub.state import entries as e
from hub.state.raft import RaftNode
from protocol import messages as m

router = APIRouter()


async def _guarded(
    guard: Guard,
    r: RaftNode,
    body: CommandIn,
    who: Principal,
    device: e.Device,
    params: tuple[m.Param, ...],
    command_id: str,
    now: int,
) -> tuple[tuple[m.Param, ...], list[bytes]]:
    """The params the guard lets into the ledger, and the operator decision to
    commit with the command when the guard recorded one; 409 when it blocks.

    The guard sees operator commands too (hub/decide/guard.py); what it blocks
    or changes is recorded as an operator decision."""
    proposal = Proposal(body.device, body.action, params, "operator", body.approved)
    verdict = guard.check(proposal, device, now)
    parts: list[bytes] = []
    if verdict.recorded:
        record = {
            "requested_by": who.name,
            "action": {"name": body.action, "params": {p.name: p.value for p in params}},
            "guard": verdict.to_dict(),
            "facts": [f"{who.name} asked for {body.action} on {body.device}"],
        }
        rec_bytes = json.dumps(record, sort_keys=True, default=str).encode()
        decision = e.Decision(
            "d-" + uuid.uuid4().hex[:16],
            body.device,
            e.Tier.OPERATOR,
            now,
            command_id if verdict.allowed else "",
            rec_bytes,
        )
        parts.append(e.encode(decision))
    if not verdict.allowed:
        await commit_group(r, parts)
        raise HTTPException(409, f"the guard blocked it: {verdict.reason}: {verdict.detail}")
    return verdict.params, parts


def _release(
    r: RaftNode, node: ThisNode, cap: m.Capability, device: str, given: dict[str, Any]
) -> dict[str, Any]:
    """An ota.update's params with its release's signed manifest and signature;
    422 (409 for a downgrade) for a release that may not go to the device."""
    takes = {p.name for p in cap.params}
    if not {"release", "signature", "allow_downgrade"} <= takes:
        raise HTTPException(
            422,
            f"{device} declares an ota.update that takes no signed release: flash it with a "
            "current bundle and register it again with the current capabilities",
        )
    last = node.statuses.get(device)
    reported = None if last is None else last[0].firmware
    # Validated when the config was read (hub/core/config.py).
    trusted = keys.trusted(node.cfg.firmware.trusted_keys)
    try:
        return registry.ota_params(r, trusted, device, given, reported)
    except registry.ReleaseRefused as exc:
        code = 409 if exc.reason == "downgrade" else 422
        raise HTTPException(code, f"ota.update refused: {exc.reason}: {exc.detail}") from None


@router.post("/v1/commands", status_code=201)
async def send_command(body: CommandIn, who: Operator, r: Raft, node: ThisNode) -> dict[str, Any]:
    d = known(r, body.device)
    cap = next((c for c in d.capabilities if c.action == body.action), None)
    if cap is None:
        actions = ", ".join(c.action for c in d.capabilities) or "none"
        raise HTTPException(422, f"{body.device} has no action {body.action!r} ({actions})")
    given: dict[str, Any] = dict(body.params)
    if body.action == registry.OTA:
        given = _release(r, node, cap, body.device, given)
    try:  # the device's own rules (edge/executor.py), as the guard applies them
        params, _ = normalize_params(cap, given)
    except ParamError as exc:
        raise HTTPException(422, str(exc)) from None
    now = wall_ms()
    deadline_s = body.deadline_s or node.cfg.commands.deadline_s
    command_id = body.command_id or uuid.uuid4().hex[:16]
    if body.command_id is not None:
        existing = r.read(lambda s: s.command(command_id))
        if existing is not None:  # a retry of a command that did commit
            if existing.command.device_id != body.device:
                raise HTTPException(409, f"command {command_id!r} is for another device")
            return ledger_json(existing)
    params, parts = await _guarded(node.engine.guard, r, body, who, d, params, command_id, now)
    cmd = e.PutCommand(
        command_id,
        body.device,
        r.status().term,
        body.action,
        params,
        now,
        now + int(deadline_s * 1000),
    )
    try:
        await commit_group(r, [e.encode(cmd), *parts])
    except HTTPException as exc:
        # A retry racing its own first attempt: that one committed.
        again = r.read(lambda s: s.command(cmd.command_id))
        if exc.status_code != 409 or body.command_id is None or again is None:
            raise
    rec = r.read(lambda s: s.command(cmd.command_id))
    assert rec is not None
    return ledger_json(rec)


@router.get("/v1/commands")
async def list_commands(device: str, who: Viewer, r: Raft) -> list[dict[str, Any]]:
    known(r, device, who)
    return [ledger_json(x) for x in r.read(lambda s: s.commands(device))]


@router.get("/v1/commands/{command_id}")
async def show_command(command_id: str, who: Viewer, r: Raft) -> dict[str, Any]:
    rec = r.read(lambda s: s.command(command_id)) if key_ok(command_id) else None
    device = None if rec is None else r.read(lambda s: s.device(rec.command.device_id))
    # A command of a device the asker may not see is as absent as a missing one.
    if rec is None or (who.devices is not None and (device is None or not who.sees(device))):
        raise HTTPException(404, f"no command {command_id[:80]!r}")
    return ledger_json(rec)
