"""Operators' policies in words per device class: the config table, the
POLICY_SET entry applied to a real LMDB store (set, replace, remove, bad
entries), its snapshot, and the precedence the LLM tier reads."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.core import config as c
from hub.decide.policies import Policies
from hub.state import entries as e
from hub.state import policies as stored
from hub.state.apply import Outcome
from hub.state.store import Store
from tests.unit.test_hub_config import GOOD, load

pytestmark = pytest.mark.unit

MAP = 16 << 20


# -- the config --------------------------------------------------------------------


def test_config_reads_a_policy_per_device_class(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        GOOD + '[decisions]\npolicy = "The default."\n'
        "[decisions.policies]\n"
        'heater = """Never switch a heater off.\r\nAlert instead."""\n'
        'plug = "Switch a plug off over its limit."\n',
    ).decisions
    assert cfg.policies == (
        ("heater", "Never switch a heater off.\nAlert instead."),
        ("plug", "Switch a plug off over its limit."),
    )
    assert cfg.policy_of_class("plug") == "Switch a plug off over its limit."
    assert cfg.policy_of_class("meter") is None
    assert load(tmp_path, GOOD).decisions.policies == ()


@pytest.mark.parametrize(
    ("table", "key", "said"),
    [
        ('"a b" = "x"', "decisions.policies.a b", "device class 'a b': 1-64 letters"),
        ('"plug-1" = "x"', "decisions.policies.plug-1", "device class 'plug-1'"),
        (f'{"c" * 65} = "x"', "decisions.policies." + "c" * 65, "1-64 letters"),
        ('plug = ""', "decisions.policies.plug", "the policy is empty"),
        ('plug = " \\n "', "decisions.policies.plug", "the policy is empty"),
        ('plug = "a\\tb"', "decisions.policies.plug", "control character U+0009"),
        ('plug = "a\\u0085b"', "decisions.policies.plug", "control character U+0085"),
        (f'plug = "{"w" * 4001}"', "decisions.policies.plug", "4001 characters, at most 4000"),
        ("plug = 3", "decisions.policies.plug", "expected the policy in words"),
    ],
)
def test_a_bad_policy_in_the_config_names_its_key(
    tmp_path: Path, table: str, key: str, said: str
) -> None:
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, GOOD + f"[decisions.policies]\n{table}\n")
    assert err.value.key == key and said in err.value.problem, str(err.value)


@pytest.mark.parametrize(
    ("value", "said"),
    [('""', "empty"), ('"' + "x" * 4001 + '"', "4001 characters"), ('"a\\u0007b"', "U+0007")],
)
def test_a_bad_default_policy_names_its_key(tmp_path: Path, value: str, said: str) -> None:
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, GOOD + f"[decisions]\npolicy = {value}\n")
    assert err.value.key == "decisions.policy" and said in err.value.problem, str(err.value)


def test_policies_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, GOOD + '[decisions]\npolicies = "x"\n')
    assert err.value.key == "decisions.policies" and "device class = policy" in err.value.problem


def test_a_policy_of_4000_characters_and_newlines_is_taken(tmp_path: Path) -> None:
    words = ("é" * 3998) + "\\n!"
    cfg = load(tmp_path, GOOD + f'[decisions.policies]\nplug = "{words}"\n').decisions
    assert cfg.policy_of_class("plug") == "é" * 3998 + "\n!"


def test_device_class_is_the_id_up_to_its_first_dash() -> None:
    assert [c.device_class(d) for d in ("plug-7", "heater-a-2", "meter")] == [
        "plug",
        "heater",
        "meter",
    ]
    retention = c.RetentionConfig(raw_days=3, classes=(("heater", 9.0),))
    assert (retention.raw_days_of("heater-a-2"), retention.raw_days_of("plug-1")) == (9.0, 3.0)


def test_the_entry_and_the_config_agree_on_names_and_lengths() -> None:
    assert e.DEVICE_CLASS.pattern == c.DEVICE_CLASS.pattern
    assert e.MAX_POLICY_CHARS == c.MAX_POLICY_CHARS


# -- the entry and apply ------------------------------------------------------------


class Log:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = 0

    def raw(self, data: bytes) -> Outcome:
        self.index += 1
        (res,) = self.store.apply([(self.index, data)])
        self.last = res
        return res.outcome

    def apply(self, entry: e.Entry) -> Outcome:
        return self.raw(e.encode(entry))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    s = Store(tmp_path / "store", map_size=MAP)
    yield Log(s)
    s.close()


def table(store: Store) -> dict[str, tuple[str, int, str]]:
    return {p.device_class: (p.text, p.at_ms, p.by) for p in store.read_tables(stored.every)}


def test_the_entry_round_trips() -> None:
    for sp in (
        e.SetPolicy("heater", "Line one.\nLine two ✓", 7, "ola"),
        e.SetPolicy("a.b", "", 8, "x"),
    ):
        assert e.decode(e.encode(sp)) == sp


def test_set_replace_and_remove(log: Log) -> None:
    empty = log.store.content_hash()
    assert log.apply(e.SetPolicy("heater", "Never off.", 10, "ola")) is Outcome.APPLIED
    assert table(log.store) == {"heater": ("Never off.", 10, "ola")}
    first = log.store.content_hash()
    assert first != empty  # the table is content: every replica holds it
    # The same words again keep the first record: no churn of the hash.
    assert log.apply(e.SetPolicy("heater", "Never off.", 20, "ann")) is Outcome.UNCHANGED
    assert log.store.content_hash() == first
    assert log.apply(e.SetPolicy("heater", "Off after 22:00.", 30, "ann")) is Outcome.APPLIED
    assert log.store.read_tables(stored.one("heater")) is not None
    assert table(log.store) == {"heater": ("Off after 22:00.", 30, "ann")}
    assert log.apply(e.SetPolicy("plug", "Plugs.", 31, "ann")) is Outcome.APPLIED
    assert list(table(log.store)) == ["heater", "plug"]
    assert log.apply(e.SetPolicy("heater", "", 40, "ann")) is Outcome.APPLIED
    assert log.store.read_tables(stored.one("heater")) is None and list(table(log.store)) == [
        "plug"
    ]
    assert log.apply(e.SetPolicy("heater", "", 41, "ann")) is Outcome.UNCHANGED
    assert log.apply(e.SetPolicy("plug", "", 42, "ann")) is Outcome.APPLIED
    assert log.store.content_hash() == empty


def _raw(device_class: bytes, text: bytes, by: bytes = b"ola") -> bytes:
    """A POLICY_SET entry's bytes as a faulty or hostile proposer could send
    them, past the encoder's checks."""
    p = e.Packer().u8(e.ENTRY_VERSION).u8(e.EntryType.POLICY_SET).blob8(device_class)
    p.u16(len(text)).raw(text).u64(5).blob8(by)
    return bytes(p)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_raw(b"plug-1", b"x"), "bad_value"),  # not a class: a device id
        (_raw(b"", b"x"), "bad_value"),
        (_raw(b"c" * 65, b"x"), "bad_value"),
        (_raw(b"plug", b"a\tb"), "bad_value"),
        (_raw(b"plug", "a\u009bb".encode()), "bad_value"),
        (_raw(b"plug", b" \n "), "bad_value"),
        (_raw(b"plug", b"w" * 4001), "bad_value"),
        (_raw(b"plug", b"x", b""), "bad_value"),
        (_raw(b"plug", b"\xff"), "bad_utf8"),
        (_raw(b"plug", b"x")[:-2], "truncated"),
        (_raw(b"plug", b"x") + b"\0", "trailing_bytes"),
    ],
    ids=[
        "device-id",
        "empty-class",
        "long-class",
        "tab",
        "c1-control",
        "blanks",
        "4001-chars",
        "no-author",
        "not-utf8",
        "truncated",
        "trailing",
    ],
)
def test_a_bad_entry_is_rejected_and_changes_nothing(log: Log, data: bytes, reason: str) -> None:
    log.apply(e.SetPolicy("plug", "Plugs.", 1, "ola"))
    before = log.store.content_hash()
    assert log.raw(data) is Outcome.REJECTED
    assert log.last.reason == reason
    assert log.store.content_hash() == before
    assert table(log.store) == {"plug": ("Plugs.", 1, "ola")}


