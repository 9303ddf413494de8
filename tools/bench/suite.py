"""`aiot bench all`: every benchmark in one go, one JSON object, one report.

It runs, in this process and in this order, the functions behind `aiot bench
codec`, `edge`, `ingest`, `failover` and `decide`, then a short `soak` paced
at half the ingest rate just measured. Each benchmark measures its own
baseline in the same run. The result is one JSON object:

- ``table``: one row per figure: ``figure`` (``bench.key``), ``value``,
  ``baseline`` (measured in the same run, or None), ``ratio`` (value /
  baseline), ``bar`` and ``bar_met``, ``previous`` (the figure's last value
  in the history of the same machine class, or None), ``command`` (the
  standalone command with the parameters used);
- ``results``: every benchmark's own JSON object;
- ``machine`` (CPU model, cores, memory, kernel, Python, MicroPython,
  Mosquitto) and ``cpu``: what other processes used meanwhile, so that a
  figure taken on a shared machine says so;
- ``errors``: benchmarks that could not run, with the reason.

And it rewrites docs/BENCHMARKS.md (``out``): the block between the
``bench-all`` markers becomes this run's table, and this run's rows are added
to the history table between the ``history`` markers, after the rows already
there, so that a regression shows. Everything outside the markers is kept.

``quick``: tiny sizes for every benchmark, for the tests; its rows are marked
quick in the history, and ``previous`` never compares against them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.base.paths import ROOT, NotInstalled, micropython_binary
from tools.bench import watch
from tools.bench.codec import BenchError, codec
from tools.bench.decide import decide
from tools.bench.edge import edge
from tools.bench.failover import failover
from tools.bench.ingest import ingest
from tools.bench.soak import soak

DOC: Final = ROOT / "docs" / "BENCHMARKS.md"
BENCHES: Final = ("codec", "edge", "ingest", "failover", "decide", "soak")
TABLE_BEGIN: Final = "<!-- bench-all:begin (written by `aiot bench all`; edits here are lost) -->"
TABLE_END: Final = "<!-- bench-all:end -->"
HISTORY_BEGIN: Final = "<!-- history:begin (rows added by `aiot bench all`; older rows kept) -->"
HISTORY_END: Final = "<!-- history:end -->"
HISTORY_COLUMNS: Final = (
    "date",
    "figure",
    "value",
    "baseline",
    "ratio",
    "bar",
    "command",
    "machine",
    "note",
)
SHARED_CORES: Final = 0.25  # other processes' average CPU above this: a shared machine

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- parameters ------------------------------------------------------------------------------


def parameters(quick: bool, soak_minutes: float) -> dict[str, dict[str, Any]]:
    """Each benchmark's keyword arguments: the defaults of its own command,
    or tiny ones for ``quick``."""
    if quick:
        return {
            "codec": {"seconds": 0.3},
            "edge": {"readings": 2000, "rounds": 1, "flash_hours": 0.5, "failover_readings": 400},
            "ingest": {"duration_s": 3.0, "latency_s": 2.0, "warmup_s": 1.0, "devices": 6},
            "failover": {
                "kills": 1,
                "rate": 2000.0,
                "devices": 6,
                "settle_s": 4.0,
                "pre_s": 2.0,
                "observe_s": 20.0,
            },
            "decide": {"loops": 10, "background": 1, "llm_cases": 2},
            # Four samples after the warmup, as in 30 s at 5 s with 10 s of warmup.
            "soak": {
                "minutes": min(soak_minutes, 0.25),
                "devices": 6,
                "micropython_devices": 1,
                "sample_s": 2.5,
                "warmup_s": 5.0,
            },
        }
    return {
        "codec": {"seconds": 2.0},
        "edge": {"readings": 100_000, "rounds": 3, "flash_hours": None, "failover_readings": 1500},
        "ingest": {"duration_s": 60.0, "latency_s": 30.0, "warmup_s": 5.0, "devices": 48},
        "failover": {
            "kills": 5,
            "rate": 10_000.0,
            "devices": 48,
            "settle_s": 10.0,
            "pre_s": 5.0,
            "observe_s": 30.0,
        },
        "decide": {"loops": 300, "background": 5, "llm_cases": 300},
        "soak": {
            "minutes": soak_minutes,
            "devices": 48,
            "micropython_devices": 3,
            "sample_s": 10.0,
        },
    }


_FLAGS: Final = {
    "seconds": "--seconds",
    "readings": "--readings",
    "rounds": "--rounds",
    "flash_hours": "--flash-hours",
    "failover_readings": "--failover-readings",
    "duration_s": "--seconds",
    "latency_s": "--latency-seconds",
    "warmup_s": "--warmup",
    "devices": "--devices",
    "kills": "--kills",
    "rate": "--rate",
    "settle_s": "--settle",
    "pre_s": "--pre",
    "observe_s": "--observe",
    "loops": "--loops",
    "background": "--background",
    "llm_cases": "--llm-cases",
    "minutes": "--minutes",
    "micropython_devices": "--micropython-devices",
    "sample_s": "--sample-s",
}


def command(bench: str, kwargs: dict[str, Any]) -> str:
    """The standalone command that runs ``bench`` with ``kwargs``."""
    parts = ["aiot", "bench", bench]
    for key, value in kwargs.items():
        if value is None:
            continue
        flag = "--warmup-s" if (bench, key) == ("soak", "warmup_s") else _FLAGS[key]
        parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join([*parts, "--json"])


# -- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    bench: str
    key: str  # a key of the bench's JSON object
    baseline: str | Callable[[dict[str, Any]], Any] | None = None
    op: str | None = None  # "<=", ">=", "=="
    bar: Any = None
    note: str = ""


FIGURES: Final = (
    Figure("codec", "edge_encode_per_s_micropython", "official_encode_per_s_cpython"),
    Figure(
        "codec",
        "bytes_per_reading",
        lambda r: r["frame_bytes_official"] / r["batch_readings"],
        "<=",
        12,
    ),
    Figure("edge", "readings_per_s", "baseline_readings_per_s"),
    Figure("edge", "flash_bytes_per_reading"),
    Figure("edge", "write_amplification", None, "<=", 1.2),
    Figure("edge", "write_amplification_littlefs_files"),
    Figure("edge", "hours_buffered_1mib_1hz_3ch", None, ">=", 24),
    Figure("edge", "peak_heap_bytes", None, "<=", 96 * 1024),
    Figure("edge", "peak_heap_bytes_mpy_in_heap"),
    Figure("edge", "failover_s", None, "<=", 5),
    Figure("ingest", "readings_per_s", "baseline_readings_per_s", ">=", 20_000),
    Figure("ingest", "ack_latency_ms_p50"),
    Figure("ingest", "ack_latency_ms_p99", None, "<=", 250),
    Figure("failover", "leader_kill_to_first_commit_s", None, "<=", 3),
    Figure("failover", "leader_kill_to_90pct_rate_s"),
    Figure("decide", "rules_decisions_per_s", "baseline_threshold_checks_per_s"),
    Figure("decide", "onnx_latency_ms_p50"),
    Figure("decide", "onnx_latency_ms_p99"),
    Figure("decide", "hot_swap_ms"),
    Figure("decide", "swap_decisions_per_s", "swap_baseline_decisions_per_s", ">=", 200),
    Figure("decide", "swap_failed", None, "==", 0),
    Figure("decide", "swap_dropped", None, "==", 0),
    Figure("decide", "control_loop_ms_p50"),
    Figure("decide", "control_loop_ms_p99", None, "<=", 150),
    Figure("soak", "committed_readings_per_s", "offered_readings_per_s"),
    Figure("soak", "ack_latency_ms_p99"),
    Figure("soak", "rss_growth_pct_max", None, "<=", 10, "bar stated for 30 min"),
    Figure("soak", "rss_anon_growth_pct_max", None, "<=", 10, "bar stated for 30 min"),
    Figure("soak", "fd_growth_max", None, "<=", 0),
    Figure("soak", "converged", None, "==", True),
    Figure("soak", "acked_readings_missing", None, "==", 0),
)


def bar_text(op: str | None, bar: Any) -> str:
    if op is None:
        return ""
    shown = "true" if bar is True else f"{bar:,}" if isinstance(bar, int) else f"{bar:g}"
    return {"<=": "≤ ", ">=": "≥ ", "==": "= "}[op] + shown


def bar_met(op: str | None, bar: Any, value: Any) -> bool | None:
    if op is None or value is None:
        return None
    if op == "==":
        return bool(value == bar)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return bool(value <= bar) if op == "<=" else bool(value >= bar)


def _ratio(value: Any, baseline: Any) -> float | None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not isinstance(baseline, int | float)
        or not baseline
    ):
        return None
    return round(value / baseline, 4)


def rows(results: dict[str, dict[str, Any]], commands: dict[str, str]) -> list[dict[str, Any]]:
    """The report's table: every figure of every benchmark that ran."""
    out: list[dict[str, Any]] = []
    for bench in BENCHES:
        res = results.get(bench)
        if res is None:
            continue
        for f in FIGURES:
            if f.bench != bench:
                continue
            value = res.get(f.key)
            if callable(f.baseline):
                baseline = f.baseline(res)
            else:
                baseline = None if f.baseline is None else res.get(f.baseline)
            if isinstance(baseline, float):
                baseline = round(baseline, 4)
            out.append(_row(bench, f.key, value, baseline, f.op, f.bar, commands[bench], f.note))
        if bench == "decide":  # the LLM tier's figures, whatever it reports
            for key, value in res.items():
                if key.startswith("llm_") and isinstance(value, int | float | bool):
                    out.append(_row(bench, key, value, None, None, None, commands[bench], ""))
    return out


