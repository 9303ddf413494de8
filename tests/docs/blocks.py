"""The command blocks of a Markdown document, and the substitutions it names.

    blocks(doc, "A hub cluster by hand")          # the ```sh blocks of that section
    substitutions(doc, "Trying this guide on one machine")
                                                  # {"from": "to"} from its table

A section runs from its heading to the next heading of the same or a higher
level. Only fences whose info string is exactly ``sh`` are commands; ``ini``,
``toml`` and the rest are files, and ``console`` shows output.

A substitution table has two columns of inline code: what the document says,
and what to run instead. Nothing else in a block is changed.
"""

from __future__ import annotations

import re
from pathlib import Path

_FENCE = re.compile(r"^```(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]*)`\s*\|")


def section(doc: Path, heading: str) -> list[str]:
    """The lines of the section titled ``heading`` (ValueError if missing)."""
    lines = doc.read_text().splitlines()
    start, level = None, 0
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m is None:
            continue
        if start is None and m.group(2) == heading:
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return lines[start:i]
    if start is None:
        raise ValueError(f"{doc.name} has no section {heading!r}")
    return lines[start:]


def blocks(doc: Path, heading: str, lang: str = "sh") -> list[str]:
    """The fenced ``lang`` blocks of a section, each as one string."""
    out: list[str] = []
    fence: str | None = None  # the open fence's language, None outside one
    body: list[str] = []
    for line in section(doc, heading):
        m = _FENCE.match(line)
        if m is None:
            if fence is not None:
                body.append(line)
        elif fence is None:
            fence, body = m.group(1), []
        else:
            if fence == lang:
                out.append("\n".join(body) + "\n")
            fence = None
    return out


def substitutions(doc: Path, heading: str) -> dict[str, str]:
    """The ``| `in the document` | `instead` |`` rows of a section's table."""
    out = {}
    for line in section(doc, heading):
        m = _ROW.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    if not out:
        raise ValueError(f"{doc.name}, {heading!r}: no substitution table")
    return out


def every_block(doc: Path, lang: str = "sh") -> list[tuple[str, str]]:
    """Every fenced ``lang`` block of the document in order, each with the
    heading of the section it stands in."""
    out: list[tuple[str, str]] = []
    heading = ""
    fence: str | None = None
    body: list[str] = []
    for line in doc.read_text().splitlines():
        m = _FENCE.match(line)
        if m is not None:
            if fence is None:
                fence, body = m.group(1), []
            else:
                if fence == lang:
                    out.append((heading, "\n".join(body) + "\n"))
                fence = None
        elif fence is not None:
            body.append(line)
        elif h := _HEADING.match(line):
            heading = h.group(2)
    return out


def substitute(text: str, table: dict[str, str]) -> str:
    """``text`` with each of the table's phrases replaced, the longest first
    (so that a row for a whole line wins over a row for a part of it)."""
    for phrase in sorted(table, key=len, reverse=True):
        text = text.replace(phrase, table[phrase])
    return text
