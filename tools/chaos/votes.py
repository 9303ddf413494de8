"""Check V: no hub votes for two candidates in one Raft term.

Each hub logs every vote once it is stored (hub/state/journal.py,
``setCurrentTerm``; with ``durable_journal`` on, after the fsync and before
the vote is sent)::

    {"logger": "hub.raft.journal", "msg": "raft vote persisted: term 7 for 10.9.0.11:4301"}

The hubs' logs are outside their data directories and are appended to
across restarts, so they keep every vote a node cast, also the ones a power
cut took back from its disk. A node that forgot its vote (a term and vote
that did not reach the disk) can vote again in the same term, for someone
else: two candidates in one term is the violation.

    votes = parse_votes(log_text)          # [(term, candidate), ...] in order
    check_votes({"hub-1": votes, ...})     # (double votes, violations)
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from tools.chaos.checks import violation

VOTE_MARK: Final = "raft vote persisted"
_VOTE: Final = re.compile(r"^raft vote persisted: term (\d+) for (\S+)$")


def parse_votes(log_text: str) -> list[tuple[int, str]]:
    """Every vote a hub's JSON log records, in order."""
    out: list[tuple[int, str]] = []
    for line in log_text.splitlines():
        if VOTE_MARK not in line:
            continue
        try:
            msg = json.loads(line).get("msg", "")
        except (ValueError, AttributeError):
            continue
        m = _VOTE.match(msg)
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


def check_votes(votes: dict[str, list[tuple[int, str]]]) -> tuple[int, list[dict[str, Any]]]:
    """The number of (node, term) with votes for more than one candidate, and
    a violation for each."""
    violations: list[dict[str, Any]] = []
    for node, cast in sorted(votes.items()):
        by_term: dict[int, list[str]] = {}
        for term, candidate in cast:
            if candidate not in by_term.setdefault(term, []):
                by_term[term].append(candidate)
        for term, candidates in sorted(by_term.items()):
            if len(candidates) > 1:
                violations.append(
                    violation(
                        "V",
                        f"voted in term {term} for {', '.join(candidates)}",
                        node=node,
                    )
                )
    return len(violations), violations