@pytest.mark.parametrize(
    "bad",
    [
        e.SetPolicy("plug-1", "x", 1, "ola"),
        e.SetPolicy("plug", "a\rb", 1, "ola"),
        e.SetPolicy("plug", "w" * 4001, 1, "ola"),
        e.SetPolicy("plug", "\ud800", 1, "ola"),  # a lone surrogate: no UTF-8
        e.SetPolicy("plug", "x", 1, ""),
    ],
)
def test_the_encoder_refuses_what_apply_would(bad: e.SetPolicy) -> None:
    with pytest.raises(e.EntryError) as err:
        e.encode(bad)
    assert err.value.reason == "bad_value"


def test_the_policies_travel_in_a_snapshot(log: Log, tmp_path: Path) -> None:
    log.apply(e.SetPolicy("heater", "Never off.\nAlert.", 10, "ola"))
    buf = io.BytesIO()
    log.store.snapshot_to(buf)
    buf.seek(0)
    Store.install(tmp_path / "copy", buf, map_size=MAP)
    with Store(tmp_path / "copy", map_size=MAP) as copy:
        assert table(copy) == {"heater": ("Never off.\nAlert.", 10, "ola")}
        assert copy.content_hash() == log.store.content_hash()


# -- the precedence ------------------------------------------------------------------


def test_the_class_policy_then_the_configs_then_the_default(log: Log) -> None:
    cfg = c.DecisionsConfig(policy="Default words.", policies=(("plug", "Config plug words."),))
    p = Policies(cfg)
    got = p.of_device(log.store, "plug-1")
    assert (got.text, got.source) == ("Config plug words.", "config")
    got = p.of_device(log.store, "heater-1")
    assert (got.text, got.source) == ("Default words.", "default")
    log.apply(e.SetPolicy("plug", "API plug words.", 50, "ola"))
    log.apply(e.SetPolicy("heater", "API heater words.", 51, "ann"))
    got = p.of_device(log.store, "plug-1")
    assert (got.text, got.source, got.at_ms, got.by) == ("API plug words.", "api", 50, "ola")
    assert p.of_device(log.store, "heater-2").text == "API heater words."
    assert p.of_device(log.store, "meter-1").source == "default"
    assert {k: v.source for k, v in p.classes(log.store).items()} == {
        "heater": "api",
        "plug": "api",
    }
    log.apply(e.SetPolicy("plug", "", 60, "ola"))  # back to the config's
    got = p.of_device(log.store, "plug-1")
    assert (got.text, got.source) == ("Config plug words.", "config")
    assert p.default.text == "Default words." and p.default.source == "default"
