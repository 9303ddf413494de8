"""What `aiot cloud status` reads: the servers, then the streams and buckets.

The servers come from their monitoring endpoints when the cluster is a
local one (`aiot cloud up` wrote its layout): name, version, connections,
routes, and the JetStream meta leader each one knows. The streams come from
the JetStream API through a login (any NATS cluster): subjects, messages,
bytes, replicas, the leader and each replica's lag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Final, TypeVar

import nats
from nats.js.api import StreamInfo

from tools.cloud.cluster import CloudError, CloudLayout, Creds, get_json, meta_leader

__all__ = [
    "REQUEST_S",
    "ServerState",
    "StreamState",
    "connect",
    "run_within",
    "servers_of",
    "streams_of",
]

# One JetStream API request (stream info, creating a consumer): nats-py's
# default of 5 s is short for a cloud under load.
REQUEST_S: Final = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerState:
    name: str
    up: bool
    version: str | None = None
    connections: int | None = None
    peers: tuple[str, ...] = ()  # the servers it has routes to
    meta_leader: str | None = None
    client_url: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "peers": list(self.peers)}


@dataclass(frozen=True, slots=True)
class StreamState:
    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    replicas: int
    leader: str | None
    lagging: tuple[str, ...]  # replicas that are not current
    kind: str  # stream, kv or objects

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "subjects": list(self.subjects), "lagging": list(self.lagging)}


def servers_of(layout: CloudLayout) -> list[ServerState]:
    out = []
    for i, name in enumerate(layout.names):
        try:
            varz = get_json(f"{layout.monitor_url(i)}/varz")
            routez = get_json(f"{layout.monitor_url(i)}/routez")
        except (OSError, ValueError):
            out.append(ServerState(name, False, client_url=layout.urls()[i]))
            continue
        out.append(
            ServerState(
                name,
                True,
                str(varz.get("version")),
                int(varz.get("connections", 0)),
                tuple(sorted({str(r.get("remote_name")) for r in routez.get("routes") or ()})),
                meta_leader(layout, i),
                layout.urls()[i],
            )
        )
    return out


class _QuietEof(logging.Filter):
    """asyncio warns that a TLS protocol's eof_received() returned true each
    time a NATS server closes a TLS connection (nats-py's protocol returns it
    for plain TCP); the close itself is normal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietEof())


def tls_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def connect(creds: Creds, name: str = "aiot-cli", timeout: float = 5.0) -> Any:
    """A nats-py connection with ``creds``; CloudError when no server answers."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)

    try:
        # nats-py keeps retrying refused servers on a first connect: bound it.
        return await asyncio.wait_for(_connect(creds, name, timeout, on_error), timeout + 1)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        seen = f" ({errors[-1]})" if errors else ""
        raise CloudError(
            f"no cloud server answered at {', '.join(creds.servers)}: "
            f"{exc or f'no answer within {timeout:.0f} s'}{seen}"
        ) from None


def run_within(work: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    """Run ``work`` to its end within ``timeout`` seconds in all.

    nats-py raises TimeoutError when one request goes unanswered, as asyncio
    does when the whole deadline passes; the CloudError says which it was."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            try:
                return await work
            except TimeoutError as exc:  # raised by the work: the deadline cancels instead
                detail = str(exc) or type(exc).__name__
                raise CloudError(
                    f"{what}: a request to the cloud went unanswered ({detail})"
                ) from None

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise CloudError(f"{what} took over {timeout:.0f} s") from None


async def _connect(creds: Creds, name: str, timeout: float, on_error: Any) -> Any:
    return await nats.connect(
        servers=list(creds.servers),
        user=creds.user,
        password=creds.password,
        tls=tls_context(creds.ca),
        name=name,
        connect_timeout=timeout,
        max_reconnect_attempts=0,
        allow_reconnect=False,
        error_cb=on_error,
    )


def _stream_state(info: StreamInfo) -> StreamState:
    cfg, state, cluster = info.config, info.state, info.cluster
    name = cfg.name or "?"
    kind = "kv" if name.startswith("KV_") else "objects" if name.startswith("OBJ_") else "stream"
    replicas = cluster.replicas or [] if cluster is not None else []
    return StreamState(
        name,
        tuple(cfg.subjects or ()),
        int(state.messages),
        int(state.bytes),
        int(cfg.num_replicas or 1),
        cluster.leader if cluster is not None else None,
        tuple(str(p.name) for p in replicas if not p.current),
        kind,
    )


async def streams_of(creds: Creds, timeout: float = 5.0) -> tuple[list[StreamState], list[str]]:
    """Every stream of the account, and the names of those whose info did
    not come back (a stream between leaders): ``$JS.API.STREAM.LIST``, page
    by page."""
    nc = await connect(creds)
    try:
        states: list[StreamState] = []
        missing: list[str] = []
        while True:
            req = json.dumps({"offset": len(states) + len(missing)}).encode()
            msg = await nc.request("$JS.API.STREAM.LIST", req, timeout=timeout)
            page = json.loads(msg.data)
            if "error" in page:
                raise CloudError(f"listing the streams: {page['error'].get('description')}")
            states += [
                _stream_state(StreamInfo.from_response(x)) for x in page.get("streams") or ()
            ]
            missing += [str(x) for x in page.get("missing") or ()]
            if not page.get("streams") or len(states) + len(missing) >= int(page.get("total", 0)):
                return sorted(states, key=lambda st: st.name), sorted(missing)
    finally:
        await nc.close()


def read_streams(creds: Creds, timeout: float = 10.0) -> tuple[list[StreamState], list[str]]:
    try:
        return asyncio.run(asyncio.wait_for(streams_of(creds), timeout))
    except TimeoutError:
        raise CloudError(f"the cloud did not list its streams within {timeout:.0f} s") from None
    except nats.errors.Error as exc:
        raise CloudError(f"listing the streams: {exc}") from None
