"""`aiot ask` from a real store: operator commands in the ledger explain a
switch-off as decisions do, and a device the asker cannot see (none by that
name, or not theirs) gets one plain answer, the same for both."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hub.decide import explain as ex
from hub.decide.explain import explain
from hub.http.principal import Principal
from hub.http.routes.ask import StoreView
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit
T = TypeVar("T")
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
T0 = 1_763_700_000_000
OFF = (m.Param("on", False),)
ON = (m.Param("on", True),)


class Reader:
    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, fn: Callable[[Store], T]) -> T:
        return fn(self.store)


def command(
    cid: str, device: str, seq: int, at: int, params: tuple[m.Param, ...], detail: str
) -> list[Any]:
    """The device's command ``seq``, issued at ``at`` and DONE 900 ms later
    with ``detail``."""
    return [
        e.PutCommand(cid, device, 1, "relay.set", params, at, at + 60_000),
        e.RecordResult(
            m.CommandResult(cid, device, seq, m.CommandStatus.DONE, detail=detail),
            "hub-2",
            at + 900,
        ),
    ]


def rule_off(did: str, device: str, at: int, cid: str) -> e.Decision:
    record = {
        "rule": "plug-over-limit",
        "description": "A plug over its limit for 10 s is switched off.",
        "facts": ["power 2450 W is over the limit 2000 W for 10.2 s"],
        "action": {"name": "relay.set", "params": {"on": False}},
        "guard": {"outcome": "allowed"},
        "alert": True,
    }
    return e.Decision(did, device, e.Tier.RULES, at, cid, json.dumps(record).encode())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    devices = [
        e.RegisterDevice(e.Device(name, b"k" * 32, (RELAY,), 2000.0), 1)
        for name in ("plug-1", "plug-2", "plug-3")
    ]
    entries: list[Any] = [
        *devices,
        # plug-1: switched off by an operator's command; no decision.
        *command("c-op", "plug-1", 1, T0, OFF, "relay off"),
        # plug-2: a rule switched it off, then an operator switched it on and
        # off again, later.
        *command("c-rule", "plug-2", 1, T0, OFF, "relay off"),
        rule_off("d-rule", "plug-2", T0, "c-rule"),
        *command("c-on", "plug-2", 2, T0 + 60_000, ON, "relay on"),
        *command("c-off", "plug-2", 3, T0 + 120_000, OFF, "relay off"),
        # plug-3: an operator switched it off first, a rule later.
        *command("c-early", "plug-3", 1, T0, OFF, "relay off"),
        *command("c-late", "plug-3", 2, T0 + 60_000, OFF, "relay off"),
        rule_off("d-late", "plug-3", T0 + 60_000, "c-late"),
    ]
    with Store(tmp_path / "s") as s:
        s.apply([(i + 1, e.encode(x)) for i, x in enumerate(entries)])
        yield s


def view(store: Store, devices: frozenset[str] | None = None) -> StoreView:
    role = e.Role.ADMIN if devices is None else e.Role.VIEWER
    who = Principal("admin" if devices is None else "vera", role, devices)
    return StoreView(Reader(store), who)  # type: ignore[arg-type]


def test_an_operators_command_explains_a_switch_off(store: Store) -> None:
    a = explain("why did plug-1 switch off?", view(store))
    assert a.method == "rules" and a.sources == ["c-op"]
    assert "command c-op (relay.set on=False) was issued for plug-1 by an operator" in a.text
    assert "no decision of the hub issued it" in a.text
    assert "Command c-op is DONE" in a.text and "the device answered DONE (relay off)" in a.text
    # Grounded: the times it states are the command's (issued, and DONE
    # 900 ms later, both in the same second), and no other device is named.
    assert re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", a.text) == ["2025-11-21 04:40:00"] * 2
    assert re.findall(r"plug-\d", a.text) == ["plug-1"]


def test_the_latest_event_answers_be_it_a_decision_or_a_command(store: Store) -> None:
    later_operator = explain("why did plug-2 turn off", view(store))
    assert later_operator.sources == ["c-off"] and "by an operator" in later_operator.text
    later_rule = explain("why did plug-3 switch off?", view(store))
    assert later_rule.sources == ["d-late", "c-late"] and "plug-over-limit" in later_rule.text
    latest = explain("why did plug-2 get a command?", view(store))
    assert latest.sources == ["c-off"]
    # An alert is a decision's: the operator's commands do not answer it.
    assert explain("why did plug-2 raise an alert?", view(store)).sources == ["d-rule", "c-rule"]


def test_offline_is_not_a_switch_off(store: Store) -> None:
    a = explain("why is plug-1 offline?", view(store))
    assert "c-op" not in a.sources and "(offline)" in a.text


def test_a_device_that_does_not_exist_is_said_plainly(store: Store) -> None:
    for question in (
        "why did plug-9 switch off?",
        "why did plug 9 switch off?",
        "status of plug-9",
    ):
        a = explain(question, view(store))
        assert (a.text, a.method, a.sources) == ("I know no device plug-9.", "none", []), question
    both = explain("why did plug-1 and plug-9 switch off?", view(store))
    assert both.text.startswith("I know no device plug-9. At ") and both.sources == ["c-op"]


def test_a_viewer_asking_about_a_device_not_theirs_hears_what_a_missing_one_gets(
    store: Store,
) -> None:
    mine = view(store, frozenset({"plug-1"}))
    not_mine = explain("why did plug-2 switch off?", mine)
    missing = explain("why did plug-7 switch off?", mine)
    assert not_mine.text == "I know no device plug-2."
    assert missing.text == "I know no device plug-7."
    assert (not_mine.method, not_mine.sources) == (missing.method, missing.sources) == ("none", [])
    # What the view gives for a device not theirs: nothing at all.
    assert mine.decisions("plug-2", 10) == [] and mine.commands("plug-2") == []
    assert explain("why did plug-1 switch off?", mine).sources == ["c-op"]


def test_words_shaped_like_devices() -> None:
    known = ["plug-1", "kitchen.plug-2"]
    assert ex.unknown("why did plug-9 switch off on 2025-11-21?", known) == ["plug-9"]
    assert ex.unknown("why did PLUG-1 switch-off?", known) == []
    assert ex.unknown("did kitchen.plug-2 use 3 kWh", known) == []
    assert ex.unknown("plug 4 and plug 1", known) == ["plug-4"]
    assert ex.unknown("for 10 seconds", known) == []
