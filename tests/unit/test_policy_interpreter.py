"""The reference interpreter of structured policies, the facts it is stated by,
and the renderings: every wording of one policy means the same structure."""

from __future__ import annotations

import random

import pytest

from hub.decide import facts as hf
from tools.ml.policy import model as pm
from tools.ml.policy.dataset import example
from tools.ml.policy.devices import KINDS
from tools.ml.policy.facts import LONGER_THAN_GRACE, WITHIN_GRACE, sentences, shuffled
from tools.ml.policy.generate import random_policy
from tools.ml.policy.render import EXCEPTION_WORDS, EXCEPTIONS, LAYOUTS, render
from tools.ml.policy.worlds import random_world

pytestmark = pytest.mark.unit

OFF = pm.ActionSpec("relay.set", (("on", False),))
NOTIFY = pm.ActionSpec("notify", (("urgent", True),))
NONE = pm.ActionSpec("none")
OVER = pm.Lit(pm.Power("over"))
CRITICAL = pm.Lit(pm.Critical())


def at(hh: int, mm: int) -> pm.World:
    return pm.World(minute=hh * 60 + mm)


def test_the_first_rule_that_matches_wins_and_the_default_otherwise() -> None:
    w = pm.World(power="over", over_for_s=30, critical=True, relay_on=True)
    p = pm.Policy((pm.Rule((CRITICAL,), NOTIFY), pm.Rule((OVER,), OFF)), NONE)
    assert pm.decide(p, w) == pm.Outcome("notify", {"urgent": True}, 0)
    swapped = pm.Policy((p.rules[1], p.rules[0]), NONE)
    assert pm.decide(swapped, w) == pm.Outcome("relay.set", {"on": False}, 0)
    calm = pm.World(power="under", relay_on=True)
    assert pm.decide(p, calm) == pm.Outcome("none", {}, -1)
    reboot = pm.Policy(p.rules, pm.ActionSpec("reboot"))
    assert pm.decide(reboot, calm) == pm.Outcome("reboot", {}, -1)


def test_an_exception_stops_its_rule_and_the_next_rule_is_tried() -> None:
    # "When power is over the limit, switch the relay off, unless the device is
    # critical. When power is over the limit, notify. Otherwise do nothing."
    p = pm.Policy((pm.Rule((OVER,), OFF, (CRITICAL,)), pm.Rule((OVER,), NOTIFY)), NONE)
    over = pm.World(power="over", over_for_s=20, relay_on=True)
    assert pm.decide(p, over).action == "relay.set"
    critical = pm.World(power="over", over_for_s=20, relay_on=True, critical=True)
    assert pm.decide(p, critical) == pm.Outcome("notify", {"urgent": True}, 1)
    # Several exceptions: any one of them stops the rule.
    two = pm.Policy((pm.Rule((OVER,), OFF, (CRITICAL, pm.Lit(pm.Occupied()))),), NONE)
    assert pm.decide(two, pm.World(power="over", occupied=True)).action == "none"
    assert pm.decide(two, pm.World(power="over", occupied=False)).action == "relay.set"
    # A negated condition: "when nobody is at home".
    away = pm.Policy((pm.Rule((pm.Lit(pm.Occupied(), False),), OFF),), NONE)
    assert pm.decide(away, pm.World(occupied=False)).action == "relay.set"
    assert pm.decide(away, pm.World(occupied=True)).action == "none"


@pytest.mark.parametrize(
    ("minute", "inside"),
    [
        ((22, 0), True),
        ((23, 59), True),
        ((0, 0), True),
        ((5, 59), True),
        ((6, 0), False),
        ((21, 59), False),
        ((12, 0), False),
    ],
)
def test_a_time_window_runs_across_midnight(minute: tuple[int, int], inside: bool) -> None:
    night = pm.Window(22 * 60, 6 * 60)
    assert night.holds(at(*minute)) is inside
    assert pm.Lit(night, False).holds(at(*minute)) is not inside


def test_a_day_window_starts_inclusive_and_ends_exclusive() -> None:
    day = pm.Window(8 * 60, 18 * 60)
    assert [day.holds(at(h, m)) for h, m in ((7, 59), (8, 0), (17, 59), (18, 0))] == [
        False,
        True,
        True,
        False,
    ]
    assert not day.holds(pm.World())  # no time stated: the window does not hold


def test_grace_period_longer_than_and_within() -> None:
    def w(over_for: int, power: pm.PowerLevel = "over") -> pm.World:
        return pm.World(power=power, over_for_s=over_for, grace_s=30)

    beyond, within = pm.Grace(True), pm.Grace(False)
    assert beyond.holds(w(31)) and not within.holds(w(31))
    assert within.holds(w(30)) and not beyond.holds(w(30))  # exactly the grace: still within
    assert within.holds(w(5)) and not beyond.holds(w(5))
    assert not beyond.holds(w(300, "under")) and not within.holds(w(300, "near"))
    assert sentences(w(31))[:2] == [hf.power_fact(over_for_s=31), LONGER_THAN_GRACE]
    assert sentences(w(30))[:2] == [hf.power_fact(over_for_s=30), WITHIN_GRACE]


