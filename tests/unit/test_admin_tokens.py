"""Cluster admin tokens (hub/core/auth.py): their format and its bounds,
signature, lifetime and clocks; TOKEN_REVOKE entries, their apply over real
LMDB, snapshots that carry them; `aiot token create` and its arguments."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.core import auth
from hub.core.clock import wall_ms
from hub.state import entries as e
from hub.state import records as r
from hub.state.apply import Outcome
from hub.state.store import Store
from tools.base.paths import ROOT
from tools.cli.tokens import parse_ttl
from tools.lab.cluster import write_cluster

pytestmark = pytest.mark.unit

SECRET = "a cluster secret of some length, 0123456789"
NOW = 1_780_000_000_000
MAP = 16 << 20
HOUR_MS = 3_600_000


def mint(ttl_s: int = 3600, now_ms: int = NOW, secret: str = SECRET) -> tuple[str, auth.AdminToken]:
    return auth.mint_admin_token(secret, ttl_s, now_ms)


def verify(token: str, now_ms: int = NOW, max_ttl_s: int = auth.MAX_ADMIN_TTL_S) -> auth.AdminToken:
    return auth.verify_admin_token(SECRET, token, now_ms, max_ttl_s)


def refusal(token: str, now_ms: int = NOW, max_ttl_s: int = auth.MAX_ADMIN_TTL_S) -> str:
    with pytest.raises(auth.TokenError) as err:
        verify(token, now_ms, max_ttl_s)
    return str(err.value)


# -- the token ----------------------------------------------------------------------


def test_a_minted_token_verifies_and_says_what_it_claims() -> None:
    token, claim = mint(600)
    prefix, token_id, issued, expires, signature = token.split(".")
    assert prefix == "a1" and auth.TOKEN_ID.fullmatch(token_id) and len(signature) == 43
    assert (int(issued), int(expires)) == (NOW, NOW + 600_000)
    assert claim == auth.AdminToken(token_id, NOW, NOW + 600_000)
    assert verify(token) == claim
    assert len(token) <= auth.MAX_ADMIN_TOKEN
    assert auth.is_admin_token(token) and not auth.is_admin_token("v1.ann.1.x")
    # Each one has its own id.
    assert mint()[1].token_id != mint()[1].token_id


def test_admin_token_mints_an_hour_by_default() -> None:
    before = wall_ms()
    claim = auth.verify_admin_token(SECRET, auth.admin_token(SECRET), wall_ms())
    assert claim.expires_ms - claim.issued_ms == auth.ADMIN_TTL_S * 1000 == HOUR_MS
    assert before <= claim.issued_ms <= wall_ms()


def signed(token_id: str, issued_ms: int, expires_ms: int) -> str:
    body = f"a1.{token_id}.{issued_ms}.{expires_ms}"
    return f"{body}.{auth._admin_signature(SECRET, body)}"


def malformed(valid: str) -> list[str]:
    _, token_id, issued, expires, sig = valid.split(".")
    return [
        "",
        "a1.",
        "a1....",
        "garbage",
        valid.upper(),
        "a2" + valid[2:],
        "A1" + valid[2:],
        f"a1.{token_id.upper()}.{issued}.{expires}.{sig}",
        f"a1.{token_id}0.{issued}.{expires}.{sig}",
        f"a1.{token_id[:-1]}.{issued}.{expires}.{sig}",
        f"a1.{token_id}.{'9' * 16}.{expires}.{sig}",
        f"a1.{token_id}.{issued}.{'9' * 16}.{sig}",
        f"a1.{token_id}.{issued}..{sig}",
        f"a1.{token_id}.-1.{expires}.{sig}",
        f"a1.{token_id}.1e9.{expires}.{sig}",
        f"a1.{token_id}.\u00b2\u00b3.{expires}.{sig}",  # digits, but not ASCII ones
        f"a1.{token_id}.{issued}.{expires}.{sig[:-1]}",
        f"a1.{token_id}.{issued}.{expires}.{sig}A",
        f"a1.{token_id}.{issued}.{expires}.{sig}=",
        f"a1.{token_id}.{issued}.{expires}.{sig[:-1]}+",
        f"a1.{token_id}.{issued}.{expires}.{sig}.x",
        f" {valid}",
        f"{valid}\n",
        valid + valid,
        "a1." + "0" * 1_000_000,
        "a1." + "." * 5000,
    ]


def test_tokens_of_any_other_shape_are_not_admin_tokens() -> None:
    valid, _ = mint()
    for token in malformed(valid):
        assert refusal(token) == "not an admin token", token[:80]


def test_a_token_another_secret_signed_or_an_edited_one_is_refused() -> None:
    other, _ = mint(secret="another cluster's secret, 0123456789")
    assert "not signed by this cluster" in refusal(other)
    valid, claim = mint(600)
    longer = valid.replace(f".{claim.expires_ms}.", f".{claim.expires_ms + 3_600_000}.")
    assert "not signed by this cluster" in refusal(longer)
    renamed = valid.replace(claim.token_id, "0" * 16)
    assert "not signed by this cluster" in refusal(renamed)


def test_expiry_lifetime_and_clocks() -> None:
    token, _ = mint(600)
    assert verify(token, NOW + 599_999)
    assert "expired" in refusal(token, NOW + 600_000)
    assert "expired" in refusal(token, NOW + 10 * HOUR_MS)
    # A lifetime over the verifier's limit, and over the absolute one whatever the limit.
    day, _ = mint(86_400)
    assert verify(day, NOW, max_ttl_s=86_400)
    assert "lifetime" in refusal(day, NOW, max_ttl_s=86_399)
    year = auth.mint_admin_token(SECRET, auth.MAX_ADMIN_TTL_S, NOW)[0]
    assert verify(year, NOW)
    assert "lifetime" in refusal(year, NOW, max_ttl_s=30 * 86_400)
    # Signed with the secret by hand (mint refuses it): a day over the absolute limit.
    longer = signed("0" * 16, NOW, NOW + (auth.MAX_ADMIN_TTL_S + 86_400) * 1000)
    assert "lifetime" in refusal(longer, NOW, max_ttl_s=auth.MAX_ADMIN_TTL_S + 86_400)
    backwards = signed("0" * 16, NOW, NOW - 1)
    assert "lifetime" in refusal(backwards, NOW - 10)
    # Issued ahead of the verifier's clock: within the skew it passes, beyond it not.
    ahead, _ = mint(600, NOW + auth.CLOCK_SKEW_MS)
    assert verify(ahead, NOW)
    assert "in the future" in refusal(ahead, NOW - 1)


@pytest.mark.parametrize("ttl_s", [0, -1, auth.MAX_ADMIN_TTL_S + 1])
def test_mint_refuses_a_lifetime_out_of_range(ttl_s: int) -> None:
    with pytest.raises(ValueError, match="lives 1 s to"):
        auth.mint_admin_token(SECRET, ttl_s)


def test_revoked_ids_outlive_every_token() -> None:
    # Apply forgets a revoked id REVOKED_TOKEN_KEEP_MS after its revocation:
    # by then every token with that id has expired, even with clocks a
    # little apart.
    assert r.REVOKED_TOKEN_KEEP_MS >= auth.MAX_ADMIN_TTL_S * 1000 + 7 * 86_400_000
    assert e.TOKEN_ID.pattern == auth.TOKEN_ID.pattern


# -- the entry ----------------------------------------------------------------------


def test_revocation_entry_bytes_are_exact() -> None:
    entry = e.RevokeTokens("0123456789abcdef", 5, 7)
    data = e.encode(entry)
    assert data == bytes.fromhex(
        "01 12"  # version, type TOKEN_REVOKE (18)
        "10 30313233343536373839616263646566"  # str8 token id
        "0000000000000005"  # before_ms
        "0000000000000007"  # at_ms
    )
    assert e.decode(data) == entry
    for ok in (e.RevokeTokens("", 5, 7), e.RevokeTokens("ffffffffffffffff", 0, 0)):
        assert e.decode(e.encode(ok)) == ok
    for n in range(len(data)):
        with pytest.raises(e.EntryError):
            e.decode(data[:n])


@pytest.mark.parametrize(
    "entry",
    [
        e.RevokeTokens("", 0, 7),  # neither an id nor a cut-off
        e.RevokeTokens("0123456789ABCDEF", 0, 7),
        e.RevokeTokens("0123456789abcde", 0, 7),
        e.RevokeTokens("0123456789abcdef0", 0, 7),
        e.RevokeTokens("0123456789abcdeg", 0, 7),
    ],
)
def test_bad_revocations_are_refused_both_ways(entry: e.RevokeTokens) -> None:
    with pytest.raises(e.EntryError) as err:
        e.encode(entry)
    assert err.value.reason == "bad_value"
    raw = e.encode(e.RevokeTokens("0123456789abcdef", 5, 7))
    id_bytes = entry.token_id.encode()
    forged = raw[:2] + bytes([len(id_bytes)]) + id_bytes + bytes(8) + raw[-8:]
    with pytest.raises(e.EntryError) as err:
        e.decode(forged)
    assert err.value.reason == "bad_value"


# -- apply, reads, snapshots --------------------------------------------------------

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
LOG = [
    e.encode(e.RevokeTokens(A, 0, NOW)),
    e.encode(e.RevokeTokens(A, 0, NOW + 1)),  # again: the first time stands
    e.encode(e.RevokeTokens("", NOW - HOUR_MS, NOW + 2)),
    e.encode(e.RevokeTokens("", NOW - 2 * HOUR_MS, NOW + 3)),  # earlier: ignored
    e.encode(e.RevokeTokens(B, 0, NOW + 4)),
]


def numbered(log: list[bytes], start: int = 1) -> list[tuple[int, bytes]]:
    return list(enumerate(log, start))


def test_apply_records_ids_and_a_cut_off_that_only_moves_forward(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=MAP) as s:
        empty = s.content_hash()
        assert s.revoked_tokens() == ([], 0)
        assert s.token_revocation(A, NOW) is None
        outcomes = [res.outcome for res in s.apply(numbered(LOG))]
        assert outcomes == [
            Outcome.APPLIED,
            Outcome.UNCHANGED,
            Outcome.APPLIED,
            Outcome.UNCHANGED,
            Outcome.APPLIED,
        ]
        assert s.revoked_tokens() == ([(A, NOW), (B, NOW + 4)], NOW - HOUR_MS)
        assert s.token_revocation(A, NOW) == f"admin token {A} revoked"
        assert "cut-off" in (s.token_revocation("c" * 16, NOW - HOUR_MS - 1) or "")
        assert s.token_revocation("c" * 16, NOW - HOUR_MS) is None
        assert s.content_hash() != empty
        # A bad entry changes nothing, and the node goes on.
        bad = e.encode(e.RevokeTokens(A, 0, 1))
        bad = bad[:3] + b"Z" + bad[4:]
        (res,) = s.apply([(6, bad)])
        assert (res.outcome, res.reason) == (Outcome.REJECTED, "bad_value")
        assert s.revoked_tokens() == ([(A, NOW), (B, NOW + 4)], NOW - HOUR_MS)


def test_revoked_ids_are_forgotten_once_no_token_can_hold_them(tmp_path: Path) -> None:
    keep = r.REVOKED_TOKEN_KEEP_MS
    with Store(tmp_path / "s", map_size=MAP) as s:
        s.apply(numbered(LOG))
        # A later revocation, exactly at A's limit: A stays.
        s.apply([(6, e.encode(e.RevokeTokens("", 1, NOW + keep)))])
        assert [i for i, _ in s.revoked_tokens()[0]] == [A, B]
        # Past it: A goes, B (revoked 4 ms later) stays, the new id is kept.
        c = "cccccccccccccccc"
        (res,) = s.apply([(7, e.encode(e.RevokeTokens(c, 0, NOW + keep + 1)))])
        assert res.outcome is Outcome.APPLIED
        assert s.revoked_tokens()[0] == [(B, NOW + 4), (c, NOW + keep + 1)]
        assert s.token_revocation(A, NOW) is None


def test_replicas_agree_and_snapshots_carry_revocations(tmp_path: Path) -> None:
    with Store(tmp_path / "a", map_size=MAP) as a, Store(tmp_path / "b", map_size=MAP) as b:
        a.apply(numbered(LOG))
        for i, data in numbered(LOG):  # one at a time, as another replica might
            b.apply([(i, data)])
        assert a.content_hash() == b.content_hash()
        buf = io.BytesIO()
        a.snapshot_to(buf)
        want = a.revoked_tokens(), a.content_hash()
    buf.seek(0)
    assert Store.install(tmp_path / "c", buf, map_size=MAP) == len(LOG)
    with Store(tmp_path / "c", map_size=MAP) as c:
        assert (c.revoked_tokens(), c.content_hash()) == want
        assert c.token_revocation(B, NOW) is not None
        # Replayed entries are skipped; new ones apply.
        assert c.apply(numbered(LOG))[0].outcome is Outcome.SKIPPED


# -- the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28_800), ("7d", 604_800)]
)
def test_ttl_durations(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


def aiot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


def test_token_create_mints_a_token_the_cluster_accepts(tmp_path: Path) -> None:
    (config,) = write_cluster(tmp_path, 1)
    secret = (tmp_path / "cluster.secret").read_text().strip()
    out = aiot("token", "create", "--config", str(config), "--ttl", "8h", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    claim = auth.verify_admin_token(secret, doc["token"], wall_ms(), 30 * 86_400)
    assert (doc["id"], doc["issued_ms"], doc["expires_ms"]) == (
        claim.token_id,
        claim.issued_ms,
        claim.issued_ms + 8 * HOUR_MS,
    )
    text = aiot("token", "create", "-c", str(config))
    assert text.returncode == 0, text.stderr
    fields = dict(line.split(None, 1) for line in text.stdout.splitlines())
    assert set(fields) == {"token", "id", "issued", "expires"}
    assert auth.verify_admin_token(secret, fields["token"], wall_ms()).token_id == fields["id"]
    # Refused: over the config's limit (30 days by default), a bad duration, no config.
    for args, says in (
        (("--ttl", "31d", "-c", str(config)), "admin_token_max_ttl_s"),
        (("--ttl", "soon", "-c", str(config)), "expected a duration"),
        (("--ttl", "0", "-c", str(config)), "expected a duration"),
        ((), "which cluster?"),
    ):
        bad = aiot("token", "create", *args)
        assert bad.returncode == 2 and bad.stdout == "", (args, bad.stdout)
        assert bad.stderr.startswith("aiot: ") and says in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


def test_token_revoke_checks_its_arguments_before_asking_a_hub(tmp_path: Path) -> None:
    hub = ("--hub", "http://127.0.0.1:9", "--token", "t")
    for args, says in (
        ((), "give the ID of a token"),
        (("NOT-AN-ID",), "not a token id"),
        (("--all-before", "yesterday"), "expected now, ms since the epoch"),
    ):
        out = aiot("token", "revoke", *args, *hub)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
