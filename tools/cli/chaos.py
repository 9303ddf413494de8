"""`aiot chaos`: the fault-injection campaign (tools/chaos/campaign.py, docs/chaos.md).

    aiot chaos --duration 60 --seed 7              # progress, then a summary
    aiot chaos --duration 600 --seed 7 --json      # one JSON object on stdout
    aiot chaos --duration 300 --faults all         # power_cut, disk_full, node_drain, node_add too
    aiot chaos --duration 60 --faults node_add,hub_kill   # a spare node joins the running cluster
    aiot chaos --power-cuts 20 --json              # 20 cuts of every hub at once
    aiot chaos --cloud --duration 60 --json        # the site exports to a 3-server cloud too
    aiot chaos --cloud --cloud-nodes 1 --faults cloud_kill,cloud_partition,hub_kill

Exit status: 0 when every check held, 1 when the campaign found a violation,
2 when it could not run (no Mosquitto, no MicroPython, a cluster that did not
start, no nats-server or socat for --cloud).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hub.link.broker import INSTALL_HINT, find_mosquitto
from tools.chaos import campaign as chaos_mod
from tools.chaos.netns import netns_available
from tools.chaos.schedule import ALL_KINDS, CLOUD_KINDS, EVERY_KIND, KINDS, LAZY_KINDS
from tools.cli.output import fail, print_fields
from tools.cloud.cluster import CloudError, find_nats_server
from tools.cloud.proxy import INSTALL_HINT as PROXY_HINT
from tools.lab.lazyfs import mount_available

_SUMMARY_KEYS = (
    "seed",
    "duration_s",
    "partition_method",
    "faults_injected",
    "readings_acked",
    "readings_lost",
    "duplicates_stored",
    "commands_issued",
    "commands_executed",
    "commands_executed_twice",
    "commands_by_state",
    "converged",
    "hubs_checked",
    "votes_recorded",
    "double_votes",
    "max_recovery_s",
)
# With --cloud (docs/chaos.md, "The cloud").
_CLOUD_KEYS = (
    "cloud_nodes",
    "cloud_readings",
    "cloud_readings_lost",
    "cloud_duplicates",
    "cloud_catch_up_s",
)


def chaos(
    duration: Annotated[
        float, typer.Option("--duration", min=10.0, help="Seconds of fault injection.")
    ] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the whole fault schedule.")] = 1,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (progress goes to stderr).")
    ] = False,
    devices: Annotated[
        int, typer.Option("--devices", min=1, max=64, help="MicroPython devices.")
    ] = 10,
    hubs: Annotated[int, typer.Option("--hubs", min=3, max=7, help="Hub nodes.")] = 3,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep everything here (default: a temporary directory)."),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory.")] = False,
    partition: Annotated[
        str, typer.Option(help="How to cut a hub off: auto, netns or sigstop.")
    ] = "auto",
    recovery_limit: Annotated[
        float, typer.Option(min=1.0, help="R: seconds within which ingest must resume.")
    ] = 30.0,
    faults: Annotated[
        str | None,
        typer.Option(
            help="Fault kinds to draw, comma-separated (default: the six basic kinds, and "
            "cloud_kill and cloud_partition with --cloud); 'all' adds node_drain, node_add (a "
            "spare node joins), and power_cut and disk_full (the hubs' data on a lazy FUSE "
            "file system)."
        ),
    ] = None,
    power_cuts: Annotated[
        int,
        typer.Option(
            "--power-cuts",
            min=0,
            help="Instead of a schedule: this many power cuts of every hub at once, "
            "each once the last has recovered (--duration is ignored).",
        ),
    ] = 0,
    durable_journal: Annotated[
        bool,
        typer.Option(
            help="The hubs' [raft] durable_journal; --no-durable-journal opens the "
            "power-loss window (a power cut should then show loss)."
        ),
    ] = True,
    cloud: Annotated[
        bool,
        typer.Option(
            "--cloud",
            help="The site exports to a local JetStream cloud; its faults (cloud_kill, "
            "cloud_partition) can be drawn and its copy is checked (each reading once).",
        ),
    ] = False,
    cloud_nodes: Annotated[
        int, typer.Option("--cloud-nodes", min=1, max=9, help="Servers of the --cloud cluster.")
    ] = 3,
) -> None:
    """Inject faults into a local hub cluster and MicroPython devices; check
    that nothing acknowledged is lost or stored twice, no command runs twice,
    the replicas converge and ingest recovers."""
    kinds = _kinds(faults, cloud)
    use_netns = _prerequisites(partition, kinds, power_cuts, cloud)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Ctrl-C and SIGTERM stop the campaign cleanly (processes, namespaces),
    # also when it was started in the background, which ignores SIGINT.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        summary = chaos_mod.run(
            seed,
            duration,
            hubs,
            devices,
            workdir=workdir,
            keep=keep,
            use_netns=use_netns,
            recovery_limit_s=recovery_limit,
            log=log,
            kinds=kinds,
            power_cuts=power_cuts,
            durable_journal=durable_journal,
            cloud_nodes=cloud_nodes if cloud else 0,
        )
    except KeyboardInterrupt:
        raise fail("chaos: interrupted; everything it started is stopped", 130) from None
    except Exception as exc:  # set-up failures: say what, not a traceback
        raise fail(f"chaos: the campaign could not run: {exc}") from None
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _print(summary)
    raise typer.Exit(1 if summary["violations"] else 0)


def _prerequisites(
    partition: str, kinds: tuple[str, ...], power_cuts: int, cloud: bool
) -> bool | None:
    """What the campaign needs is here, or a clear error; whether to use
    network namespaces (None: where they work)."""
    if partition not in ("auto", "netns", "sigstop"):
        raise fail("--partition: expected auto, netns or sigstop")
    if find_mosquitto() is None:
        raise fail(f"mosquitto not found: {INSTALL_HINT}")
    if power_cuts or any(k in LAZY_KINDS for k in kinds):
        missing = mount_available()
        if missing is not None:
            raise fail(f"power_cut and disk_full need a FUSE mount: {missing}")
    if cloud:
        try:
            find_nats_server()
        except CloudError as exc:
            raise fail(f"--cloud: {exc}") from None
        if shutil.which("socat") is None:
            raise fail(f"--cloud: socat is not installed: {PROXY_HINT}")
    use_netns = None if partition == "auto" else partition == "netns"
    if use_netns and not netns_available():
        raise fail("--partition netns: cannot create network namespaces here")
    return use_netns


def _kinds(text: str | None, cloud: bool = False) -> tuple[str, ...]:
    """--faults: 'all', or kinds separated by commas; None: the default
    kinds. The cloud's kinds come with --cloud only (the default and 'all'
    add them then)."""
    extra = CLOUD_KINDS if cloud else ()
    if text is None:
        return KINDS + extra
    if text.strip() == "all":
        return ALL_KINDS + extra
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in EVERY_KIND]
    if unknown or not kinds:
        raise fail(
            f"--faults: unknown {unknown or 'empty'}; expected 'all' or some of {EVERY_KIND}"
        )
    need = [k for k in kinds if k in CLOUD_KINDS and not cloud]
    if need:
        raise fail(f"--faults: {', '.join(need)} needs a cloud: add --cloud")
    return kinds


def _print(s: dict[str, Any]) -> None:
    """The campaign's summary, one aligned line per figure, then the violations."""
    print_fields({key: s[key] for key in _SUMMARY_KEYS + _CLOUD_KEYS if key in s}, 24)
    if s.get("workdir"):
        typer.echo(f"{'workdir':>24}  {s['workdir']}")
    if s["violations"]:
        typer.echo(f"{len(s['violations'])} violations:")
        for v in s["violations"]:
            where = " ".join(f"{k}={v[k]}" for k in ("node", "device", "fault") if k in v)
            typer.echo(f"  {v['check']} {where}: {v['detail']}")
    else:
        typer.echo("no violations")
