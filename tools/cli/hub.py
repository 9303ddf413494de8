"""`aiot hub`: run one hub node (hub/daemon.py), or install it as a systemd
service (tools/cli/service.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tools.cli.output import group
from tools.cli.service import install_service

hub_app = group("hub", "The hub daemon.")


@hub_app.command("run")
def hub_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="This node's config file.")],
) -> None:
    """Run one hub node until SIGTERM or Ctrl-C."""
    # What the node writes (store, Raft journal and dump, its broker's files)
    # holds keys and password hashes: private, as the systemd unit's UMask=0077.
    os.umask(0o077)
    from hub.daemon import main  # lazy: the web stack (FastAPI, uvicorn) loads only to run a node

    raise typer.Exit(main(config))


hub_app.command("install-service")(install_service)
