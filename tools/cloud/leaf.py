"""A site's leaf node: a nats-server on a hub node that dials out to the cloud.

The site then needs no inbound port: the leaf node connects to the cloud's
leaf-node port over TLS (pinning the cloud's CA) with the site's login, and
the hub on the same machine talks to it on 127.0.0.1. Through it, the hub
reaches the cloud's JetStream in the domain ``aiot-cloud``
(``$JS.aiot-cloud.API``), with the site's permissions (tools/cloud/subjects.py).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from hub.core.fsutil import write_atomic
from tools.cloud.cluster import CloudError, CloudLayout, Creds
from tools.cloud.subjects import check_site, site_user


def leaf_conf(site: str, creds: Creds, remotes: list[str], port: int) -> str:
    """The leaf node's nats.conf: listens on 127.0.0.1:``port`` (plain, loopback
    only), dials ``remotes`` (tls://host:leafport) as the site."""
    auth = f"{quote(creds.user, safe='')}:{quote(creds.password, safe='')}@"
    urls = ", ".join(f'"{u.replace("tls://", "tls://" + auth, 1)}"' for u in remotes)
    return (
        f"# the leaf node of site {site}: it dials out to the cloud (aiot cloud leaf-config)\n"
        f'server_name: "leaf-{site}"\n'
        'host: "127.0.0.1"\n'
        f"port: {port}\n"
        "leafnodes {\n"
        f'  remotes: [ {{ urls: [{urls}], tls: {{ ca_file: "{creds.ca}" }} }} ]\n'
        "}\n"
    )


def write_leaf(layout: CloudLayout, site: str, out: Path, port: int = 4222) -> Path:
    """Write site's leaf node config to ``out`` (0600: it holds the site's login)."""
    try:
        check_site(site)
    except ValueError as exc:
        raise CloudError(str(exc)) from None
    path = layout.creds(site_user(site))
    if not path.exists():
        raise CloudError(f"site {site} is not added: run aiot cloud add-site {site}")
    text = leaf_conf(site, Creds.load(path), layout.leaf_urls(), port)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)  # 0600: it holds the site's login
    return out
