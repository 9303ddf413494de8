"""`aiot cluster`: write a local cluster's configs (tools/lab/cluster.py), and
the membership and status of a running one, through a hub node's API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hub.core import tls
from tools.base.hubclient import HubClient, HubError
from tools.cli.output import fail, group, print_json
from tools.cli.remote import JsonOpt, on_hub
from tools.lab.cluster import main_init

cluster_app = group("cluster", "Cluster membership and status.")


@cluster_app.command("init")
def cluster_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the configs.")],
    nodes: Annotated[int, typer.Option(min=1, max=9)] = 3,
    host: Annotated[str, typer.Option(help="The address every port binds to.")] = "127.0.0.1",
    broker: Annotated[str, typer.Option(help="mosquitto or embedded.")] = "mosquitto",
    base_port: Annotated[
        int, typer.Option(help="Raft ports from here; brokers +100, HTTP +200.")
    ] = 4321,
    plain: Annotated[
        bool, typer.Option("--plain", help="No TLS: plain MQTT and HTTP, for a lab.")
    ] = False,
) -> None:
    """Write configs, a cluster secret, and a CA with a certificate per node
    (tls/), for a cluster of NODES nodes."""
    if broker not in ("mosquitto", "embedded"):
        raise fail("--broker: expected mosquitto or embedded")
    for p in main_init(directory, nodes, host, broker, base_port, tls=not plain):
        typer.echo(str(p))
    typer.echo(f"instructions: {directory / 'README.txt'}", err=True)


@cluster_app.command("cert")
def cluster_cert(
    node: Annotated[str, typer.Argument(help="The node id the certificate is for.")],
    host: Annotated[
        list[str],
        typer.Option(
            "--host", help="An address or name clients reach the node at (repeat for more)."
        ),
    ],
    tls_dir: Annotated[
        Path, typer.Option("--tls-dir", help="The folder with the cluster CA (ca.pem, ca.key).")
    ] = Path("tls"),
) -> None:
    """Issue NODE a new certificate from the cluster CA (made in --tls-dir
    when there is none): NODE.pem and NODE.key, for its tls.cert and tls.key."""
    try:
        issued = tls.write_node(tls_dir, node, host)
    except tls.TlsError as exc:
        raise fail(str(exc)) from None
    typer.echo(str(issued.cert))
    typer.echo(str(issued.key))
    names = ", ".join(tls.alt_names(host))
    typer.echo(f"valid for {names}; the CA is {tls_dir / 'ca.pem'}", err=True)


def _node_status(client: HubClient, node: dict[str, Any]) -> dict[str, Any]:
    """One row of `cluster status`, from the node's own /v1/status."""
    row: dict[str, Any] = {"node_id": node["node_id"], "http": node["http"], "up": False}
    try:
        with client.at(node["http"], timeout=3.0) as nc:
            st = nc.get("/v1/status")
    except HubError as exc:
        row["error"] = str(exc)
        return row
    raft = st["raft"]
    row.update(
        up=True,
        leader=raft["is_leader"],
        term=raft["term"],
        commit_index=raft["commit_index"],
        applied_index=raft["applied_index"],
        lag=st["lag"],
        broker=st["broker"],
        devices=len(st["devices_connected"]),
        drained=bool(node.get("drained")),
    )
    return row


def _ready(client: HubClient) -> dict[str, Any] | None:
    """The node table once the node answers, a leader is known and every
    listed node answers too; None before that."""
    try:
        health = client.get("/v1/health")
        if not health["ready"] or health["leader"] is None:
            return None
        table: dict[str, Any] = client.get("/v1/cluster")
    except HubError:
        return None
    rows = [_node_status(client, n) for n in table["nodes"]]
    return table if rows and all(r["up"] for r in rows) else None


def _wait_ready(client: HubClient, seconds: float) -> None:
    end = time.monotonic() + seconds
    while _ready(client) is None:
        if time.monotonic() >= end:
            raise fail(
                f"the cluster was not ready within {seconds:g} s: no leader yet, "
                "or a node does not answer (is every node running?)",
                1,
            )
        time.sleep(0.5)


