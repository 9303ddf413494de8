"""Examples as JSON Lines, the splits and their manifest.

Each line is a scenario ``aiot eval decisions --scenarios`` runs (the keys of
``models/eval/README.md``) with three more: ``messages``, the chat messages
the hub's LLM tier sends for it (``hub.decide.facts.build_messages``, checked
again when the file is loaded), ``answer``, the decision the model should
write (reason first, as the prompt asks), and ``meta`` (the structure, the
world, the layout family, exception style, wordings and shape, the schema and
generator versions).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hub.decide import facts as hf
from hub.decide.grammar import REASON_MAX
from hub.decide.llm import model_capabilities
from tools.ml.policy import model as pm
from tools.ml.policy.codec import policy_json, world_json
from tools.ml.policy.devices import KINDS, DeviceKind, caps_json
from tools.ml.policy.facts import shuffled
from tools.ml.policy.generate import ROOMS, group, random_policy, shape, shape_split
from tools.ml.policy.lexicon import Split
from tools.ml.policy.render import EXCEPTIONS, LAYOUTS, Rendering, render
from tools.ml.policy.worlds import world_for

SCHEMA: Final = "policy-data/1"
GENERATOR: Final = "policygen-3"
SPLITS: Final[tuple[Split, ...]] = ("train", "test")
NONE_SHARE: Final = 0.2


class DataError(ValueError):
    """The generator could not make an example (a bug, not bad luck)."""


@dataclass(frozen=True, slots=True)
class Example:
    split: Split
    index: int
    kind: DeviceKind
    device: str
    policy: pm.Policy  # as generated
    rendering: Rendering  # its words, and the structure they state
    world: pm.World
    facts: tuple[str, ...]
    outcome: pm.Outcome

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:06d}"


def device_name(kind: DeviceKind, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(ROOMS)} {kind.name}"
    return f"{kind.name}-{rng.randrange(1, 40)}"


def example(seed: int, split: Split, index: int) -> Example:
    """Example ``index`` of ``split``: depends on nothing else than these three."""
    rng = random.Random(f"{GENERATOR}:{seed}:{split}:{index}")
    for _ in range(200):
        kind = rng.choice(KINDS)
        # none is an answer of every device: a fifth of the examples, so
        # that it is no more frequent than the other actions together allow.
        target = "none" if rng.random() < NONE_SHARE else rng.choice(kind.caps).action
        policy, pos = random_policy(kind, target, rng)
        if shape_split(shape(policy)) != split:
            continue
        world = world_for(kind, policy, pos, rng, tries=60)
        if world is None:
            continue
        dev = device_name(kind, rng)
        rendering = render(policy, dev, split, rng)
        outcome = pm.decide(policy, world)
        return Example(
            split, index, kind, dev, policy, rendering, world, tuple(shuffled(world, rng)), outcome
        )
    raise DataError(f"no example for {split} {index} with seed {seed}")


# How the trace names the fact a condition is about (``generate.group``): the
# labels the compact prompt puts on the facts (``hub.decide.facts.FACT_LABELS``).
LABELS: Final = {
    "power": "power",
    "anomaly": "anomaly",
    "occupancy": "home",
    "critical": "critical",
    "relay": "relay",
    "time": "time",
    "tariff": "tariff",
    "request": "request",
}


def _label(lit: pm.Lit) -> str:
    return LABELS[group(lit.atom)]


def trace(policy: pm.Policy, world: pm.World) -> str:
    """The answer's reason: the rules checked in order, as stated, up to the first
    that applies. Each condition is "yes" when it holds for the facts ("home
    yes" for "if the home is empty" means the home is empty), a rule's check
    stops at its first condition that fails or exception that holds, and the
    conclusion names the rule or the default:

        1: time no. 2: anomaly yes, home yes, unless tariff no. Rule 2.

    A small model that writes each check before the action follows long
    policies far better than one that must pick the rule at once."""
    parts = []
    for i, rule in enumerate(policy.rules, 1):
        checks = []
        ok = True
        for lit in rule.when:
            holds = lit.holds(world)
            checks.append(f"{_label(lit)} {'yes' if holds else 'no'}")
            if not holds:
                ok = False
                break
        if ok:
            for lit in rule.unless:
                holds = lit.holds(world)
                checks.append(f"unless {_label(lit)} {'yes' if holds else 'no'}")
                if holds:
                    ok = False
                    break
        parts.append(f"{i}: {', '.join(checks)}.")
        if ok:
            parts.append(f"Rule {i}.")
            return " ".join(parts)
    parts.append("Default.")
    return " ".join(parts)


def reason(ex: Example) -> str:
    """The answer's reason: the trace of the policy as its text states it."""
    out = trace(ex.rendering.policy, ex.world)
    if len(out) > REASON_MAX:
        raise DataError(f"{ex.id}: a trace of {len(out)} characters (most {REASON_MAX})")
    return out


def to_json(ex: Example) -> dict[str, Any]:
    caps = ex.kind.caps
    params = ex.outcome.params
    d: dict[str, Any] = {
        "id": ex.id,
        "category": ex.rendering.layout,
        "capabilities": caps_json(caps),
        "facts": list(ex.facts),
        "policy": ex.rendering.text,
        "expect_action": ex.outcome.action,
    }
    if params:
        d["expect_params"] = params
    # The prompt a fine-tuned adapter is sent (the compact one, hub/decide/facts.py).
    d["messages"] = hf.build_messages(
        model_capabilities(caps), ex.facts, ex.rendering.text, compact=True
    )
    d["answer"] = {"reason": reason(ex), "action": ex.outcome.action, "params": params}
    d["meta"] = {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "prompt_version": hf.ADAPTER_PROMPT_VERSION,
        "split": ex.split,
        "layout": ex.rendering.layout,
        "exception": ex.rendering.exception,
        "wording": list(ex.rendering.wording),
        "shape": shape(ex.policy),
        "rule": ex.outcome.rule,
        "device": ex.device,
        "structure": policy_json(ex.policy),
        "stated": policy_json(ex.rendering.policy),
        "world": world_json(ex.world),
    }
    return d


TRAINING_KEYS: Final = ("messages", "answer")


def write_scenarios(path: Path, *, seed: int, n: int) -> str:
    """The first ``n`` test-split examples as an eval scenario file (the lines
    without their training keys: ``aiot eval decisions --scenarios``); its
    sha256. ``models/eval/heldout.jsonl`` is this file for seed 0, n 300."""
    lines = []
    for i in range(n):
        d = to_json(example(seed, "test", i))
        for key in TRAINING_KEYS:
            d.pop(key)
        lines.append(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n")
    data = "".join(lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def majority_rate(actions: Sequence[str]) -> float:
    """What always answering the most frequent action would score."""
    if not actions:
        return 0.0
    return round(max(Counter(actions).values()) / len(actions), 4)


def write(
    out: Path,
    *,
    seed: int,
    counts: dict[Split, int],
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``manifest.json`` into ``out``; the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "prompt_version": hf.ADAPTER_PROMPT_VERSION,
        "seed": seed,
        "counts": dict(counts),
        "splits": {},
    }
    for split in SPLITS:
        n = counts.get(split, 0)
        path = out / f"{split}.jsonl"
        stats = _Stats()
        digest = hashlib.sha256()
        with path.open("w", encoding="utf-8") as fh:
            for i in range(n):
                d = to_json(example(seed, split, i))
                line = json.dumps(d, ensure_ascii=False, sort_keys=False) + "\n"
                fh.write(line)
                digest.update(line.encode())
                stats.add(d)
                if (i + 1) % 500 == 0 or i + 1 == n:
                    progress(f"{split}: {i + 1}/{n} examples")
        manifest["splits"][split] = {**stats.summary(), "sha256": digest.hexdigest()}
    manifest["layouts"] = {s: sorted(k for k, v in LAYOUTS.items() if v == s) for s in SPLITS}
    manifest["exceptions"] = {s: sorted(k for k, v in EXCEPTIONS.items() if v == s) for s in SPLITS}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


class _Stats:
    def __init__(self) -> None:
        self.actions: list[str] = []
        self.layouts: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.rules: Counter[int] = Counter()
        self.shapes: set[str] = set()

    def add(self, d: dict[str, Any]) -> None:
        meta = d["meta"]
        self.actions.append(d["expect_action"])
        self.layouts[meta["layout"]] += 1
        self.exceptions[meta["exception"] or "-"] += 1
        self.rules[len(meta["structure"]["rules"])] += 1
        self.shapes.add(meta["shape"])

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self.actions),
            "majority_rate": majority_rate(self.actions),
            "actions": dict(sorted(Counter(self.actions).items())),
            "layouts": dict(sorted(self.layouts.items())),
            "exceptions": dict(sorted(self.exceptions.items())),
            "rule_counts": {str(k): v for k, v in sorted(self.rules.items())},
            "shapes": len(self.shapes),
        }
