"""Hypothesis strategies for every wire message."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import messages as m

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=40)
f64 = st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless
f32 = st.floats(allow_nan=False, width=32)

readings = st.builds(m.Reading, u16, u16, f32)
batches = st.builds(
    m.TelemetryBatch, text, u32, u64, u64, st.lists(readings, max_size=64).map(tuple), u64
)
acks = st.builds(m.CommitAck, text, u64, u64)
param_values = st.one_of(i64, f64, st.booleans(), text)
params = st.builds(m.Param, text, param_values)
commands = st.builds(
    m.Command, text, text, u64, u64, text, st.lists(params, max_size=6).map(tuple), u64, u64
)
results = st.builds(
    m.CommandResult,
    text,
    text,
    u64,
    st.sampled_from(m.CommandStatus),
    st.sampled_from(m.Reason),
    text,
    u64,
)
specs = st.builds(m.ParamSpec, text, st.sampled_from(m.ParamKind), f64, f64)
capabilities = st.builds(m.Capability, text, st.lists(specs, max_size=4).map(tuple))
statuses = st.builds(
    m.DeviceStatus,
    text,
    st.sampled_from(m.LinkState),
    text,
    u32,
    u32,
    u32,
    u16,
    u32,
    u32,
    u32,
    u8,
    st.lists(capabilities, max_size=4).map(tuple),
)
messages = st.one_of(batches, acks, commands, results, statuses)
