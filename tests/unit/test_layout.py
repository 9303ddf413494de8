"""The hand-written layouts follow the generated code slot for slot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge import codec as edge_codec
from protocol import verify

pytestmark = pytest.mark.unit

GENERATED = Path(verify.__file__).parent / "generated" / "aiot_generated.py"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def generated_slots() -> dict[str, dict[str, int]]:
    """{table: {Accessor: slot}} read from flatc's output."""
    text = GENERATED.read_text()
    tables: dict[str, dict[str, int]] = {}
    for block in re.split(r"^class ", text, flags=re.M)[1:]:
        name = block.split("(", 1)[0]
        fields = {
            acc: (int(off) - 4) // 2
            for acc, off in re.findall(
                r"def (\w+)\(self[^)]*\)[^\n]*\n\s+o = [^\n]*Offset\((\d+)\)", block
            )
            if not acc.endswith(("Length", "IsNone", "AsNumpy"))
        }
        if fields:
            tables[name] = fields
    return tables


def test_verifier_layout_matches_generated_code() -> None:
    slots = generated_slots()
    assert set(slots) == set(verify.LAYOUT)
    for table, fields in verify.LAYOUT.items():
        want = {_camel(name): slot for slot, (name, *_rest) in enumerate(fields)}
        assert slots[table] == want, table


def test_edge_specs_match_verifier_layout() -> None:
    specs = {
        "Envelope": edge_codec.ENVELOPE,
        "TelemetryBatch": edge_codec.TELEMETRY_BATCH,
        "CommitAck": edge_codec.COMMIT_ACK,
        "Param": edge_codec.PARAM,
        "Command": edge_codec.COMMAND,
        "CommandResult": edge_codec.COMMAND_RESULT,
        "ParamSpec": edge_codec.PARAM_SPEC,
        "Capability": edge_codec.CAPABILITY,
        "DeviceStatus": edge_codec.DEVICE_STATUS,
    }
    assert set(specs) == set(verify.LAYOUT)
    for table, spec in specs.items():
        assert [f[0] for f in spec] == [f[0] for f in verify.LAYOUT[table]], table
        assert [f[2] for f in spec] == [f[2] for f in verify.LAYOUT[table]], table


def test_union_order_matches_generated_enum() -> None:
    text = GENERATED.read_text()
    block = text.split("class Payload(object):", 1)[1].split("\n\n", 1)[0]
    members = dict(re.findall(r"(\w+) = (\d+)", block))
    for tag, name in enumerate(verify.UNION, start=1):
        assert int(members[name]) == tag
    assert edge_codec.TYPES == verify.UNION


def _generated_enum(name: str) -> dict[str, int]:
    text = GENERATED.read_text()
    block = text.split(f"class {name}(object):", 1)[1].split("\n\n", 1)[0]
    return {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", block)}


def test_enums_match_generated_code_everywhere() -> None:
    from protocol import messages as m

    pairs = [
        ("ParamKind", m.ParamKind, edge_codec.PARAM_KINDS),
        ("CommandStatus", m.CommandStatus, edge_codec.STATUSES),
        ("Reason", m.Reason, edge_codec.REASONS),
        ("LinkState", m.LinkState, edge_codec.LINK_STATES),
    ]
    layout_values = {
        "ParamKind": verify.LAYOUT["Param"][1][3],
        "CommandStatus": verify.LAYOUT["CommandResult"][3][3],
        "Reason": verify.LAYOUT["CommandResult"][4][3],
        "LinkState": verify.LAYOUT["DeviceStatus"][1][3],
    }
    for name, py_enum, edge_names in pairs:
        generated = _generated_enum(name)
        assert {e.name: e.value for e in py_enum} == generated, name
        assert {n: i for i, n in enumerate(edge_names)} == generated, name
        assert set(layout_values[name] or ()) == set(generated.values()), name
