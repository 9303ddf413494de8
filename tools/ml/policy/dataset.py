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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from hub.decide import facts as hf
from hub.decide.grammar import REASON_MAX, REQUEST_VALUE
from hub.decide.llm import model_capabilities
from protocol import messages as m
from tools.ml.policy import model as pm
from tools.ml.policy.codec import policy_json, world_json
from tools.ml.policy.devices import KINDS, REQUEST_BY_TARGET, DeviceKind, caps_json
from tools.ml.policy.facts import clock, shuffled
from tools.ml.policy.generate import (
    ROOMS,
    RULE_COUNTS,
    TRAIN_RULE_COUNTS,
    random_policy,
    shape,
    shape_split,
)
from tools.ml.policy.lexicon import Split
from tools.ml.policy.render import EXCEPTIONS, LAYOUTS, Rendering, render
from tools.ml.policy.worlds import world_for

SCHEMA: Final = "policy-data/1"
GENERATOR: Final = "policygen-9"
# The tag every example's draws are seeded from. policygen-5 added training
# wordings and exception styles only, policygen-6 training wordings and
# layouts, policygen-7 and -8 composed training wordings, policygen-9 longer
# training policies; the test split's draws are
# those of policygen-4, so a held-out file keeps its scenarios. Change the tag
# when the test split changes.
SEED_TAG: Final = "policygen-4"
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


def example(seed: int, split: Split, index: int, group: int = 1) -> Example:
    """Example ``index`` of ``split``: depends on nothing else than these and
    ``group``. With ``group`` k > 1, each run of k examples (from an index
    divisible by k) shares one device, policy and wording, each member with a
    world of its own, in which a rule of its own choosing (or the default)
    applies: a fine-tune evaluates the shared prompt once for all of them
    (``tools.ml.finetune.train``)."""
    if group <= 1:
        return _first(split, index, f"{SEED_TAG}:{seed}:{split}:{index}")
    g, j = divmod(index, group)
    tag = f"{SEED_TAG}:{seed}:{split}:g{group}:{g}"
    first = _first(split, index - j, tag)
    if j == 0:
        return first
    # The members' rules differ where they can: the positions other than the
    # first member's, in an order the group shares; a position that does
    # nothing gives way, more often than not, to one that acts (policies say
    # "do nothing" often; the first member keeps the balance of actions).
    rules = first.policy.rules
    others = [p for p in range(-1, len(rules)) if p != first.outcome.rule]
    random.Random(f"{tag}:order").shuffle(others)
    acting = [
        p for p in others if (rules[p].act if p >= 0 else first.policy.default).action != "none"
    ]
    rng = random.Random(f"{tag}:{j}")
    pos = others[(j - 1) % len(others)]
    if pos not in acting and acting and rng.random() < 0.7:
        pos = acting[(j - 1) % len(acting)]
    for attempt in range(50):
        if attempt:
            pos = rng.choice(others)
        world = world_for(first.kind, first.policy, pos, rng, tries=60)
        if world is None or not _fits(first.rendering, world):
            continue
        return replace(
            first,
            index=index,
            world=world,
            facts=tuple(shuffled(world, rng)),
            outcome=pm.decide(first.policy, world),
        )
    raise DataError(
        f"no world for {split} example {index} (member {j} of group {g}, {group} a policy) "
        f"with seed {seed}"
    )


def _first(split: Split, index: int, tag: str) -> Example:
    rng = random.Random(tag)
    for _ in range(200):
        kind = rng.choice(KINDS)
        # none is an answer of every device: a fifth of the examples, so
        # that it is no more frequent than the other actions together allow.
        target = "none" if rng.random() < NONE_SHARE else rng.choice(kind.caps).action
        counts = TRAIN_RULE_COUNTS if split == "train" else RULE_COUNTS
        policy, pos = random_policy(kind, target, rng, counts)
        if shape_split(shape(policy)) != split:
            continue
        world = world_for(kind, policy, pos, rng, tries=60)
        if world is None:
            continue
        dev = device_name(kind, rng)
        rendering = render(policy, dev, split, rng)
        if not _fits(rendering, world):
            continue
        outcome = pm.decide(policy, world)
        return Example(
            split, index, kind, dev, policy, rendering, world, tuple(shuffled(world, rng)), outcome
        )
    raise DataError(f"no example for {split} {index} ({tag})")


def _fits(rendering: Rendering, world: pm.World) -> bool:
    """Whether the trace of ``world`` fits the grammar's reason (a long policy
    whose last rule applies can outgrow it: another world or policy is drawn).
    The limit counts the action's words too, as the traces of
    ``decide-v6-act`` quoted them, so that the draws, and the splits, stay
    those of that prompt."""
    rule = pm.decide(rendering.policy, world).rule
    words = rendering.actions[rule] if rendering.actions else ""
    return len(trace(rendering.policy, world)) + len(": ") + len(words) <= REASON_MAX


