"""`aiot firmware`: build, flash, verify, update over the air, a virtual board.

    aiot firmware build --board esp32 --out build/esp32           # generic: offline, no config
    aiot firmware flash --port /dev/ttyUSB0 --out build/esp32 --device-config plug-1.json
    aiot firmware build --board esp32 --device plug-1 --config hub.toml --wifi-secrets wifi.json
    aiot firmware flash --port /dev/ttyUSB0 [--out build/plug-1]
    aiot firmware provision --port /dev/ttyUSB0 --device plug-1 --config hub.toml
    aiot firmware verify --port /dev/ttyUSB0
    aiot firmware keygen --out release.key                       # [firmware] trusted_keys
    aiot firmware release --out build/plug-1 --sign-key release.key --config hub.toml
    aiot firmware ota plug-1 --config hub.toml [--out build/plug-1] [--sign-key release.key]
    aiot firmware virtual-board DIR --port 7000

docs/flashing.md walks through it from an unboxed board.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from hub.core import keys
from tools.base.hubclient import HubClient, HubError
from tools.base.paths import ROOT
from tools.cli.output import fail, group, reported, say
from tools.cli.remote import ConfigOpt, HubOpt, TokenOpt, session
from tools.firmware.build import (
    BOARDS,
    FROM_HUB,
    Provision,
    build,
    load_bundle,
    load_device_config,
    load_wifi,
)
from tools.firmware.flash import flash, provision_board, verify, write_image
from tools.firmware.ota import release, release_key, send, upload, wait
from tools.firmware.virtual import VirtualBoard

firmware_app = group(
    "firmware", "Device firmware: build to .mpy, flash, verify, update over the air."
)

PortOpt = Annotated[
    str,
    typer.Option("--port", "-p", help="Serial device (/dev/ttyUSB0) or socket://HOST:PORT."),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.5, help="Seconds to wait for the board to answer.")
]
DEFAULT_OUT = Path("build/firmware")


def register(app: typer.Typer) -> None:
    """Add the `firmware` group to ``app``."""
    app.add_typer(firmware_app)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", "-d", help="A registered device id: its config from the hub."),
]
DeviceConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--device-config",
        help="The device's config file, as `aiot device add ID --out FILE` writes it "
        "(no hub needed).",
    ),
]
WifiOpt = Annotated[
    Path | None,
    typer.Option(
        "--wifi-secrets",
        help='JSON {"wifi_ssid": ..., "wifi_password": ...}; default firmware/wifi.json '
        "if it exists (git-ignored).",
    ),
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option("--settings", help="JSON of extra device settings (pins, tuning)."),
]
NoResetOpt = Annotated[
    bool,
    typer.Option("--no-reset", help="Leave the board at its REPL (the virtual board's resume)."),
]


def _registry(device: str, config: Path | None, hub: str | None, token: str | None) -> Any:
    """The device's config from the hub's registry, with the firmware release
    keys the hub trusts (``release_keys``: the device pins them)."""
    with session(config, hub, token) as client:
        try:
            registry = dict(client.get(f"/v1/devices/{device}/config"))
        except HubError as exc:
            if exc.status != 404:
                raise
            raise fail(
                f"device {device!r} is not registered on the hub at {client.url}: "
                f"register it first (aiot device add {device})",
                1,
            ) from None
        trusted = client.get("/v1/firmware/keys")["trusted_keys"]
        if trusted:  # none: the device gets none (and the build warns)
            registry["release_keys"] = trusted
        return registry


def _warn_no_release_keys(source: Provision) -> Provision:
    if not source.registry.get("release_keys") and not source.settings.get("release_keys"):
        say(
            f"warning: no firmware release keys for {source.device_id} (release_keys): "
            "it will refuse every over-the-air update; list them in the hub's "
            "[firmware] trusted_keys, or in --settings"
        )
    return source


def _provision(
    device: str | None,
    device_config: Path | None,
    config: Path | None,
    hub: str | None,
    token: str | None,
    wifi_secrets: Path | None,
    settings: Path | None,
) -> Provision | None:
    """What the device's config.json is made of: from the hub (``device``) or
    a file (``device_config``), with the Wi-Fi secrets and the settings; None
    for neither (a generic bundle)."""
    if device is not None and device_config is not None:
        raise fail("--device or --device-config, not both")
    if device is None and device_config is None:
        if wifi_secrets is not None or settings is not None:
            raise fail(
                "--wifi-secrets and --settings go into a device's config: "
                "give --device ID or --device-config FILE with them"
            )
        return None
    if wifi_secrets is None and (ROOT / "firmware" / "wifi.json").exists():
        wifi_secrets = ROOT / "firmware" / "wifi.json"
    overrides: dict[str, Any] = {}
    with reported():
        wifi = load_wifi(wifi_secrets)
        if settings is not None:
            try:
                overrides = json.loads(settings.read_text())
            except (OSError, ValueError) as exc:
                raise fail(f"--settings {settings}: {exc}") from None
        if device_config is not None:
            registry = load_device_config(device_config)
            # Its other keys are settings too; --settings wins over them.
            extra = {
                k: v for k, v in registry.items() if k not in FROM_HUB and not k.startswith("_")
            }
            return _warn_no_release_keys(Provision(registry, wifi, {**extra, **overrides}))
    assert device is not None
    return _warn_no_release_keys(Provision(_registry(device, config, hub, token), wifi, overrides))


DeviceSource = Callable[[], Provision | None]

_DEVICE_OPTIONS = (
    ("device", DeviceOpt),
    ("device_config", DeviceConfigOpt),
    ("config", ConfigOpt),
    ("hub", HubOpt),
    ("token", TokenOpt),
    ("wifi_secrets", WifiOpt),
    ("settings", SettingsOpt),
)


def device_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(device, ...)`` as a command with the options that name a
    device's config after its own (before a last --json): ``device()`` is
    what they make (`_provision`: it may ask a hub), None when they name no
    device."""
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    at = len(own) - (1 if own and own[-1].name == "json_out" else 0)
    kw = inspect.Parameter.KEYWORD_ONLY
    added = [inspect.Parameter(n, kw, default=None, annotation=o) for n, o in _DEVICE_OPTIONS]
    params = [p.replace(kind=kw) for p in own[:at] + added + own[at:]]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        named = {name: options.pop(name) for name, _ in _DEVICE_OPTIONS}
        command(lambda: _provision(**named), **options)

    run.__annotations__ = {}  # the options are in the signature, evaluated
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return run


