"""Policies and worlds as JSON, and back: what an example's ``meta`` records."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

from tools.ml.policy import model as pm

ATOMS: Final[dict[str, type[pm.Atom]]] = {
    "power": pm.Power,
    "grace": pm.Grace,
    "anomaly": pm.Anomaly,
    "occupancy": pm.Occupied,
    "critical": pm.Critical,
    "relay": pm.Relay,
    "time": pm.Window,
    "tariff": pm.TariffIs,
    "request": pm.Asks,
}


def _lit(x: pm.Lit) -> dict[str, Any]:
    return {"atom": x.atom.kind, **asdict(x.atom), "positive": x.positive}


def _action(a: pm.ActionSpec) -> dict[str, Any]:
    return {"action": a.action, "params": dict(a.params)}


def policy_json(p: pm.Policy) -> dict[str, Any]:
    return {
        "rules": [
            {
                "when": [_lit(x) for x in r.when],
                "unless": [_lit(x) for x in r.unless],
                "act": _action(r.act),
            }
            for r in p.rules
        ],
        "default": _action(p.default),
    }


def _lit_from(d: dict[str, Any]) -> pm.Lit:
    args = {k: v for k, v in d.items() if k not in ("atom", "positive")}
    return pm.Lit(ATOMS[d["atom"]](**args), bool(d["positive"]))


def _action_from(d: dict[str, Any]) -> pm.ActionSpec:
    return pm.ActionSpec(str(d["action"]), tuple(d["params"].items()))


def policy_from_json(d: dict[str, Any]) -> pm.Policy:
    rules = tuple(
        pm.Rule(
            tuple(_lit_from(x) for x in r["when"]),
            _action_from(r["act"]),
            tuple(_lit_from(x) for x in r["unless"]),
        )
        for r in d["rules"]
    )
    return pm.Policy(rules, _action_from(d["default"]))


def world_json(w: pm.World) -> dict[str, Any]:
    return asdict(w)


def world_from_json(d: dict[str, Any]) -> pm.World:
    req = d.get("request")
    return pm.World(**{**d, "request": pm.Request(**req) if req else None})
