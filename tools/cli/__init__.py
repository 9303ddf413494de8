"""The `aiot` command line. Every command listed by `aiot --help` works.

One module per command group; tools/cli/output.py is how each one reports
(results on stdout, progress and errors on stderr, the exit statuses), and
tools/cli/remote.py what the commands talking to a hub node share.
"""

from __future__ import annotations

import typer

from tools.cli import (
    bench,
    chaos,
    cloud,
    cluster,
    command,
    decisions,
    demo,
    device,
    evaluate,
    firmware,
    hub,
    inbox,
    models,
    ops,
    overview,
    policy,
    protocol,
    query,
    tokens,
    user,
)

app = typer.Typer(
    name="aiot",
    help="Edge-hub runtime for AIoT devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# `aiot --help` lists the single commands, then the groups, in this order.
for single in (decisions.ask, demo.demo, query.query, ops.backup, ops.restore, chaos.chaos):
    app.command()(single)
app.command()(overview.overview)
app.command()(inbox.inbox)
app.command()(inbox.reply)
for group in (
    bench.bench_app,
    protocol.protocol_app,
    models.models_app,
    evaluate.eval_app,
    decisions.decisions_app,
    decisions.alerts_app,
    policy.policy_app,
    user.user_app,
    tokens.token_app,
    hub.hub_app,
    device.device_app,
    command.command_app,
    cluster.cluster_app,
    cloud.cloud_app,
    firmware.firmware_app,
):
    app.add_typer(group)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
