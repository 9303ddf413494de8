"""`aiot backup` and `aiot restore` (`aiot hub install-service` is in
tools/cli/service.py).

    aiot backup DIR --config hub.toml            # or --hub URL --token T
    aiot restore DIR --config hub-1.toml [--config hub-2.toml ...]

A backup directory holds:

    store.snap       the store's snapshot stream from one node (hub/state/DESIGN.md "Snapshots")
    registry.json    devices, users, models and hub nodes, for people (no keys, no hashes)
    models/          the node's model files, when it has a models directory
    manifest.json    what was backed up from where, and the sha256 of every file

hub/ops/backup.py has the design of both; docs/deploy-raspberry-pi.md the steps.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hub.core import config as hub_config
from hub.core.fsutil import make_private, private_dir
from hub.ops.backup import (
    BACKUP_FORMAT,
    DEFAULT_TERM_GAP,
    MANIFEST,
    MODELS_DIR,
    REGISTRY_FILE,
    SNAPSHOT_FILE,
    BackupError,
    RestorePlan,
    check_target,
    cluster_of,
    load_manifest,
    manifest_files,
    read_snapshot,
    restore_node,
)
from hub.state.errors import SnapshotError
from tools.base.hubclient import WHICH_HUB, HubError, node_endpoint, verify_for
from tools.cli.output import fail, reported
from tools.cli.remote import ConfigOpt, HubOpt, TokenOpt

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]

_err = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=False,
    )


# -- backup ---------------------------------------------------------------------------------


def _endpoint(
    config: Path | None, hub: str | None, token: str | None
) -> tuple[str, str, hub_config.HubConfig | None]:
    """(url, token, the node's config if given): --config, then --hub and
    --token, then AIOT_CONFIG, then AIOT_HUB and AIOT_TOKEN (as the other
    commands)."""
    if config is None and "AIOT_CONFIG" in os.environ and not hub:
        config = Path(os.environ["AIOT_CONFIG"])
    if config is not None:
        try:
            cfg = hub_config.load(config)
        except hub_config.ConfigError as exc:
            raise fail(str(exc)) from None
        return (*node_endpoint(cfg), cfg)
    url = hub or os.environ.get("AIOT_HUB")
    token = token or os.environ.get("AIOT_TOKEN")
    if not url or not token:
        raise fail(WHICH_HUB)
    return url.rstrip("/"), token, None


def _download(url: str, token: str, dest: Path, quiet: bool, ca: Path | None) -> dict[str, str]:
    """Stream GET /v1/backup into ``dest``; the response's X-Aiot headers.
    ``ca``: the cluster CA the node's certificate is checked against (else
    ``AIOT_CA``, else the system's CAs)."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        verify = verify_for(ca)
    except HubError as exc:
        raise fail(str(exc)) from None
    try:
        with (
            httpx.stream(
                "GET", f"{url}/v1/backup", headers=headers, timeout=60.0, verify=verify
            ) as resp,
            open(dest, "wb") as out,
        ):
            if resp.status_code >= 400:
                resp.read()
                try:
                    detail = resp.json().get("detail", resp.text)
                except ValueError:
                    detail = resp.text
                raise fail(f"hub at {url} refused the backup: {resp.status_code}: {detail}", 1)
            meta = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("x-aiot")}
            estimate = int(meta.get("x-aiot-estimated-bytes", "0") or 0) or None
            with _progress() as bar:
                task = bar.add_task(
                    f"snapshot of {meta.get('x-aiot-node', '?')}", total=estimate, visible=not quiet
                )
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
                    bar.update(task, advance=len(chunk))
                done = bar.tasks[0].completed
                bar.update(task, total=done, completed=done)
            out.flush()
            os.fsync(out.fileno())
    except httpx.HTTPError as exc:
        raise fail(f"hub at {url}: the backup did not complete: {exc}", 1) from None
    return meta


