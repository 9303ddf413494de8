"""Explanations: answers to questions about devices, grounded in the ledger.

    answer = explain(question, view)      # view: what the asker may see
    answer.text, answer.method, answer.sources

Common questions get rule-based answers built only from stored records:

- why did <device> switch off / turn off / get an alert / get a command?
  -> its latest matching event: a decision (the rule and its description,
  the facts, the guard's verdict, the command and what the device answered),
  or an operator's command that no decision issued (when it was sent, its
  state and what the device answered);
- what happened to / status of / last ... <device>      -> its latest
  decisions, commands, watermark and presence;
- how much energy did <device> use (today | on YYYY-MM-DD)? -> hourly energy.

A question that names a device the asker cannot see (there is none by that
name, or it is not theirs: the same answer for both) is answered "I know no
device plug-9."; what it asks about known devices is answered too.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol

from hub.state import entries as e
from hub.state.records import LedgerRecord

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")
_DATE: Final = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
# A word shaped like a device id: letters first, then parts joined by - or _,
# with a digit somewhere ("plug-9", "meter_2b"; not "switch-off" or a date).
_DEVICE_LIKE: Final = re.compile(r"(?<![\w.-])[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)+")
_WORD_NUMBER: Final = re.compile(r"\b([A-Za-z][A-Za-z0-9]*)\s+(\d+)\b")
_OFF: Final = re.compile(r"\boff\b")
_SCAN: Final = 200  # decisions looked at for a "why" question


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


def unknown(question: str, devices: Sequence[str]) -> list[str]:
    """Words of the question shaped like device ids that name none of
    ``devices`` ("plug-9"; "plug 9" when a known id starts with "plug-")."""
    known = {d.lower() for d in devices}
    found = [w for w in _DEVICE_LIKE.findall(question) if any(c.isdigit() for c in w)]
    for word, number in _WORD_NUMBER.findall(question):
        if any(d.startswith(f"{word.lower()}-") for d in known):
            found.append(f"{word}-{number}")
    out: list[str] = []
    for w in found:
        if w.lower() not in known and w.lower() not in (o.lower() for o in out):
            out.append(w)
    return out


def _not_known(names: Sequence[str]) -> str:
    return f"I know no device {' or '.join(names)}."


def _is_off(d: e.Decision) -> bool:
    action = _record(d).get("action") or {}
    params = action.get("params") or {}
    return action.get("name") == "relay.set" and params.get("on") is False


def _switches_off(c: LedgerRecord) -> bool:
    params = {p.name: p.value for p in c.command.params}
    return c.command.action == "relay.set" and params.get("on") is False


def _command_of(view: View, device_id: str, command_id: str) -> LedgerRecord | None:
    return next((c for c in view.commands(device_id) if c.command.command_id == command_id), None)


def _command_state(cmd: LedgerRecord) -> str:
    """``Command c-1 is DONE (since ...); the device answered DONE (relay off).``"""
    cid = cmd.command.command_id
    text = f"Command {cid} is {cmd.state.name} (since {_when(cmd.history[-1].at_ms)})"
    if cmd.result is not None:
        text += f"; the device answered {cmd.result.status.name}"
        if cmd.result.detail:
            text += f" ({cmd.result.detail})"
    return text + "."


def _action(name: str, params: Iterable[tuple[str, Any]]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in params)
    return name + (f" {shown}" if shown else "")


def _reading_line(reason: str, reading: Any) -> str:
    """The line of an adapter's reading of the policy that a decision's reason
    names ("Rule 2: ..." -> the line "2: ... -> ..."; "Default: ..." -> the
    default's; hub.decide.reading.why)."""
    if not isinstance(reading, str) or not reading:
        return ""
    head = reason.strip().split(":", 1)[0]
    if head == "Default":
        want = "Default -> "
    elif head.startswith("Rule ") and head[5:].isdigit():
        want = f"{head[5:]}: "
    else:
        return ""
    return next((x for x in reading.splitlines() if x.startswith(want)), "")


def _llm_parts(rec: dict[str, Any]) -> list[str]:
    """What an LLM decision adds: the policy it followed, the model (and
    adapter) that read it, the model's reason, and whether it could act."""
    parts = []
    policy = rec.get("policy")
    if policy:
        source = rec.get("policy_source") or "?"
        parts.append(f'Policy ({source}): "{policy}".')
    model = rec.get("model") or {}
    if model.get("name"):
        who = f"The model {model['name']}"
        adapter = model.get("adapter") or {}
        if adapter.get("name"):
            who += f" with adapter {adapter['name']}"
        rec_ = rec.get("recommendation") or {}
        reason = str(rec_.get("reason") or "")
        line = _reading_line(reason, (rec.get("llm") or {}).get("reading"))
        if line:  # an adapter's reading, checked against the facts (hub.decide.reading)
            which = "the default" if line.startswith("Default") else reason.split(":", 1)[0]
            parts.append(
                f'{who} read the policy; for these facts, {which} of its reading applies: "{line}".'
            )
        elif reason:
            parts.append(f'{who} reasoned: "{reason}".')
        else:
            parts.append(f"{who} was consulted.")
    if rec.get("fallback"):
        parts.append(f"It gave no decision ({rec['fallback']}).")
    elif rec.get("mode") == "advisory" and rec.get("recommendation"):
        r = rec["recommendation"]
        what = _action(str(r.get("action")), (r.get("params") or {}).items())
        trust = rec.get("trust") or "no passing evaluation report"
        parts.append(f"It recommended {what}; advisory ({trust}), so nothing was sent.")
    return parts


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
    if d.tier is e.Tier.LLM:
        parts += _llm_parts(rec)
    action = rec.get("action")
    if isinstance(action, dict):
        params = (action.get("params") or {}).items()
        parts.append(f"Action: {_action(str(action.get('name')), params)}.")
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
            parts.append(_command_state(cmd))
    elif rec.get("alert"):
        parts.append("It raised an alert; no command was sent.")
    return " ".join(parts), sources


def _describe_command(cmd: LedgerRecord, by_operator: bool) -> tuple[str, list[str]]:
    """A command that no decision issued (``by_operator``: none of the
    decisions looked at cites it, and they reach back past it)."""
    c = cmd.command
    what = _action(c.action, ((p.name, p.value) for p in c.params))
    head = (
        f"At {_when(c.issued_at_ms)} command {c.command_id} ({what}) was issued for {c.device_id}"
    )
    if by_operator:
        head += " by an operator through the API; no decision of the hub issued it"
    return f"{head}. {_command_state(cmd)}", [c.command_id]


_WANTED: Final = {
    "alert": "alert",
    "off": "switch-off decision or command",
    "command": "command",
}


def _why(view: View, device_id: str, want: str) -> Answer:
    """The latest decision or operator's command that answers "why did
    ``device_id`` switch off / raise an alert / get a command"."""
    decisions = view.decisions(device_id, _SCAN)
    if want == "alert":
        match = next((d for d in decisions if _record(d).get("alert")), None)
    elif want == "off":
        match = next((d for d in decisions if _is_off(d)), None)
    else:
        match = next((d for d in decisions if d.command_id), None)
    cited = {d.command_id for d in decisions if d.command_id}
    # Decisions older than those looked at may cite older commands.
    reach = decisions[-1].at_ms if len(decisions) >= _SCAN else None
    command = None
    if want != "alert":
        command = next(
            (
                c
                for c in reversed(view.commands(device_id))
                if c.command.command_id not in cited and (want == "command" or _switches_off(c))
            ),
            None,
        )
    if command is not None and (match is None or command.command.issued_at_ms > match.at_ms):
        by_operator = reach is None or command.command.issued_at_ms >= reach
        text, sources = _describe_command(command, by_operator)
        return Answer(text, "rules", sources)
    if match is not None:
        text, sources = _describe(view, match)
        return Answer(text, "rules", sources)
    return Answer(f"No {_WANTED[want]} is recorded for {device_id}.", "rules")


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
    missing = unknown(q, devices)
    if missing and not named:
        return Answer(_not_known(missing), "none")
    answer = _answer(q, view, devices, named, fallback)
    if missing:
        answer.text = f"{_not_known(missing)} {answer.text}"
    return answer


def _answer(
    q: str, view: View, devices: list[str], named: list[str], fallback: Fallback | None
) -> Answer:
    low = q.lower()
    if named:
        device_id = named[0]
        if "why" in low:
            if "alert" in low:
                return _why(view, device_id, "alert")
            if _OFF.search(low):
                return _why(view, device_id, "off")
            if "command" in low:
                return _why(view, device_id, "command")
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
