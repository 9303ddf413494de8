"""`aiot cloud add-site`: a site's login, its permissions and its stream.

Adding a site writes its login into every server's config (a bcrypt hash;
tools/cloud/subjects.py says what it may touch), reloads the servers that
run (SIGHUP, then waits until each has loaded the new config), and makes the
site's stream ``AIOT_SITE_<SITE>`` over the exported kinds
(``aiot.<site>.readings.>`` and the rest) and its health stream
``AIOT_HEALTH_<SITE>`` over ``aiot.<site>.health.>``. The login file
``creds/site-<site>.json`` is what the site's hubs need, beside the CA.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any, Final

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from protocol import cloud
from tools.cloud.cluster import (
    ACCOUNT,
    CloudError,
    CloudLayout,
    Creds,
    get_json,
    hash_password,
    load_users,
    running_pid,
    save_users,
    write_confs,
)
from tools.cloud.status import connect
from tools.cloud.subjects import check_site, site_stream, site_user

# A resend within this window is dropped by its Nats-Msg-Id; a later one is
# caught by the expected-last-message-id chain (docs/cloud.md "Exactly once").
DEDUP_WINDOW_S: Final = 600.0
DEFAULT_MAX_AGE_DAYS: Final = 400
# Each node reports its health every 10 s (hub/link/cloudhealth.py): an hour
# of it per node, for two days at most.
HEALTH_KEEP: Final = 360
HEALTH_MAX_AGE_S: Final = 2 * 86_400.0
NO_PEERS: Final = 10005  # JetStream: no suitable peers for placement


@dataclass(frozen=True, slots=True)
class Site:
    site: str
    user: str
    stream: str
    creds: str


def add_site(layout: CloudLayout, site: str, max_age_days: int = DEFAULT_MAX_AGE_DAYS) -> Site:
    try:
        check_site(site)
    except ValueError as exc:
        raise CloudError(str(exc)) from None
    if max_age_days < 0:
        raise CloudError(f"--max-age-days {max_age_days}: 0 keeps for ever, or a number of days")
    users = load_users(layout)
    user = site_user(site)
    if user in users:
        raise CloudError(f"site {site} is already added (its login: {layout.creds(user)})")
    password = secrets.token_urlsafe(32)
    users[user] = {"hash": hash_password(password), "account": ACCOUNT, "site": site}
    save_users(layout, users)
    write_confs(layout)
    reload_servers(layout)
    creds = Creds(tuple(layout.urls()), user, password, str(layout.ca))
    admin = Creds.load(layout.creds("admin"))
    _run(_make_stream(admin, site, min(3, len(layout.names)), max_age_days))
    creds.save(layout.creds(user))
    return Site(site, user, site_stream(site), str(layout.creds(user)))


def _run(coro: Any, timeout: float = 30.0) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    except TimeoutError:
        raise CloudError(f"the cloud did not answer within {timeout:.0f} s") from None


async def _make_stream(admin: Creds, site: str, replicas: int, max_age_days: int) -> None:
    nc = await connect(admin)
    try:
        js = nc.jetstream()
        await _add_stream(
            js,
            StreamConfig(
                name=site_stream(site),
                description=f"everything site {site} exports",
                subjects=cloud.stream_subjects(site),
                num_replicas=replicas,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                duplicate_window=DEDUP_WINDOW_S,
                max_age=max_age_days * 86_400.0,
                allow_direct=True,
            ),
        )
        await _add_stream(
            js,
            StreamConfig(
                name=cloud.health_stream_name(site),
                description=f"the health of site {site}'s nodes, last values",
                subjects=cloud.health_subjects(site),
                num_replicas=replicas,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=HEALTH_KEEP,
                max_age=HEALTH_MAX_AGE_S,
                allow_direct=True,
            ),
        )
    finally:
        await nc.close()


async def _add_stream(js: Any, config: StreamConfig, wait_s: float = 20.0) -> None:
    """Add a stream, waiting while the cluster has too few servers up for its
    replicas (10005, "no suitable peers for placement": a server that has
    just started or restarted and not yet rejoined)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code != NO_PEERS or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def reload_servers(layout: CloudLayout, timeout: float = 20.0) -> list[str]:
    """SIGHUP each running server of ``layout`` and wait until it has loaded
    its config again; the names of those reloaded."""
    before: dict[int, str] = {}
    for i in range(len(layout.names)):
        pid = running_pid(layout, i)
        if pid is None:
            continue
        before[i] = _load_time(layout, i) or ""
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    for i, was in before.items():
        while (_load_time(layout, i) or was) == was:
            if time.monotonic() > deadline:
                raise CloudError(f"{layout.names[i]} did not reload its config in {timeout:.0f} s")
            time.sleep(0.05)
    return [layout.names[i] for i in before]


def _load_time(layout: CloudLayout, i: int) -> str | None:
    try:
        varz = get_json(f"{layout.monitor_url(i)}/varz")
    except (OSError, ValueError):
        return None
    return str(varz.get("config_load_time")) if isinstance(varz, dict) else None