def backup(
    directory: Annotated[Path, typer.Argument(help="Where to write it (new or empty).")],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
    models: Annotated[
        Path | None,
        typer.Option(help="Model files to include (default: the node's data_dir/models)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A consistent snapshot of the cluster's state from one node, with its manifest."""
    url, tok, cfg = _endpoint(config, hub, token)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise fail(f"{directory} exists and is not empty: give a new directory")
    private_dir(directory)  # it holds device keys and password hashes
    partial = directory / (SNAPSHOT_FILE + ".partial")
    try:
        ca = cfg.tls.ca if cfg is not None and cfg.tls.on else None
        meta = _download(url, tok, partial, json_out, ca)
        try:
            with open(partial, "rb") as f:
                summary = read_snapshot(f)
        except SnapshotError as exc:
            raise fail(f"the snapshot from {url} is not valid ({exc}); nothing kept", 1) from None
        os.replace(partial, directory / SNAPSHOT_FILE)
        registry = {**summary.registry, "rows": summary.rows}
        (directory / REGISTRY_FILE).write_text(json.dumps(registry, indent=2) + "\n")
        model_dir = models or (None if cfg is None else cfg.data_dir / MODELS_DIR)
        if model_dir is not None and model_dir.is_dir():
            shutil.copytree(model_dir, directory / MODELS_DIR)
        elif models is not None:
            raise fail(f"--models {models}: not a directory")
        files = manifest_files(directory)
        manifest: dict[str, Any] = {
            "format": BACKUP_FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {
                "node": meta.get("x-aiot-node", ""),
                "url": url,
                "applied_index": summary.applied_index,
                "term": int(meta.get("x-aiot-term", "0") or 0),
            },
            "content_hash": summary.content_hash,
            "table_hashes": summary.table_hashes,
            "rows": summary.rows,
            "files": files,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        make_private(directory)  # 0600 files in a 0700 folder
    except BaseException:
        partial.unlink(missing_ok=True)
        if not (directory / MANIFEST).exists():
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if json_out:
        typer.echo(json.dumps(manifest))
        return
    reg = summary.registry
    size = sum(int(f["bytes"]) for f in files.values())
    typer.echo(
        f"backup of {manifest['source']['node']} at index {summary.applied_index}: "
        f"{len(reg['devices'])} devices, {summary.rows.get('readings', 0)} readings, "
        f"{reg['commands']} commands, {len(reg['users'])} users, {len(files)} "
        f"files, {size} bytes in {directory}"
    )
    typer.echo(f"content hash {summary.content_hash}")


# -- restore --------------------------------------------------------------------------------


def restore(
    directory: Annotated[Path, typer.Argument(help="A backup directory (aiot backup).")],
    config: Annotated[
        list[Path],
        typer.Option(
            "--config", "-c", help="A node of the new cluster; repeat for each node on this host."
        ),
    ],
    term_gap: Annotated[
        int,
        typer.Option(
            min=1,
            help="Start the new cluster this many Raft terms above the backup's, so devices "
            "that saw later terms take its commands.",
        ),
    ] = DEFAULT_TERM_GAP,
    json_out: JsonOpt = False,
) -> None:
    """Build the nodes of a new cluster from a backup: every node stopped, data dirs empty."""
    with reported(1, BackupError):
        manifest = load_manifest(directory)
    with reported(2, hub_config.ConfigError):
        cfgs = [hub_config.load(path) for path in config]
    clusters = {tuple(cluster_of(c)) for c in cfgs}
    if len(clusters) > 1:
        raise fail("the configs describe different clusters (raft.bind and raft.peers)")
    if len({c.node_id for c in cfgs}) != len(cfgs):
        raise fail("the same node is given twice")
    with reported(2, BackupError):
        for c in cfgs:
            check_target(c)  # every node before any is touched
    plan = RestorePlan.of(manifest, term_gap)
    snap_bytes = (directory / SNAPSHOT_FILE).stat().st_size
    done: list[dict[str, Any]] = []
    with _progress() as bar:
        for c in cfgs:
            task = bar.add_task(f"restore {c.node_id}", total=2 * snap_bytes, visible=not json_out)

            def advance(n: int, task: Any = task) -> None:
                bar.update(task, advance=n)

            try:
                got = restore_node(c, directory, plan, advance)
            except (BackupError, SnapshotError, OSError) as exc:
                raise fail(f"{c.node_id}: {exc}", 1) from None
            done.append({"node": c.node_id, "data_dir": str(c.data_dir), "content_hash": got})
    members = list(next(iter(clusters)))
    result: dict[str, Any] = {
        "restored": done,
        "store_index": plan.store_index,
        "raft_index": plan.raft_index,
        "term": plan.term,
        "content_hash": plan.content_hash,
        "members": members,
    }
    if json_out:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"restored {len(done)} of {len(members)} nodes at store index {plan.store_index} "
        f"(raft log from {plan.raft_index + 1}, term {plan.term}); content hash "
        f"{plan.content_hash}"
    )
    if len(done) < len(members):
        typer.echo(
            f"restore the other {len(members) - len(done)} node(s) from the same backup before "
            "starting any node"
        )
    for c in cfgs:
        typer.echo(f"  then: aiot hub run --config {c.source}")
