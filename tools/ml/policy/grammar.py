"""Composed training wordings: subjects x predicates, for every phrase key.

The hand-written wordings of ``lexicon`` give a key about fifteen phrasings; a
model trained on them learns whole strings. Here each key is a small grammar
(who or what the clause is about, and what is said of it), and its product
gives a key hundreds of phrasings in which the same subject takes predicates
of different keys: "the load goes past the limit" against "the overload has
gone on past the grace period". The model has to read the word that decides.

These wordings are for the training split only. A composed wording is dropped
when it is a test wording, or becomes one once articles, possessives and the
device's name are set aside (``_norm``), so the test split's phrasings stay
unseen. The lists are built once, in a fixed order: a wording's id is stable
for a given version of this file (``dataset.GENERATOR``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import Final

# --- conditions ---------------------------------------------------------------

_LIMIT: Final = ("the limit", "the power limit", "the cap", "the allowed power", "the maximum")
_ITS_LIMIT: Final = ("its limit", "its power limit", "its cap", "its allowed power", "its maximum")
_POWER: Final = (
    "power", "consumption", "the power draw", "the draw", "the load", "usage", "power use",
    "demand", "the wattage", "the {dev}'s draw", "the {dev}'s consumption", "the {dev}'s load",
)  # fmt: skip
_GRACE: Final = ("the grace period", "the grace time", "the allowed grace", "the permitted time")
_OVERLOAD: Final = (
    "the overload", "the excess", "the overconsumption", "the high draw", "the {dev}'s overload",
    "the over-limit draw",
)  # fmt: skip
_GRACE_SUBJ: Final = (
    "the grace period", "the grace time", "the grace period of the overload",
    "the {dev}'s grace period", "the time allowed for the overload",
)  # fmt: skip
_DEVICE: Final = ("the {dev}", "the device")
_SCORE: Final = ("the anomaly score", "the {dev}'s anomaly score", "the anomaly level",
                 "the detector's score")  # fmt: skip
_READINGS: Final = ("the {dev}'s readings", "the measurements of the {dev}", "the {dev}'s data",
                    "the values from the {dev}")  # fmt: skip
_HOME: Final = ("the home", "the house", "the flat", "the apartment", "the building")
_PEOPLE: Final = ("the residents", "the occupants", "the tenants", "the inhabitants",
                  "the people who live here")  # fmt: skip
_SOMEONE: Final = ("someone", "somebody", "a person", "one of the residents")
_NOBODY: Final = ("nobody", "no one", "not a single person")
_RELAY: Final = ("the relay", "the {dev}'s relay", "its relay", "the relay in the {dev}")
_CONTACTS: Final = ("the relay contacts", "the contacts of the relay", "the {dev}'s relay contacts",
                    "the switch contacts of the {dev}")  # fmt: skip
_CIRCUIT: Final = ("the circuit to the {dev}", "the {dev}'s circuit", "the supply circuit",
                   "the {dev}'s power circuit")  # fmt: skip
_SUPPLY: Final = ("the {dev}'s supply", "the supply to the {dev}", "the {dev}'s power",
                  "the current to the {dev}")  # fmt: skip
_CLOCK: Final = ("the time", "the clock", "the hour", "the local time", "the current time")
_TARIFF: Final = ("the tariff", "the rate", "the electricity price", "the energy rate",
                  "the current tariff", "the price of power")  # fmt: skip
_ASKER: Final = ("the operator", "someone", "a user", "the resident")
_REQUEST: Final = ("the requested {what}", "the {what} request", "the operator's {what} request",
                   "the pending {what} request", "the {what} that was asked for")  # fmt: skip

# key -> groups of (subjects, predicates); a predicate may hold {L} (a limit
# phrase, from the group's third member) or {G} (a grace phrase).
_Group = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]

# fmt: off
CONDITIONS: Final[dict[str, tuple[_Group, ...]]] = {
    "power.over+": (
        (_POWER, ("is over {L}", "is above {L}", "exceeds {L}", "goes over {L}", "goes above {L}",
                  "goes past {L}", "is past {L}", "runs over {L}", "is higher than {L}",
                  "is beyond {L}", "has gone over {L}", "has passed {L}", "is greater than {L}",
                  "tops {L}", "breaks {L}", "is more than {L}"), _LIMIT),
        (_DEVICE, ("draws more than {L}", "is over {L}", "exceeds {L}", "goes past {L}",
                   "uses more than {L}", "runs above {L}", "has passed {L}", "is drawing above {L}",
                   "consumes more than {L}", "has gone beyond {L}"), _ITS_LIMIT),
    ),
    "power.over-": (
        (_POWER, ("is not over {L}", "does not exceed {L}", "does not go past {L}",
                  "stays within {L}", "is at or below {L}", "is no higher than {L}",
                  "has not passed {L}", "does not go over {L}", "is not above {L}",
                  "remains within {L}"), _LIMIT),
        (_DEVICE, ("does not draw more than {L}", "is not over {L}", "does not exceed {L}",
                   "stays within {L}", "has not passed {L}", "uses no more than {L}"), _ITS_LIMIT),
    ),
    "power.near+": (
        (_POWER, ("is near {L}", "is close to {L}", "is almost at {L}", "is just below {L}",
                  "is approaching {L}", "is nearing {L}", "is getting close to {L}",
                  "is only a little under {L}", "is right under {L}", "is closing in on {L}",
                  "is just short of {L}", "is edging up to {L}"), _LIMIT),
        (_DEVICE, ("is close to {L}", "is nearly at {L}", "is about to reach {L}", "is nearing {L}",
                   "is approaching {L}", "is just short of {L}", "has almost reached {L}",
                   "runs just below {L}"), _ITS_LIMIT),
    ),
    "power.near-": (
        (_POWER, ("is not near {L}", "is not close to {L}", "is not approaching {L}",
                  "is not nearing {L}", "is not just below {L}", "is not getting close to {L}"),
         _LIMIT),
        (_DEVICE, ("is not close to {L}", "is not nearing {L}", "is not about to reach {L}",
                   "has not almost reached {L}"), _ITS_LIMIT),
    ),
    "power.under+": (
        (_POWER, ("is under {L}", "is below {L}", "is well below {L}", "is well under {L}",
                  "stays below {L}", "is comfortably under {L}", "is far below {L}",
                  "is well within {L}", "is a long way under {L}"), _LIMIT),
        (_POWER, ("is low", "is light", "is small", "is modest", "is minor"), ("",)),
        (_DEVICE, ("stays below {L}", "is under {L}", "is well below {L}", "runs far below {L}",
                   "uses far less than {L}", "draws well under {L}"), _ITS_LIMIT),
        (_DEVICE, ("uses little power", "draws little", "draws very little", "is barely loaded",
                   "has a light load"), ("",)),
    ),
    "power.under-": (
        (_POWER, ("is not under {L}", "is not below {L}", "does not stay below {L}",
                  "is not well below {L}", "is not far below {L}"), _LIMIT),
        (_POWER, ("is not low", "is not light", "is not small"), ("",)),
        (_DEVICE, ("does not stay below {L}", "is not under {L}", "is not well below {L}"),
         _ITS_LIMIT),
    ),
    "grace.beyond+": (
        (_OVERLOAD, ("has lasted longer than {G}", "has lasted beyond {G}", "has outlasted {G}",
                     "has gone on past {G}", "has run past {G}", "is older than {G}",
                     "has exceeded {G}", "has continued after {G}", "has used up {G}",
                     "has persisted beyond {G}", "has overrun {G}"), _GRACE),
        (_GRACE_SUBJ, ("has run out", "has expired", "is over", "has passed", "has ended",
                       "is used up", "has elapsed"), ("",)),
        (("the {dev}", "the device"),
         ("has been over the limit for longer than {G}", "has stayed over the limit past {G}",
          "has been above the limit beyond {G}", "has been overloaded for longer than {G}",
          "has exceeded the limit for more than {G}"), _GRACE),
    ),
    "grace.within+": (
        (_OVERLOAD, ("is still within {G}", "has not yet outlasted {G}", "is still inside {G}",
                     "has lasted less than {G}", "is younger than {G}", "has not run past {G}",
                     "has not used up {G}", "is still covered by {G}", "has not exceeded {G}"),
         _GRACE),
        (_GRACE_SUBJ, ("has not run out", "has not expired", "is not over yet", "has not passed",
                       "is still running", "still applies", "has not elapsed"), ("",)),
        (("the {dev}", "the device"),
         ("is over the limit but still within {G}", "is above the limit but inside {G}",
          "went over the limit less than {G} ago", "has been overloaded for less than {G}",
          "is over the limit, still within {G}"), _GRACE),
    ),
    "anomaly.high+": (
        (_SCORE, ("is high", "is elevated", "is above normal", "is raised", "is abnormal",
                  "is unusually high"), ("",)),
        (_DEVICE, ("behaves oddly", "behaves strangely", "looks abnormal", "acts up",
                   "shows unusual behaviour", "looks suspicious", "is flagged by the detector",
                   "behaves abnormally", "looks wrong", "is acting weird"), ("",)),
        (_READINGS, ("look abnormal", "look odd", "look unusual", "look strange", "seem off",
                     "are out of the ordinary"), ("",)),
    ),
    "anomaly.high-": (
        (_SCORE, ("is not high", "is not elevated", "is not raised", "is not above normal"), ("",)),
        (_DEVICE, ("does not behave oddly", "is not flagged by the detector", "does not look wrong",
                   "does not act up", "does not behave abnormally"), ("",)),
        (_READINGS, ("do not look unusual", "do not look strange", "do not seem off"), ("",)),
    ),
    "anomaly.normal+": (
        (_SCORE, ("is normal", "is ordinary", "is in the normal range", "is as usual",
                  "is within the normal band"), ("",)),
        (_DEVICE, ("behaves normally", "looks normal", "behaves as expected", "seems healthy",
                   "runs as usual", "looks fine", "shows normal behaviour", "works normally",
                   "is in good shape"), ("",)),
        (_READINGS, ("look normal", "look fine", "look ordinary", "look as expected",
                     "seem healthy"), ("",)),
    ),
    "anomaly.normal-": (
        (_SCORE, ("is not normal", "is not ordinary", "is outside the normal range"), ("",)),
        (_DEVICE, ("does not behave normally", "does not look normal", "does not seem healthy",
                   "does not run as usual", "is not in good shape"), ("",)),
        (_READINGS, ("do not look fine", "do not look ordinary", "do not seem healthy"), ("",)),
    ),
    "occupancy+": (
        (_HOME, ("is occupied", "has people in it", "has someone in it", "is lived in right now"),
         ("",)),
        (_PEOPLE, ("are at home", "are in", "are present", "are home", "are inside", "are around"),
         ("",)),
        (_SOMEONE, ("is at home", "is home", "is inside", "is present", "is in the house"), ("",)),
    ),
    "occupancy-": (
        (_HOME, ("is empty", "is unoccupied", "has nobody in it", "is vacant", "is deserted"),
         ("",)),
        (_PEOPLE, ("are away", "are out", "are gone", "are not at home", "are not home",
                   "have left"), ("",)),
        (_NOBODY, ("is at home", "is home", "is inside", "is present", "is in the house"), ("",)),
    ),
    "critical+": (
        (("the {dev}", "this device", "the device"),
         ("is critical", "is marked critical", "is essential", "is tagged as critical",
          "has the critical flag", "is a critical device", "is marked as vital",
          "is on the essential list", "must always stay powered", "must keep running",
          "is flagged critical"), ("",)),
    ),
    "critical-": (
        (("the {dev}", "this device", "the device"),
         ("is not critical", "is not marked critical", "is not essential", "has no critical flag",
          "is not a critical device", "is not on the essential list", "is non-critical",
          "is not marked as vital", "is not tagged as critical"), ("",)),
    ),
    "relay.on+": (
        (("the {dev}",), ("is on", "is switched on", "is powered", "is energized", "is live",
                          "is powered up", "is turned on", "has power right now"), ("",)),
        (_RELAY, ("is on", "is closed", "is engaged", "is switched on", "is in the closed position",
                  "is pulled in", "has closed", "stands closed", "is shut"), ("",)),
        (_CONTACTS, ("are closed", "are made", "are touching", "have closed"), ("",)),
        (_CIRCUIT, ("is closed", "is complete", "is made", "is live"), ("",)),
        (_SUPPLY, ("is on", "is connected", "is flowing", "is switched on"), ("",)),
    ),
    "relay.off+": (
        (("the {dev}",), ("is off", "is switched off", "is unpowered", "is without power",
                          "is powered down", "is turned off", "has no power right now"), ("",)),
        (_RELAY, ("is off", "is open", "is released", "is switched off", "is in the open position",
                  "has dropped out", "has opened", "stands open", "is tripped"), ("",)),
        (_CONTACTS, ("are open", "are apart", "are not touching", "have opened"), ("",)),
        (_CIRCUIT, ("is open", "is broken", "is interrupted", "is dead"), ("",)),
        (_SUPPLY, ("is off", "is cut", "is disconnected", "is switched off", "is interrupted"),
         ("",)),
    ),
    "time+": (
        (_CLOCK, ("is between {a} and {b}", "is within {a}-{b}", "falls in {a} to {b}",
                  "lies in the window {a} to {b}", "is inside {a} to {b}",
                  "reads between {a} and {b}", "is in the span {a}-{b}",
                  "is somewhere from {a} to {b}"), ("",)),
        (("it is", "we are"), ("between {a} and {b}", "within {a}-{b}",
                               "inside the hours {a} to {b}", "in the period {a} to {b}"), ("",)),
    ),
    "time-": (
        (_CLOCK, ("is not between {a} and {b}", "is outside {a}-{b}", "falls outside {a} to {b}",
                  "lies outside the window {a} to {b}", "is not within {a} to {b}",
                  "is not in the span {a}-{b}"), ("",)),
        (("it is", "we are"), ("not between {a} and {b}", "outside {a}-{b}",
                            "outside the hours {a} to {b}", "not in the period {a} to {b}"), ("",)),
    ),
    "tariff.peak+": (
        (_TARIFF, ("is peak", "is at peak", "is at its peak", "is high", "is at the peak rate",
                   "is at the expensive rate", "is in the peak band", "is at its highest"), ("",)),
    ),
    "tariff.peak-": (
        (_TARIFF, ("is not peak", "is not at peak", "is not high", "is not at the peak rate",
                   "is not in the peak band"), ("",)),
    ),
    "tariff.off-peak+": (
        (_TARIFF, ("is off-peak", "is at the off-peak rate", "is low", "is cheap",
                   "is at the cheap rate", "is in the off-peak band", "is at its lowest"), ("",)),
    ),
    "tariff.off-peak-": (
        (_TARIFF, ("is not off-peak", "is not at the off-peak rate", "is not low", "is not cheap",
                   "is not in the off-peak band"), ("",)),
    ),
    "request.ok+": (
        (_ASKER, ("asks for a {what} the device can accept", "requests a {what} within range",
                  "wants a {what} the device can handle", "has requested an allowed {what}",
                  "asks for a {what} inside the device's range"), ("",)),
        (_REQUEST, ("is within range", "is acceptable", "is allowed", "suits the device",
                    "is inside the device's range", "is valid for the device"), ("",)),
    ),
    "request.too_high+": (
        (_ASKER, ("asks for a {what} the device cannot accept", "requests a {what} out of range",
                  "wants a {what} above the device's maximum", "has requested too high a {what}",
                  "asks for a {what} over the device's range"), ("",)),
        (_REQUEST, ("is too high", "is above the device's range", "is out of range",
                    "exceeds the device's maximum", "is more than the device can take",
                    "is over the device's limit"), ("",)),
    ),
}
# fmt: on

# --- actions: verbs x objects x tails -------------------------------------------

_IT: Final = ("the {dev}", "it", "the device")
_TARGETS: Final = {  # an action key -> (what is set, its unit with a leading space or "")
    "act.limit.set": (("the limit", "the power limit", "the cap", "the {dev}'s limit"), " W"),
    "act.sample.set": (("the sampling interval", "the sample period", "the reading interval"),
                       " ms"),
    "act.fan.speed": (("the fan speed", "the fan level", "the fan"), ""),
    "act.heater.set": (("the heater", "the target temperature", "the thermostat"), " degrees"),
    "act.charge.set": (("the charging current", "the charge current", "the charger"), " A"),
    "act.light.dim": (("the light", "the brightness", "the lamp"), " percent"),
}  # fmt: skip
_ON_DEVICE: Final = {  # an action key -> (verb, preposition): "<verb> the {dev} <prep> {v}"
    "act.limit.set": (("hold", "to"), ("keep", "at"), ("cap", "at"), ("limit", "to"),
                      ("restrict", "to"), ("clamp", "at"), ("throttle", "to"), ("keep", "under"),
                      ("hold", "at"), ("hold", "below")),
    "act.heater.set": (("heat", "to"), ("warm", "to"), ("run", "at"), ("set", "to"),
                       ("hold", "at"), ("keep", "at")),
    "act.charge.set": (("charge", "at"), ("run", "at"), ("set", "to"), ("hold", "at"),
                       ("limit", "to")),
    "act.fan.speed": (("run", "at"), ("set", "to"), ("spin", "at"), ("put", "on")),
    "act.light.dim": (("dim", "to"), ("set", "to"), ("run", "at"), ("bring", "to"),
                      ("hold", "at")),
    "act.sample.set": (("read", "every"), ("poll", "every"), ("sample", "every"),
                       ("measure", "every"), ("check", "every")),
}  # fmt: skip
_ASKED: Final = ("the operator asked for", "that was requested", "the operator wants",
                 "in the operator's request", "that was asked for")  # fmt: skip
_SET: Final = ("set {t} to", "change {t} to", "put {t} at", "bring {t} to", "make {t}",
               "adjust {t} to", "move {t} to")  # fmt: skip


def _actions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    objects = ("the {dev}", "it", "everything", "things", "the device")
    tails = ("as is", "unchanged", "untouched", "the way it is", "just as it is")
    out["act.none"] = [
        *(f"leave {o} {t}" for o, t in itertools.product(objects, ("alone", *tails))),
        *(f"keep {o} {t}" for o, t in itertools.product(objects, tails)),
        *(f"{a}{t}" for a, t in itertools.product(
            ("do nothing", "take no action", "change nothing", "make no changes"),
            ("", " for now", " to the {dev}", " at all"))),
        *(f"let {o} {t}" for o, t in itertools.product(objects, (
            "be", "alone", "stay as it is", "stay as is", "rest", "stay unchanged",
            "remain as it is", "carry on as it is", "stay the way it is"))),
        "stay put", "wait and do nothing", "do not act", "do not intervene", "sit tight",
        "leave well alone", "let well alone", "do not interfere", "hands off",
    ]  # fmt: skip
    off = ("switch {o} off", "turn {o} off", "switch off {o}", "turn off {o}", "power {o} down",
           "shut {o} off", "cut the power to {o}", "disconnect {o}", "de-energize {o}",
           "remove the power from {o}")  # fmt: skip
    on = ("switch {o} on", "turn {o} on", "switch on {o}", "turn on {o}", "power {o} up",
          "turn {o} back on", "restore the power to {o}", "reconnect {o}", "re-energize {o}",
          "bring {o} back on")  # fmt: skip
    out["act.relay.off"] = [p.format(o=o) for p in off for o in _IT] + [
        "open the relay",
        "open the {dev}'s relay",
        "switch the relay off",
        "release the relay",
    ]
    out["act.relay.on"] = [p.format(o=o) for p in on for o in _IT] + [
        "close the relay",
        "close the {dev}'s relay",
        "switch the relay on",
        "engage the relay",
    ]
    for key, (things, unit) in _TARGETS.items():
        out[key] = [f"{s.format(t=t)} {{v}}{unit}" for s in _SET for t in things]
        out[key] += [f"{v} {o} {p} {{v}}{unit}" for v, p in _ON_DEVICE.get(key, ()) for o in _IT]
        out[f"{key}.req"] = [
            *(
                f"{s.format(t=t)} the value {a}"
                for s, t, a in itertools.product(_SET, things, _ASKED)
            ),
            *(f"use {t} {a}" for t, a in itertools.product(things, _ASKED)),
        ]
    del out["act.light.dim.req"], out["act.sample.set.req"]  # no request targets these
    out["act.reboot"] = [f"{v} {o}" for v in ("reboot", "restart", "reset", "power-cycle",
                                               "cycle the power of") for o in _IT]  # fmt: skip
    out["act.notify.urgent"] = [
        f"{v} {w}" for v, w in itertools.product(
            ("alert the operator", "notify the operator", "message the operator",
             "warn the operator", "page the operator", "send the operator a notice"),
            ("urgently", "with high priority", "as an emergency", "right now, urgent",
             "and mark it urgent"))]  # fmt: skip
    out["act.notify.routine"] = [
        f"{v} {w}" for v, w in itertools.product(
            ("alert the operator", "notify the operator", "message the operator",
             "tell the operator", "send the operator a notice"),
            ("with low priority", "without urgency", "as a routine matter", "when convenient",
             "and mark it routine"))]  # fmt: skip
    return out


def _conditions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, groups in CONDITIONS.items():
        items = out.setdefault(key, [])
        for subjects, preds, fill in groups:
            for s, p, f in itertools.product(subjects, preds, fill):
                items.append(f"{s} {p.replace('{L}', f).replace('{G}', f)}")
    return out


_DROP: Final = re.compile(r"\b(the|a|an|its|of|is|are|it|this|device)\b|\{dev\}|'s")


def _norm(text: str) -> str:
    """A wording as a bag of words, without articles, possessives, the
    device's name (or "it", "this device"), the verb 'to be' or a plural 's':
    two wordings equal here are one phrasing in another order."""
    words = _DROP.sub(" ", text.lower()).split()
    return " ".join(sorted(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words))


def composed(reserved: Iterable[str], taken: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every key's composed wordings, without those that ``_norm`` maps onto a
    ``reserved`` text (the test split's) and without those already ``taken``
    (the hand-written training wordings), each text once across all keys."""
    held = {_norm(t) for t in reserved}
    seen = {t.lower() for t in taken}
    out: dict[str, tuple[str, ...]] = {}
    for key, items in {**_conditions(), **_actions()}.items():
        keep = []
        for text in items:
            if _norm(text) in held or text.lower() in seen:
                continue
            seen.add(text.lower())
            keep.append(text)
        out[key] = tuple(keep)
    return out
