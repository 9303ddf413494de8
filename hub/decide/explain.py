"""Explanations: answers to questions about devices, grounded in the ledger.

    answer = explain(question, view)      # view: what the asker may see
    answer.text, answer.method, answer.sources

Common questions get rule-based answers built only from stored records:

- why did <device> switch off / turn off / get an alert?  -> its latest
  matching decision: the rule and its description, the facts, the guard's
  verdict, the command and what the device answered;
- what happened to / status of / last ... <device>      -> its latest
  decisions, commands, watermark and presence;
- how much energy did <device> use (today | on YYYY-MM-DD)? -> hourly energy.

Anything else goes to the optional ``fallback`` (the LLM tier, given the same
records as context). Whatever the fallback says is validated before it is
returned: every device id it names must be in the data the asker may see,
and every number it states must appear in the context it was given;
otherwise the answer is refused and the rule-based summary is returned.
Nothing here invents a device, a value or an event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol

from hub.state import entries as e
from hub.state.records import LedgerRecord

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")
_DATE: Final = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")


class View(Protocol):
    """The records an asker may see (hub/http/api.py builds it from the store)."""

    def device_ids(self) -> list[str]: ...
    def decisions(self, device_id: str, limit: int) -> list[e.Decision]: ...
    def commands(self, device_id: str) -> list[LedgerRecord]: ...
    def progress(self, device_id: str) -> dict[str, Any]: ...
    def energy(self, device_id: str, day: date) -> list[tuple[int, float]]: ...


@dataclass
class Answer:
    text: str
    method: str  # "rules", "llm", "none"
    sources: list[str] = field(default_factory=list)  # decision and command ids
    refused: str = ""  # why a fallback answer was not used


Fallback = Callable[[str, str], str]  # (question, context) -> answer text


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _record(d: e.Decision) -> dict[str, Any]:
    try:
        doc = json.loads(d.record)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def mentioned(question: str, devices: Sequence[str]) -> list[str]:
    """Device ids named in the question ("plug-7", or "plug 7")."""
    known = {d.lower(): d for d in devices}
    found = []
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:\s+\d+)?", question)
    for w in words:
        for cand in (w, w.replace(" ", "-"), w.rstrip(".")):
            d = known.get(cand.lower())
            if d is not None and d not in found:
                found.append(d)
    return found


def _is_off(d: e.Decision) -> bool:
    action = _record(d).get("action") or {}
    params = action.get("params") or {}
    return action.get("name") == "relay.set" and params.get("on") is False


def _command_of(view: View, device_id: str, command_id: str) -> LedgerRecord | None:
    return next((c for c in view.commands(device_id) if c.command.command_id == command_id), None)


def _describe(view: View, d: e.Decision) -> tuple[str, list[str]]:
    rec = _record(d)
    parts = [f"At {_when(d.at_ms)} the {d.tier.name.lower()} tier decided about {d.device_id}"]
    if rec.get("rule"):
        desc = rec.get("description") or ""
        parts[0] += f" by rule {rec['rule']}" + (f" ({desc.rstrip('.')})" if desc else "")
    parts[0] += "."
    facts = rec.get("facts") or []
    if facts:
        parts.append("Facts: " + "; ".join(str(f) for f in facts) + ".")
    action = rec.get("action")
    if isinstance(action, dict):
        params = ", ".join(f"{k}={v}" for k, v in (action.get("params") or {}).items())
        parts.append(f"Action: {action.get('name')}" + (f" {params}" if params else "") + ".")
    guard = rec.get("guard") or {}
    if guard:
        verdict = guard.get("outcome", "?")
        reason = guard.get("reason") or ""
        parts.append(f"The guard {verdict} it" + (f" ({reason})" if reason else "") + ".")
    sources = [d.decision_id]
    if d.command_id:
        cmd = _command_of(view, d.device_id, d.command_id)
        if cmd is not None:
            sources.append(d.command_id)
            last = cmd.history[-1]
            text = f"Command {d.command_id} is {cmd.state.name} (since {_when(last.at_ms)})"
            if cmd.result is not None:
                text += f"; the device answered {cmd.result.status.name}"
                if cmd.result.detail:
                    text += f" ({cmd.result.detail})"
            parts.append(text + ".")
    elif rec.get("alert"):
        parts.append("It raised an alert; no command was sent.")
    return " ".join(parts), sources


def _summary(view: View, device_id: str) -> tuple[str, list[str]]:
    p = view.progress(device_id)
    lines = [
        f"{device_id}: {p['watermark']} readings stored"
        + (f", connected to {p['node']}" if p.get("node") else "")
        + (" (online)" if p.get("online") else " (offline)")
        + "."
    ]
    sources: list[str] = []
    for d in view.decisions(device_id, 3):
        text, src = _describe(view, d)
        lines.append(text)
        sources += src
    if len(lines) == 1:
        lines.append("No decisions have been recorded for it.")
    return " ".join(lines), sources


def explain(question: str, view: View, fallback: Fallback | None = None) -> Answer:
    q = question.strip()
    if not q:
        return Answer(
            "Ask a question about a device, for example: why did plug-7 switch off?", "none"
        )
    devices = view.device_ids()
    named = mentioned(q, devices)
    low = q.lower()
    if named:
        device_id = named[0]
        if "why" in low and ("off" in low or "alert" in low or "command" in low):
            want_alert = "alert" in low
            for d in view.decisions(device_id, 200):
                if (want_alert and _record(d).get("alert")) or (not want_alert and _is_off(d)):
                    text, sources = _describe(view, d)
                    return Answer(text, "rules", sources)
            what = "alert" if want_alert else "switch-off decision"
            return Answer(f"No {what} is recorded for {device_id}.", "rules")
        if re.search(r"\b(energy|k?wh|consum\w*|use[ds]?)\b", low):
            m = _DATE.search(q)
            day = date.fromisoformat(m.group(1)) if m else datetime.now(UTC).date()
            hours = view.energy(device_id, day)
            total = sum(wh for _, wh in hours)
            return Answer(
                f"{device_id} used {total:.1f} Wh on {day.isoformat()} (UTC), "
                f"over {sum(1 for _, wh in hours if wh > 0)} hours with use.",
                "rules",
            )
        if any(w in low for w in ("what happened", "status", "last", "latest", "doing")):
            text, sources = _summary(view, named[0])
            return Answer(text, "rules", sources)
    context_parts = []
    cited: list[str] = []
    for device_id in named or devices[:5]:
        text, src = _summary(view, device_id)
        context_parts.append(text)
        cited += src
    context = "\n".join(context_parts)
    if fallback is not None and context:
        try:
            said = fallback(q, context).strip()
        except Exception as exc:  # the LLM tier failed: say so, answer from rules
            return Answer(context, "rules", cited, refused=f"llm failed: {exc}")
        problem = validate(said, context, devices)
        if not problem:
            return Answer(said, "llm", cited)
        return Answer(context, "rules", cited, refused=problem)
    if context:
        return Answer(context, "rules", cited)
    return Answer("There is no device in the data to answer about.", "none")


def validate(answer: str, context: str, devices: Sequence[str]) -> str:
    """'' if the answer names only known devices and stated numbers, else why not."""
    if not answer:
        return "empty answer"
    known = set(devices)
    for token in _ID.findall(answer):
        looks_like_device = "-" in token and any(ch.isdigit() for ch in token)
        if looks_like_device and token not in known and token.rstrip(".") not in known:
            return f"names {token!r}, which is not a device in the data"
    stated = set(_NUMBER.findall(context))
    for num in _NUMBER.findall(answer):
        if num not in stated:
            return f"states {num}, which is not in the data"
    return ""