def test_a_request_gives_its_value_only_when_the_device_accepts_it() -> None:
    apply = pm.ActionSpec("limit.set", (("watts", pm.FROM_REQUEST),))
    p = pm.Policy(
        (
            pm.Rule((pm.Lit(pm.Asks("limit")),), apply),
            pm.Rule((pm.Lit(pm.Asks("limit", False)),), NOTIFY),
        ),
        NONE,
    )
    ok = pm.World(request=pm.Request("limit", 1500, True))
    assert pm.decide(p, ok) == pm.Outcome("limit.set", {"watts": 1500}, 0)
    high = pm.World(request=pm.Request("limit", 5000, False))
    assert pm.decide(p, high).action == "notify"
    assert pm.decide(p, pm.World(request=pm.Request("fan", 3, True))).action == "none"
    with pytest.raises(ValueError, match="request"):
        pm.Policy((), apply).default.resolve(pm.World())


def test_facts_use_the_hubs_wording_and_keep_a_sentence_with_its_referent() -> None:
    w = pm.World(
        power="over",
        over_for_s=45,
        grace_s=30,
        anomaly_high=True,
        critical=False,
        relay_on=True,
        request=pm.Request("limit", 5000, False),
    )
    said = sentences(w)
    assert hf.power_fact(over_for_s=45) in said and hf.relay_fact(True) in said
    assert hf.anomaly_fact(0.95) in said and hf.critical_fact() not in said
    for seed in range(30):
        s = shuffled(w, random.Random(seed))
        assert sorted(s) == sorted(said)
        assert s.index(LONGER_THAN_GRACE) == s.index(hf.power_fact(over_for_s=45)) + 1
        i = s.index("operator asks to set the limit to 5000 W")
        assert s[i + 1] == "the request is above what the device accepts"


def test_every_rendering_of_a_policy_states_the_same_decisions() -> None:
    """All layouts and exception styles of one policy: one label for every world."""
    checked = styles = 0
    for seed in range(60):
        rng = random.Random(seed)
        kind = rng.choice(KINDS)
        policy, _ = random_policy(kind, rng.choice(["none", *(c.action for c in kind.caps)]), rng)
        renderings = []
        for layout, split in LAYOUTS.items():
            for _ in range(3):  # a new exception style and wording each time
                renderings.append(render(policy, "plug-3", split, rng, layout))
        styles += len({r.exception for r in renderings})
        for r in renderings:
            assert len(r.segments) == len(policy.rules) + 1
            assert all(seg.rstrip(".") in r.text for seg in r.segments)
        for _ in range(40):
            w = random_world(kind, policy, rng)
            labels = {
                (o.action, tuple(sorted(o.params.items())), o.rule)
                for o in (pm.decide(r.policy, w) for r in renderings)
            }
            assert labels == {
                (o.action, tuple(sorted(o.params.items())), o.rule) for o in [pm.decide(policy, w)]
            }
            checked += 1
    assert checked == 60 * 40 and styles > 60  # the exception styles did vary


def test_the_and_not_style_states_an_exception_as_a_negated_condition() -> None:
    p = pm.Policy((pm.Rule((OVER,), OFF, (CRITICAL,)),), NONE)
    seen = set()
    for seed in range(200):
        r = render(p, "plug-1", "train", random.Random(seed), "numbered")
        seen.add(r.exception)
        if r.exception == "and_not":
            assert r.policy.rules[0].unless == ()
            assert set(r.policy.rules[0].when) == {OVER, pm.Lit(pm.Critical(), False)}
            assert "unless" not in r.text and "critical-" in " ".join(r.wording)
        else:
            marker = {"unless": ", unless ", "unless_first": "Unless "}.get(r.exception) or (
                EXCEPTION_WORDS[r.exception] + " "
            )
            assert marker in r.text, (marker, r.text)
    assert seen == {k for k, v in EXCEPTIONS.items() if v == "train"}


def test_the_label_is_the_first_matching_rule_of_the_generated_world() -> None:
    rules_seen, order_decided = set(), 0
    for i in range(200):
        ex = example(3, "train", i)
        assert pm.decide(ex.policy, ex.world) == ex.outcome
        rules_seen.add(ex.outcome.rule)
        later = ex.policy.rules[ex.outcome.rule + 1 :] if ex.outcome.rule >= 0 else ()
        order_decided += any(r.matches(ex.world) for r in later)
        # Never a time at a window's end minute: "to 06:00" at 06:00 reads either way.
        ends = {a.end for a in pm.atoms(ex.policy) if isinstance(a, pm.Window)}
        assert ex.world.minute not in ends
    assert rules_seen >= {-1, 0, 1, 2, 3, 4}
    assert order_decided >= 10  # a later rule matched too: first match wins decided