def _row(
    bench: str,
    key: str,
    value: Any,
    baseline: Any,
    op: str | None,
    bar: Any,
    cmd: str,
    note: str,
) -> dict[str, Any]:
    return {
        "figure": f"{bench}.{key}",
        "value": value,
        "baseline": baseline,
        "ratio": _ratio(value, baseline),
        "bar": bar_text(op, bar),
        "bar_met": bar_met(op, bar, value),
        "command": cmd,
        "note": note,
    }


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    out = watch.machine()
    out["micropython"] = ""
    with contextlib.suppress(NotInstalled, OSError, subprocess.SubprocessError):
        proc = subprocess.run(
            [
                micropython_binary(),
                "-c",
                "import sys; v = sys.implementation.version; "
                "print('.'.join(str(x) for x in v[:3]), *v[3:])",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        out["micropython"] = proc.stdout.strip()
    return out


def machine_short(m: dict[str, Any]) -> str:
    cpu = str(m.get("cpu") or "unknown CPU").replace("(R)", "").replace("Processor", "").strip()
    return f"{' '.join(cpu.split())}, {m.get('cores')} cores, Python {m.get('python')}"


class CpuWatch:
    """CPU over the whole run: the machine's busy time, and this process with
    every child it waited for (the benchmarks' hubs, brokers and devices)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = watch.machine_busy()[0]
        self.ours0 = self._ours()

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def read(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.t0)
        busy = (watch.machine_busy()[0] - self.busy0) / wall
        ours = (self._ours() - self.ours0) / wall
        other = max(0.0, busy - ours)
        return {
            "machine_busy_cores": round(busy, 3),
            "benchmarks_cores": round(ours, 3),
            "other_processes_cores": round(other, 3),
            "machine_cores": os.cpu_count(),
            "shared": other > SHARED_CORES,
        }


# -- running -------------------------------------------------------------------------------


RUNNERS: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "codec": codec,
    "edge": edge,
    "ingest": ingest,
    "failover": failover,
    "decide": decide,
    "soak": soak,
}


def run_all(
    quick: bool = False,
    soak_minutes: float = 3.0,
    only: tuple[str, ...] = BENCHES,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Run the benchmarks; the JSON-ready summary (without writing anything)."""
    for b in only:
        if b not in BENCHES:
            raise BenchError(f"unknown benchmark {b!r}; choose from {', '.join(BENCHES)}")
    params = parameters(quick, soak_minutes)
    started = dt.datetime.now(dt.UTC)
    cpu = CpuWatch()
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    commands: dict[str, str] = {}
    for bench in BENCHES:
        if bench not in only:
            continue
        kwargs = dict(params[bench])
        if bench == "soak" and "ingest" in results:
            # Half of the maximum ingest rate, as measured a few minutes ago.
            rate = results["ingest"].get("readings_per_s")
            if isinstance(rate, int | float) and rate > 0:
                kwargs["rate"] = round(rate / 2, 1)
        commands[bench] = command(bench, kwargs)
        say(f"== {commands[bench]}")
        t0 = time.monotonic()
        try:
            results[bench] = RUNNERS[bench](**kwargs, **({} if bench == "codec" else {"say": say}))
        except Exception as exc:  # one benchmark failing must not lose the others
            errors[bench] = f"{type(exc).__name__}: {exc}"
            say(f"   {bench} failed: {errors[bench]}")
        seconds[bench] = round(time.monotonic() - t0, 1)
    table = rows(results, commands)
    return {
        "bench": "all",
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(sum(seconds.values()), 1),
        "seconds_by_bench": seconds,
        "machine": machine(),
        "cpu": cpu.read(),
        "table": table,
        "bars_missed": [r["figure"] for r in table if r["bar_met"] is False],
        "errors": errors,
        "commands": commands,
        "results": results,
    }


# -- the report --------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        return f"{value:.6g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _split(line: str) -> list[str]:
    cells, cur, i = [], "", 1 if line.startswith("|") else 0
    body = line.rstrip()
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if ch == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur.strip())
    return cells


def history_rows(doc: str) -> list[dict[str, str]]:
    """The rows of the history table between the history markers."""
    if HISTORY_BEGIN not in doc or HISTORY_END not in doc:
        return []
    block = doc.split(HISTORY_BEGIN, 1)[1].split(HISTORY_END, 1)[0]
    out = []
    for line in block.splitlines():
        if not line.startswith("|"):
            continue
        cells = _split(line)
        if cells[:2] == ["date", "figure"] or set("".join(cells)) <= set("-: "):
            continue
        cells += [""] * (len(HISTORY_COLUMNS) - len(cells))
        out.append(dict(zip(HISTORY_COLUMNS, cells[: len(HISTORY_COLUMNS)], strict=True)))
    return out


def _history_line(row: dict[str, str]) -> str:
    return "| " + " | ".join(_cell(row.get(c, "")) for c in HISTORY_COLUMNS) + " |"


def previous_values(history: list[dict[str, str]], machine_id: str) -> dict[str, str]:
    """The last full-run value of each figure on this kind of machine."""
    out: dict[str, str] = {}
    for row in history:
        if "quick" in row.get("note", "") or row.get("machine") != machine_id:
            continue
        out[row["figure"]] = row["value"]
    return out


def render_table(summary: dict[str, Any], previous: dict[str, str]) -> str:
    m = summary["machine"]
    cpu = summary["cpu"]
    date = summary["started"][:10]
    kind = "`aiot bench all --quick --json`" if summary["quick"] else "`aiot bench all --json`"
    minutes = summary["seconds"] / 60
    shared = (
        f"**The machine was shared**: other processes used {cpu['other_processes_cores']:.2f} "
        f"of its {cpu['machine_cores']} cores on average while the benchmarks ran (the "
        f"benchmarks {cpu['benchmarks_cores']:.2f}); absolute rates are lower than on an idle "
        "machine, ratios less so."
        if cpu["shared"]
        else f"Other processes used {cpu['other_processes_cores']:.2f} cores on average meanwhile."
    )
    lines = [
        "## Latest run",
        "",
        f"Measured {date} by {kind} in {minutes:.0f} minutes, on {m.get('cpu')} "
        f"({m.get('cores')} cores, {m.get('memory_mib', 0) / 1024:.0f} GiB), Linux "
        f"{m.get('kernel')}, CPython {m.get('python')}, MicroPython "
        f"{m.get('micropython') or 'missing'} (unix port), {m.get('mosquitto')}. {shared}",
        "",
        "| figure | value | baseline (same run) | ratio | bar | met | previous | command |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in summary["table"]:
        met = {True: "yes", False: "**no**", None: ""}[r["bar_met"]]
        bar = r["bar"] + (f" ({r['note']})" if r["note"] and r["bar"] else "")
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    f"`{r['figure']}`",
                    fmt(r["value"]),
                    fmt(r["baseline"]),
                    fmt(r["ratio"]),
                    bar,
                    met,
                    previous.get(r["figure"], "–"),
                    f"`{r['command']}`",
                )
            )
            + " |"
        )
    missing = summary["results"].get("decide", {}).get("llm_missing")
    if missing:
        lines += ["", f"LLM tier figures: not measured in this run ({missing})."]
    if summary["errors"]:
        lines += ["", "Benchmarks that could not run:", ""]
        lines += [f"- `{b}`: {_cell(e)}" for b, e in summary["errors"].items()]
    return "\n".join(lines)