@cluster_app.command("status")
@on_hub
def cluster_status(
    client: HubClient,
    wait: Annotated[
        float,
        typer.Option(
            min=0, help="Wait up to this long for a leader and every node to answer (0: no)."
        ),
    ] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Each node: up, leader, term, commit and applied index, lag, broker, devices."""
    if wait:
        _wait_ready(client, wait)
    table = client.get("/v1/cluster")
    rows = [_node_status(client, n) for n in table["nodes"]]
    if json_out:
        print_json({"leader": table["leader"], "term": table["term"], "nodes": rows})
        return
    typer.echo(
        f"{'node':<10} {'up':<4} {'role':<9} {'term':>5} {'commit':>8} {'applied':>8} "
        f"{'lag':>5}  {'broker':<22} devices"
    )
    for r in rows:
        if not r["up"]:
            typer.echo(f"{r['node_id']:<10} {'no':<4} {r.get('error', '')}")
            continue
        b = r["broker"]
        broker = f"{b['mode']} {b['address']}" + ("" if b["consumer_connected"] else " (down)")
        role = "leader" if r["leader"] else "follower"
        if r["drained"]:
            broker += " (drained)"
        typer.echo(
            f"{r['node_id']:<10} {'yes':<4} {role:<9} {r['term']:>5} {r['commit_index']:>8} "
            f"{r['applied_index']:>8} {r['lag']:>5}  {broker:<22} {r['devices']}"
        )


@cluster_app.command("add-node")
@on_hub
def cluster_add_node(
    client: HubClient,
    raft_address: Annotated[str, typer.Argument(help="The new node's raft.bind, host:port.")],
) -> None:
    """Add a node to the cluster (start it with the other nodes as its peers)."""
    client.post("/v1/cluster/nodes", {"raft": raft_address})
    typer.echo(f"added {raft_address}")


@cluster_app.command("remove-node")
@on_hub
def cluster_remove_node(
    client: HubClient,
    raft_address: Annotated[str, typer.Argument(help="The node's raft.bind, host:port.")],
) -> None:
    """Remove a node from the cluster."""
    client.delete(f"/v1/cluster/nodes/{raft_address}")
    typer.echo(f"removed {raft_address}")


def _node(client: HubClient, node_id: str) -> dict[str, Any]:
    for n in client.get("/v1/cluster")["nodes"]:
        if n["node_id"] == node_id:
            return dict(n)
    raise fail(f"no node {node_id!r} in the cluster", 1)


def _wait_empty(client: HubClient, node_id: str, seconds: float) -> None:
    """Wait until the node holds no device session (as presence says)."""
    end = time.monotonic() + seconds
    while True:
        row = _node_status(client, _node(client, node_id))
        if row["up"] and row["devices"] == 0:
            return
        if time.monotonic() >= end:
            held = row.get("devices", "?")
            raise fail(f"{node_id} still holds {held} devices after {seconds:g} s", 1)
        time.sleep(0.5)


@cluster_app.command("drain")
@on_hub
def cluster_drain(
    client: HubClient,
    node_id: Annotated[str, typer.Argument(help="The node to drain (its node id).")],
    wait: Annotated[
        float, typer.Option(min=0, help="Wait up to this long for its devices to leave (0: no).")
    ] = 0,
) -> None:
    """Drain a node for maintenance: it takes no new device sessions, every
    device gets a broker order without it, and its devices move away."""
    client.post(f"/v1/cluster/drains/{node_id}", {})
    typer.echo(f"drained {node_id}")
    if wait:
        _wait_empty(client, node_id, wait)
        typer.echo(f"{node_id} holds no devices")


@cluster_app.command("undrain")
@on_hub
def cluster_undrain(
    client: HubClient,
    node_id: Annotated[str, typer.Argument(help="The drained node to bring back.")],
) -> None:
    """Bring a drained node back: it takes devices again, and the devices
    whose order puts it first move back to it."""
    client.delete(f"/v1/cluster/drains/{node_id}")
    typer.echo(f"undrained {node_id}")
