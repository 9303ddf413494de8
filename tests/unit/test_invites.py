"""Invitations (hub/state/invites.py) over real LMDB: a link works once and
until it expires, decided in apply from the entry and the store only."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state import invites
from hub.state.apply import Outcome
from hub.state.store import Store
from hub.state.users import check_password, hash_password

pytestmark = pytest.mark.unit

MAP = 64 << 20
T0 = 1_780_000_000_000
HOUR = 3_600_000
PASSWORD = "a long enough one"


class Log:
    """A store and the next Raft index."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path, map_size=MAP)
        self.index = 0

    def apply(self, *entries: e.Entry) -> list[tuple[Outcome, str]]:
        batch = []
        for entry in entries:
            self.index += 1
            batch.append((self.index, e.encode(entry)))
        return [(res.outcome, res.reason) for res in self.store.apply(batch)]


def invite(name: str = "ann", token: str = "", **kw: object) -> tuple[str, e.Invite]:
    token = token or invites.new_token()
    fields: dict[str, object] = {
        "invite_id": invites.invite_id_of(token),
        "name": name,
        "role": e.Role.VIEWER,
        "devices": ("plug-1",),
        "expires_ms": T0 + 24 * HOUR,
        "by": "root",
        "at_ms": T0,
    }
    fields.update(kw)
    return token, e.Invite(**fields)  # type: ignore[arg-type]


def accept(token: str, at_ms: int, pw: bytes) -> e.AcceptInvite:
    return e.AcceptInvite(invites.invite_id_of(token), pw, at_ms)


@pytest.fixture(scope="module")
def pw() -> bytes:
    return hash_password(PASSWORD)


def test_entries_round_trip_and_refuse_bad_values(pw: bytes) -> None:
    token, inv = invite()
    assert invites.TOKEN.fullmatch(token)
    for entry in (inv, accept(token, T0, pw)):
        assert e.decode(e.encode(entry)) == entry
    for bad in (
        e.Invite("not-hex", "ann", e.Role.VIEWER, (), T0, "root", T0),
        e.Invite(inv.invite_id, "bad name", e.Role.VIEWER, (), T0, "root", T0),
        e.Invite(inv.invite_id, "ann", e.Role.VIEWER, ("bad/device",), T0, "root", T0),
        e.AcceptInvite(inv.invite_id, b"", T0),
    ):
        with pytest.raises(e.EntryError) as err:
            e.encode(bad)
        assert err.value.reason in ("bad_value", "bad_device_id")
    raw = bytearray(e.encode(inv))
    raw[2 + 33 + 4] = 9  # the role byte (after version, type, id and name): no role
    with pytest.raises(e.EntryError):
        e.decode(bytes(raw))


def test_a_link_works_once(tmp_path: Path, pw: bytes) -> None:
    log = Log(tmp_path / "s")
    token, inv = invite()
    assert log.apply(inv) == [(Outcome.APPLIED, "")]
    assert log.apply(inv) == [(Outcome.UNCHANGED, "")]  # a retried proposal
    assert log.store.user("ann") is None  # no user before the link is used
    assert log.apply(accept(token, T0 + HOUR, pw)) == [(Outcome.APPLIED, "")]
    user = log.store.user("ann")
    assert user is not None and user.role is e.Role.VIEWER and user.devices == ("plug-1",)
    assert check_password(user, PASSWORD)
    # The same acceptance proposed again changes nothing; any other is refused.
    assert log.apply(accept(token, T0 + HOUR, pw)) == [(Outcome.UNCHANGED, "")]
    other = hash_password("another password")
    before = log.store.content_hash()
    assert log.apply(accept(token, T0 + HOUR, other)) == [(Outcome.REJECTED, "invite_used")]
    assert log.store.content_hash() == before
    assert check_password(log.store.user("ann"), PASSWORD)  # type: ignore[arg-type]
    rec = log.store.read_tables(lambda txn, dbs: invites.get(txn, dbs, inv.invite_id))
    assert rec is not None and rec.used_ms == T0 + HOUR


def test_a_link_works_until_it_expires(tmp_path: Path, pw: bytes) -> None:
    log = Log(tmp_path / "s")
    token, inv = invite(expires_ms=T0 + HOUR)
    log.apply(inv)
    before = log.store.content_hash()
    assert log.apply(accept(token, T0 + HOUR, pw)) == [(Outcome.REJECTED, "invite_expired")]
    assert log.store.user("ann") is None and log.store.content_hash() == before
    assert log.apply(accept(token, T0 + HOUR - 1, pw)) == [(Outcome.APPLIED, "")]


def test_unknown_links_and_taken_names_are_refused(tmp_path: Path, pw: bytes) -> None:
    log = Log(tmp_path / "s")
    assert log.apply(accept(invites.new_token(), T0, pw)) == [(Outcome.REJECTED, "unknown_invite")]
    token, inv = invite("bob")
    log.apply(inv)
    # The name became a user meanwhile: the link cannot take it over.
    log.apply(e.User("bob", e.Role.ADMIN, pw, (), T0))
    assert log.apply(accept(token, T0 + 1, pw)) == [(Outcome.REJECTED, "user_exists")]
    assert log.store.user("bob").role is e.Role.ADMIN  # type: ignore[union-attr]
    # An invitation for a user that exists is refused; so is another one under the same id.
    assert log.apply(invite("bob")[1]) == [(Outcome.REJECTED, "user_exists")]
    _, same_id = invite("cid", token=token)
    assert log.apply(same_id) == [(Outcome.REJECTED, "invite_exists")]


def test_racing_acceptances_end_the_same_on_every_replica(tmp_path: Path, pw: bytes) -> None:
    # Two nodes propose an acceptance of the same link at once: one log, the
    # first one wins on every replica, and the replicas hold the same bytes.
    token, inv = invite()
    first, second = accept(token, T0 + 5, pw), accept(token, T0 + 4, hash_password("x" * 12))
    outcomes, hashes = [], []
    for name in ("a", "b"):
        log = Log(tmp_path / name)
        outcomes.append(log.apply(inv, first, second))
        hashes.append(log.store.content_hash())
        assert check_password(log.store.user("ann"), PASSWORD)  # type: ignore[arg-type]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1:] == [(Outcome.APPLIED, ""), (Outcome.REJECTED, "invite_used")]
    assert hashes[0] == hashes[1]


def test_invitations_travel_in_snapshots(tmp_path: Path, pw: bytes) -> None:
    log = Log(tmp_path / "a")
    token, inv = invite()
    log.apply(inv)
    buf = io.BytesIO()
    log.store.snapshot_to(buf)
    other = Store(tmp_path / "b", map_size=MAP)
    buf.seek(0)
    other.restore(buf)
    assert other.content_hash() == log.store.content_hash()
    (res,) = other.apply([(log.index + 1, e.encode(accept(token, T0 + 1, pw)))])
    assert res.outcome is Outcome.APPLIED and other.user("ann") is not None