@firmware_app.command("build")
@device_options
def build_cmd(
    device: DeviceSource,
    board: Annotated[str, typer.Option("--board", "-b", help="esp32, esp32s3, pico_w or unix.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory.")] = DEFAULT_OUT,
    json_out: Annotated[bool, typer.Option("--json", help="Print bundle.json.")] = False,
) -> None:
    """Compile edge/ and firmware/ to .mpy for a board, with the device's config from the hub
    (--device) or a file (--device-config); with neither, a generic bundle, built offline."""
    spec = BOARDS.get(board)
    if spec is None:
        raise fail(f"unknown board {board!r}: one of {', '.join(BOARDS)}")
    source = device()
    with reported(1):
        if source is None:
            info = build(spec, None, out, say=say)
        else:
            registry, wifi, overrides = source.registry, source.wifi, source.settings
            info = build(spec, registry, out, wifi=wifi, overrides=overrides, say=say)
    if json_out:
        typer.echo(json.dumps(info, indent=1))
        return
    b = info["budget"]
    if source is None:
        typer.echo(f"built a generic {spec.name} bundle in {out}: no device config")
    else:
        typer.echo(f"built {spec.name} bundle for {source.device_id} in {out}")
    typer.echo(f"  bundle sha256   {info['bundle_sha256']}")
    typer.echo(f"  files           {len(info['files'])} ({spec.march} .mpy v{info['mpy']})")
    typer.echo(f"  app             {_kib(b['app_bytes'])} (x2 for the A/B app slots)")
    typer.echo(f"  data slots      {_kib(b['data_slots_bytes'])} on the {b['data_slots_on']}")
    if b["budget_bytes"] is None:
        typer.echo(f"  flash           {_kib(b['total_bytes'])} (no budget: {spec.note})")
    else:
        typer.echo(
            f"  flash           {_kib(b['total_bytes'])} of {_kib(b['budget_bytes'])}, "
            f"{_kib(b['free_bytes'])} free ({spec.note})"
        )
    if source is None:
        typer.echo(
            "  config          none: flash it with --device ID or --device-config FILE, "
            "or provision the board after (aiot firmware provision)"
        )