def key(lit: pm.Lit, world: pm.World | None = None) -> str:
    """A condition as the reading and the trace write it: the fact key it needs
    (``hub.decide.facts.fact_keys``), "not" before it for a negated one. It
    holds when that key is among the facts (is not, when negated). A time
    window is the one check by value: the trace (``world`` given) copies the
    clock beside it, "time in 22:00-06:00 (23:15)"."""
    a = lit.atom
    if isinstance(a, pm.Window):
        k = f"time in {clock(a.start)}-{clock(a.end)}"
        if world is not None:
            k += f" ({clock(world.minute) if world.minute is not None else 'none'})"
    elif isinstance(a, pm.Power):
        k = f"power={a.level}"
    elif isinstance(a, pm.Grace):
        k = "grace=out" if a.beyond else "grace=within"
    elif isinstance(a, pm.Anomaly):
        k = "anomaly=high" if a.high else "anomaly=normal"
    elif isinstance(a, pm.Occupied):
        k = "home=yes"
    elif isinstance(a, pm.Critical):
        k = "critical=yes"
    elif isinstance(a, pm.Relay):
        k = "relay=on" if a.on else "relay=off"
    elif isinstance(a, pm.TariffIs):
        k = f"tariff={a.period}"
    else:
        sentence = REQUEST_BY_TARGET[a.target].fact.format(v=0)
        req = hf.request_key(sentence, too_high=not a.acceptable)
        if req is None:
            raise DataError(f"{sentence!r}: a request the hub cannot key")
        k = req
    return k if lit.positive else f"not {k}"


def _act(spec: pm.ActionSpec, caps: Sequence[m.Capability]) -> str:
    """An action as the reading writes it: its name, then its parameters in the
    capability's order as JSON values, ``request`` for the value the operator
    asks for (``grammar.reading_gbnf``)."""
    values = dict(spec.params)
    cap = next((c for c in caps if c.action == spec.action), m.Capability(spec.action))
    fields = []
    for p in cap.params:
        v = values[p.name]
        text = REQUEST_VALUE if v == pm.FROM_REQUEST else json.dumps(v, ensure_ascii=False)
        fields.append(f"{json.dumps(p.name)}: {text}")
    return f"{spec.action} {{{', '.join(fields)}}}"


def reading(policy: pm.Policy, caps: Sequence[m.Capability]) -> str:
    """The model's reading of a policy, as stated (``hub.decide.facts.reading_messages``):
    a line a rule, its conditions and exceptions as keys, then its action.

        1: power=over, grace=out -> relay.set {"on": false}
        2: time in 22:00-06:00, unless not home=yes -> none {}
        Default -> none {}
    """
    lines = []
    for i, rule in enumerate(policy.rules, 1):
        conds = [key(x) for x in rule.when] + [f"unless {key(x)}" for x in rule.unless]
        lines.append(f"{i}: {', '.join(conds)} -> {_act(rule.act, caps)}")
    lines.append(f"Default -> {_act(policy.default, caps)}")
    return "\n".join(lines)


def trace(policy: pm.Policy, world: pm.World) -> str:
    """The answer's reason: the rules of the reading checked in order, up to the
    first that applies. Each condition is written as the fact key it needs
    (``key``) and "yes" when it holds for the facts, a rule's check stops at
    its first condition that fails or exception that holds, and the
    conclusion names the rule or the default; the action follows in the
    answer, copied from the reading:

        1: time in 22:00-06:00 (17:20) no. 2: anomaly=high yes, not home=yes yes,
        unless tariff=peak no. Rule 2.

    A small model that writes each check before the action follows long
    policies far better than one that must pick the rule at once, and one
    that matches a key among the facts checks a condition far better than one
    that judges a sentence."""
    parts = []
    for i, rule in enumerate(policy.rules, 1):
        checks = []
        ok = True
        for lit in rule.when:
            holds = lit.holds(world)
            checks.append(f"{key(lit, world)} {'yes' if holds else 'no'}")
            if not holds:
                ok = False
                break
        if ok:
            for lit in rule.unless:
                holds = lit.holds(world)
                checks.append(f"unless {key(lit, world)} {'yes' if holds else 'no'}")
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
    # What a fine-tuned adapter is trained on (hub/decide/facts.py): the
    # request to read the policy, and its reading.
    d["messages"] = hf.reading_conversation(
        model_capabilities(caps), ex.rendering.text, reading(ex.rendering.policy, caps)
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
    group: int = 1,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``manifest.json`` into ``out``; the
    manifest. ``group``: training examples per policy (``example``); the test
    split always has one per policy."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "prompt_version": hf.ADAPTER_PROMPT_VERSION,
        "seed": seed,
        "counts": dict(counts),
        "group": group,
        "splits": {},
    }
    for split in SPLITS:
        n = counts.get(split, 0)
        path = out / f"{split}.jsonl"
        stats = _Stats()
        digest = hashlib.sha256()
        with path.open("w", encoding="utf-8") as fh:
            for i in range(n):
                d = to_json(example(seed, split, i, group if split == "train" else 1))
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