def new_history(summary: dict[str, Any]) -> list[dict[str, str]]:
    date = summary["started"][:10]
    mid = machine_short(summary["machine"])
    note = "quick" if summary["quick"] else ""
    if summary["cpu"]["shared"]:
        note = ", ".join(
            x for x in (note, f"shared ({summary['cpu']['other_processes_cores']:.2f} cores)") if x
        )
    out = []
    for r in summary["table"]:
        out.append(
            {
                "date": date,
                "figure": r["figure"],
                "value": fmt(r["value"]),
                "baseline": fmt(r["baseline"]),
                "ratio": fmt(r["ratio"]),
                "bar": r["bar"],
                "command": r["command"],
                "machine": mid,
                "note": note,
            }
        )
    return out


EMPTY_DOC: Final = f"""# Benchmarks

Every figure here is what an `aiot bench ...` command printed, with the
command and the machine.

{TABLE_BEGIN}
{TABLE_END}

## History

{HISTORY_BEGIN}
{HISTORY_END}
"""


def update_doc(text: str, summary: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The report with this run's table and history rows; and the previous
    values the table compared against."""
    if TABLE_BEGIN not in text or HISTORY_BEGIN not in text:
        text = EMPTY_DOC + ("\n## Earlier notes\n\n" + text if text.strip() else "")
    history = history_rows(text)
    previous = previous_values(history, machine_short(summary["machine"]))
    table = render_table(summary, previous)
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    text = head + TABLE_BEGIN + "\n" + table + "\n" + TABLE_END + tail
    rows_all = history + new_history(summary)
    header = "| " + " | ".join(HISTORY_COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in HISTORY_COLUMNS) + " |"
    block = "\n".join([header, rule, *(_history_line(r) for r in rows_all)])
    head, rest = text.split(HISTORY_BEGIN, 1)
    _, tail = rest.split(HISTORY_END, 1)
    return head + HISTORY_BEGIN + "\n" + block + "\n" + HISTORY_END + tail, previous


def attach_previous(summary: dict[str, Any], path: Path = DOC) -> None:
    """Give each row of the table the figure's previous value from the report
    at ``path`` (None when it has none)."""
    text = path.read_text() if path.exists() else ""
    previous = previous_values(history_rows(text), machine_short(summary["machine"]))
    for row in summary["table"]:
        row["previous"] = previous.get(row["figure"])


def write_report(summary: dict[str, Any], path: Path = DOC) -> None:
    """Rewrite the report at ``path`` with this run (see update_doc)."""
    text = path.read_text() if path.exists() else ""
    path.write_text(update_doc(text, summary)[0])