def _copying_bar() -> tuple[Progress, Callable[[str, int, int], None]]:
    """A progress bar on stderr that appears with the first file copied (an
    error before that, such as no port or the wrong board, is its one line
    alone) and is gone once done: the summary stays."""
    bars = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        DownloadColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bars.add_task("copying", total=None)

    def progress(path: str, done: int, total: int) -> None:
        if not bars.live.is_started:
            bars.start()
        bars.update(task, description=path[-28:], completed=done, total=total)

    return bars, progress


def _no_config_warning(port: str) -> None:
    say(
        f"warning: the board at {port} has no device config (config.json): it will not start "
        f"until it has one: aiot firmware provision --port {port} --device ID "
        "(or --device-config FILE)"
    )


@firmware_app.command("flash")
@device_options
def flash_cmd(
    device: DeviceSource,
    port: PortOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="The built bundle.")] = DEFAULT_OUT,
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Check the bundle is for this board.")
    ] = None,
    erase: Annotated[
        bool, typer.Option("--erase", help="First erase and write a MicroPython image.")
    ] = False,
    micropython: Annotated[
        Path | None,
        typer.Option("--micropython", help="The image for --erase: .bin (ESP32) or .uf2 (Pico W)."),
    ] = None,
    uf2_drive: Annotated[
        Path | None, typer.Option("--uf2-drive", help="Pico W in BOOTSEL mode: its drive.")
    ] = None,
    no_reset: NoResetOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Copy the bundle's changed files (by sha256), then the config, then reset.
    --device or --device-config writes that device's config (a generic bundle has none)."""
    source = device()
    with reported(1):
        info = load_bundle(out)
        if erase:
            if micropython is None:
                raise fail("--erase needs --micropython IMAGE")
            write_image(info["board"], port, micropython, uf2_drive, say=say)
        if source is not None and info.get("device_id") not in (None, source.device_id):
            say(
                f"the bundle was built for {info['device_id']}: writing {source.device_id}'s config"
            )
        bars, progress = _copying_bar()
        try:
            report = flash(
                port,
                out,
                board_name=board,
                reset=False if no_reset else None,
                timeout=timeout,
                progress=progress,
                provision=source,
            )
        finally:
            if bars.live.is_started:
                bars.stop()
    if report.config == "none":
        _no_config_warning(port)
    typer.echo(
        f"flashed {port}: {len(report.copied)} file(s) copied ({report.bytes_copied:,} bytes), "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed"
        + ("; reset" if report.reset else "; not reset")
        + _CONFIG_NOTE[report.config]
    )
    for p in report.copied:
        typer.echo(f"  copied {p}")
    for p in report.removed:
        typer.echo(f"  removed {p}")


_CONFIG_NOTE = {
    "bundle": "",
    "written": "",
    "kept": "; kept the board's config.json",
    "none": "; no config.json: the board will not start",
}


@firmware_app.command("provision")
@device_options
def provision_cmd(
    device: DeviceSource,
    port: PortOpt,
    no_reset: NoResetOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Write a device's config (from the hub, or a file) to a flashed board, then reset it."""
    source = device()
    if source is None:
        raise fail("which device? --device ID (its config from the hub) or --device-config FILE")
    reset = False if no_reset else None  # None: as the board's kind does
    with reported(1):
        report = provision_board(port, source, reset, timeout)
    what = "written" if report.copied else "unchanged"
    typer.echo(
        f"provisioned {port} as {source.device_id}: config.json {what}"
        + ("; reset" if report.reset else "; not reset")
    )
    if not report.firmware:
        say(
            f"warning: no firmware on the board yet: aiot firmware flash --port {port} --out BUNDLE"
        )


@firmware_app.command("verify")
def verify_cmd(
    port: PortOpt,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Compare with this built bundle.")
    ] = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Read the board's file hashes back (and compare them with a bundle)."""
    with reported(1):
        result = verify(port, out, timeout)
    typer.echo(json.dumps(result, indent=1))
    if out is not None and not result["matches"]:
        raise typer.Exit(1)


def _show_step(step: dict[str, Any]) -> None:
    """One line per step of an update's history, as it reaches the ledger."""
    at = datetime.fromtimestamp(step["at_ms"] / 1000, UTC).strftime("%H:%M:%S")
    detail = step.get("detail") or ""
    typer.echo(f"  {at} {step['state']:<8} {detail}".rstrip())


SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key", help="Firmware release key (aiot firmware keygen): sign and register."
    ),
]


@firmware_app.command("keygen")
def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", help="Write the private key here (mode 600).")],
) -> None:
    """An Ed25519 firmware release key; prints the public key for firmware.trusted_keys."""
    try:
        pub = keys.write_keygen(out)
    except FileExistsError:
        raise fail(f"{out} exists; refusing to overwrite a key") from None
    typer.echo(pub)
    say(
        f"private key in {out}; add the public key above to [firmware] trusted_keys on every "
        "node (devices pin it when built, flashed or provisioned with --device)"
    )


def _release(client: HubClient, out: Path, sign_key: Path) -> tuple[str, str, list[str]]:
    """Upload the bundle to every node and register its signed release."""
    with reported(1):
        key = release_key(sign_key)
        sha, here, stored = upload(client, out)
        rel = release(client, out, key)
    what = "registered" if rel["registered"] else "already registered"
    typer.echo(f"release {rel['name']}@{rel['version']} ({sha}) {what}")
    return sha, here, stored


@firmware_app.command("release")
def release_cmd(
    sign_key: Annotated[
        Path, typer.Option("--sign-key", help="Firmware release key (aiot firmware keygen).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The built bundle.")] = DEFAULT_OUT,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Upload the bundle to the hubs, sign it as a release and register it."""
    with session(config, hub, token) as client:
        sha, _, stored = _release(client, out, sign_key)
    typer.echo(f"bundle {sha} on {len(stored)} node(s)")


@firmware_app.command("ota")
def ota_cmd(
    device: Annotated[str, typer.Argument(help="The device to update.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The built bundle.")] = DEFAULT_OUT,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The bundle's base URL as the device reaches it."),
    ] = None,
    sign_key: SignKeyOpt = None,
    allow_downgrade: Annotated[
        bool,
        typer.Option("--allow-downgrade", help="Let an older release replace the running one."),
    ] = False,
    wait_s: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the outcome (0: don't).")
    ] = 0.0,
) -> None:
    """Upload the bundle to the hubs and send the device a signed ota.update command
    (the bundle must be a registered release: --sign-key registers it)."""
    with session(config, hub, token) as client:
        if sign_key is not None:
            sha, here, stored = _release(client, out, sign_key)
        else:
            with reported(1):
                sha, here, stored = upload(client, out)
        with reported(1):
            rec = send(client, device, url or here, sha, allow_downgrade=allow_downgrade)
        typer.echo(f"bundle {sha} on {len(stored)} node(s); command {rec['command_id']}")
        if wait_s > 0:
            rec = wait(client, rec["command_id"], wait_s, _show_step)
    typer.echo(json.dumps(rec, indent=1))
    if wait_s > 0 and rec.get("state") != "DONE":
        raise typer.Exit(1)


@firmware_app.command("virtual-board")
def virtual_cmd(
    directory: Annotated[Path, typer.Argument(help="The board's file system (a directory).")],
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1.")] = 7000,
) -> None:
    """Serve a virtual board (MicroPython unix port behind socat) until Ctrl-C."""
    with reported():
        vb = VirtualBoard(directory, port).start()
    typer.echo(f"virtual board at {vb.url}, file system {directory}")
    typer.echo(f"flash:    aiot firmware flash --port {vb.url} --out BUNDLE")
    typer.echo(f"power on: cd {directory} && MICROPYPATH=.:.frozen micropython -m loader")
    try:
        assert vb.proc is not None
        vb.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        vb.stop()
