"""Build a firmware bundle: edge/ and firmware/ compiled to .mpy for one board,
and for one device when its config is given. firmware/manifest.toml says what
ships and where the version is.

    bundle = build(BOARDS["esp32"], None, Path("build/esp32"))            # generic, offline
    bundle = build(BOARDS["esp32"], device_config, Path("build/plug-1"), wifi=...)

Output directory::

    OUT/bundle.json        board, device (null for a generic bundle), bundle
                           sha256, every board file's size and sha256, the
                           flash budget
    OUT/board/             exactly what goes on the board's file system:
        boot.py, main.py   (boards only) Wi-Fi at boot; "import loader"
        loader.mpy         the A/B app loader (firmware/loader.py)
        ota.json           loader state: app a, nothing pending
        config.json        the device's settings and secrets (not in a
                           generic bundle: flashing or provisioning writes it)
        app_a/edge/*.mpy, app_a/firmware/*.mpy
    OUT/ota/               the same app as an over-the-air bundle:
        manifest.json      platform, .mpy version, every file's size and sha256
        edge/..., firmware/...

The bundle sha256 is the sha256 of ``ota/manifest.json``: it names the app
(not the device: the config is not part of it), so one OTA bundle serves
every device of a board type.

A device's config.json (`device_settings`) is made of the template's
settings, extra settings, what the hub's registry says about the device (or
the file `aiot device add --out` wrote: `load_device_config`) and the Wi-Fi
secrets; `Provision` holds those parts until the board is known.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.base.errors import ToolError
from tools.base.paths import ROOT
from tools.firmware.mpybuild import MpyBuildError, mpy_cross_binary

KIB = 1024
MIB = 1024 * KIB
MPY_VERSION = 6  # what mpy-cross >= 1.22 writes; sys.implementation._mpy & 0xff
MANIFEST = "firmware/manifest.toml"
MAIN_STUB = (
    "# Written by aiot firmware build: the A/B app loader starts the app.\n"
    "import loader\n\nloader.run()\n"
)
INITIAL_OTA_STATE = '{"active": "a"}\n'
# Settings in the config template that the hub registry or the secrets file
# provide, or that only explain (release_keys: the firmware release keys the
# hub trusts, which the device pins, edge/ota.py; ca: the cluster CA the
# device pins for MQTT over TLS, edge/mqtt.py, absent from a plain-TCP hub).
FROM_HUB = ("device_id", "key", "hubs", "user", "password", "release_keys", "ca")
_WIFI = ("wifi_ssid", "wifi_password")


@dataclass(frozen=True, slots=True)
class Board:
    name: str
    march: str  # mpy-cross -march
    platform: str  # sys.platform on the board
    machine: str  # a substring of sys.implementation._machine ("" for any)
    fs_bytes: int | None  # the stock MicroPython build's file system size
    stubs: bool  # boot.py and main.py on the file system (real boards)
    data_dir: str  # where the device keeps its slots
    slot_capacity: int  # default bytes per A/B data slot (both fit the budget)
    note: str


BOARDS: dict[str, Board] = {
    "esp32": Board(
        "esp32",
        "xtensawin",
        "esp32",
        "ESP32",
        2 * MIB,
        True,
        "/data",
        512 * KIB,
        "ESP32_GENERIC, 4 MiB flash: a 2 MiB LittleFS partition",
    ),
    "esp32s3": Board(
        "esp32s3",
        "xtensawin",
        "esp32",
        "ESP32S3",
        6 * MIB,
        True,
        "/data",
        512 * KIB,
        "ESP32_GENERIC_S3, 8 MiB flash: a 6 MiB LittleFS partition",
    ),
    "pico_w": Board(
        "pico_w",
        "armv6m",
        "rp2",
        "Pico W",
        848 * KIB,
        True,
        "/data",
        256 * KIB,
        "RPI_PICO_W, 2 MiB flash: an 848 KiB LittleFS area",
    ),
    "unix": Board(
        "unix",
        "x64",
        "linux",
        "",
        None,
        False,
        "data",
        512 * KIB,
        "the MicroPython unix port (x86-64): the virtual board for tests",
    ),
}


class BuildError(ToolError):
    """The bundle cannot be built; the message says why and what to do."""


class DeviceConfigError(BuildError):
    """A device config file cannot be read, or is not one."""


@dataclass(frozen=True, slots=True)
class Provision:
    """What a device's config.json is made of, before the board is known:
    ``registry`` is the hub's device config (or a file's), ``settings`` the
    extra settings (pins, tuning), ``wifi`` the Wi-Fi secrets."""

    registry: dict[str, Any]
    wifi: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def device_id(self) -> str:
        return str(self.registry["device_id"])

    def config(self, board: Board, root: Path = ROOT) -> dict[str, Any]:
        """config.json for this device on ``board`` (`device_settings`)."""
        return device_settings(board, self.registry, self.wifi, self.settings, root)


def config_bytes(cfg: dict[str, Any]) -> bytes:
    """config.json as it is written to a bundle or a board."""
    return (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    """firmware/manifest.toml: what a bundle ships (paths relative to the root)."""

    version_module: str  # holds FIRMWARE = "x.y.z"
    app: tuple[str, ...]  # modules compiled into each A/B app slot, in order
    loader: str
    boot: str


def load_manifest(root: Path = ROOT) -> Manifest:
    path = root / MANIFEST
    try:
        doc = tomllib.loads(path.read_text())
        app = doc["app"]
        modules = [
            p.relative_to(root).as_posix()
            for package in app["packages"]
            for p in sorted((root / package).glob("*.py"))
        ]
        modules += list(app["modules"])
        return Manifest(doc["version"], tuple(modules), doc["root"]["loader"], doc["root"]["boot"])
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise BuildError(f"{path}: not a firmware manifest ({exc!r})") from None


def firmware_version(root: Path = ROOT) -> str:
    source = root / load_manifest(root).version_module
    m = re.search(r'^FIRMWARE = "([^"]+)"', source.read_text(), re.M)
    if m is None:
        raise BuildError(f'{source} sets no FIRMWARE = "x.y.z" (see {MANIFEST})')
    return m.group(1)


def _read_json(path: Path, what: str, error: type[BuildError] = BuildError) -> Any:
    """A JSON file, or one clear line saying why it is not one (``what`` names it)."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise error(f"{what} {path} is not valid JSON: {exc}") from None


def load_wifi(path: Path | None) -> dict[str, str]:
    """``{"wifi_ssid": ..., "wifi_password": ...}`` from a JSON secrets file."""
    if path is None:
        return {}
    data = _read_json(path, "Wi-Fi secrets")
    if not isinstance(data, dict) or not isinstance(data.get("wifi_ssid"), str):
        raise BuildError(
            f'Wi-Fi secrets {path}: expected {{"wifi_ssid": "...", "wifi_password": "..."}}'
        )
    return {k: str(data[k]) for k in _WIFI if k in data}  # "_comment" and others dropped


def _hub_list(hubs: Any) -> bool:
    return (
        isinstance(hubs, list)
        and bool(hubs)
        and all(
            isinstance(h, list)
            and len(h) == 2
            and isinstance(h[0], str)
            and isinstance(h[1], int)
            and not isinstance(h[1], bool)
            for h in hubs
        )
    )


def load_device_config(path: Path) -> dict[str, Any]:
    """A device's config from a JSON file: what `aiot device add ID --out FILE`
    writes (id, key, broker list, credentials), perhaps with more settings."""
    data = _read_json(path, "device config", DeviceConfigError)
    if not isinstance(data, dict):
        raise DeviceConfigError(f"device config {path}: expected a JSON object")
    missing = [k for k in ("device_id", "key", "hubs") if k not in data]
    if missing:
        raise DeviceConfigError(
            f"device config {path} lacks {', '.join(missing)}: "
            "`aiot device add ID --out FILE` writes a whole one"
        )
    if not isinstance(data["device_id"], str) or not data["device_id"]:
        raise DeviceConfigError(f"device config {path}: device_id must be a non-empty string")
    if not _hub_list(data["hubs"]):
        raise DeviceConfigError(
            f'device config {path}: hubs must be a list of [host, port], like [["127.0.0.1", 1883]]'
        )
    return data


def board_settings(
    board: Board, overrides: dict[str, Any] | None = None, root: Path = ROOT
) -> dict[str, Any]:
    """The settings every device of the board gets: the template's, the
    board's data directory and slot size, then ``overrides``."""
    template = json.loads((root / "firmware" / "config_template.json").read_text())
    cfg: dict[str, Any] = {
        k: v for k, v in template.items() if not k.startswith("_") and k not in FROM_HUB + _WIFI
    }
    cfg["data_dir"] = board.data_dir
    cfg["slot_capacity"] = board.slot_capacity
    cfg.update(overrides or {})
    return cfg


def device_settings(
    board: Board,
    registry: dict[str, Any],
    wifi: dict[str, str],
    overrides: dict[str, Any] | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """The device's config.json: `board_settings` with ``overrides``, then
    what the hub's registry says (id, key, broker list, credentials), then
    the Wi-Fi secrets."""
    cfg = board_settings(board, overrides, root)
    missing = [k for k in ("device_id", "key", "hubs") if k not in registry]
    if missing:
        raise BuildError(f"the hub's device config lacks {', '.join(missing)}")
    cfg.update({k: registry[k] for k in FROM_HUB if k in registry})
    cfg.update(wifi)
    return cfg


def _compile(mpy_cross: str, src: Path, dst: Path, name: str, march: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [mpy_cross, f"-march={march}", "-s", name, "-o", str(dst), str(src)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BuildError(f"mpy-cross failed on {name}: {proc.stderr.strip()}")


def _files(base: Path) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in sorted(base.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out[p.relative_to(base).as_posix()] = [len(data), sha256_hex(data)]
    return out


def _app_sources(root: Path, manifest: Manifest) -> list[tuple[Path, str]]:
    return [(root / m, m.removesuffix(".py") + ".mpy") for m in manifest.app]


def budget(board: Board, files: dict[str, list[Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Flash bytes the device needs against the board's file system."""
    app = sum(size for path, (size, _) in files.items() if path.startswith("app_a/"))
    rest = sum(size for path, (size, _) in files.items() if not path.startswith("app_a/"))
    raw_slots = bool(cfg.get("slots_partition") or cfg.get("slots_flash"))
    data = 0 if raw_slots else 2 * int(cfg.get("slot_capacity", 512 * KIB)) + 2 * 300
    need = 2 * app + rest + data
    out: dict[str, Any] = {
        "app_bytes": app,
        "ab_apps_bytes": 2 * app,
        "loader_config_bytes": rest,
        "data_slots_bytes": data,
        "data_slots_on": "raw partition" if raw_slots else "file system",
        "total_bytes": need,
        "budget_bytes": board.fs_bytes,
        "free_bytes": None if board.fs_bytes is None else board.fs_bytes - need,
    }
    return out


def checked_budget(
    board: Board, files: dict[str, list[Any]], cfg: dict[str, Any]
) -> dict[str, Any]:
    """`budget`, or a BuildError that says what to lower when it does not fit."""
    report = budget(board, files, cfg)
    if report["free_bytes"] is not None and report["free_bytes"] < 0:
        raise BuildError(
            f"the bundle needs {report['total_bytes']:,} bytes of flash but {board.name} "
            f"has {board.fs_bytes:,} ({board.note}); lower slot_capacity, or put the A/B "
            "data slots on a raw partition (slots_partition / slots_flash)"
        )
    return report


def build(
    board: Board,
    registry: dict[str, Any] | None,
    out: Path,
    *,
    wifi: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    root: Path = ROOT,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build the bundle into ``out`` (replacing what was there); returns bundle.json.
    ``registry`` None: a generic bundle, without config.json (its flash budget
    counts ``overrides`` and the board's default settings)."""
    try:
        mpy_cross = mpy_cross_binary()
    except MpyBuildError as exc:
        raise BuildError(str(exc)) from None
    if registry is None:
        cfg = board_settings(board, overrides, root)
    else:
        cfg = device_settings(board, registry, wifi or {}, overrides, root)
    shipped = load_manifest(root)
    if registry is not None and board.stubs and not cfg.get("wifi_ssid"):
        say("warning: no Wi-Fi secrets (--wifi-secrets): the device will boot offline")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        stage = Path(tmp)
        boardfs, ota = stage / "board", stage / "ota"
        for src, name in _app_sources(root, shipped):
            _compile(mpy_cross, src, ota / name, name, board.march)
        app_files = _files(ota)
        manifest = {
            "format": 1,
            "platform": board.platform,
            "board": board.name,
            "mpy": MPY_VERSION,
            "version": firmware_version(root),
            "files": app_files,
        }
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        (ota / "manifest.json").write_bytes(raw)
        shutil.copytree(ota, boardfs / "app_a", ignore=shutil.ignore_patterns("manifest.json"))
        loader = root / shipped.loader
        _compile(mpy_cross, loader, boardfs / "loader.mpy", loader.name, board.march)
        if board.stubs:
            shutil.copy(root / shipped.boot, boardfs / "boot.py")
            (boardfs / "main.py").write_text(MAIN_STUB)
        (boardfs / "ota.json").write_text(INITIAL_OTA_STATE)
        if registry is not None:
            (boardfs / "config.json").write_bytes(config_bytes(cfg))
        files = _files(boardfs)
        report = checked_budget(board, files, cfg)
        info: dict[str, Any] = {
            "format": 1,
            "board": board.name,
            "platform": board.platform,
            "machine": board.machine,
            "march": board.march,
            "mpy": MPY_VERSION,
            "version": manifest["version"],
            "device_id": cfg.get("device_id"),  # None: generic
            "bundle_sha256": sha256_hex(raw),
            "files": files,
            "budget": report,
        }
        (stage / "bundle.json").write_text(json.dumps(info, indent=1) + "\n")
        for name in ("board", "ota", "bundle.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (stage / name).rename(target)
    return info


def load_bundle(path: Path) -> dict[str, Any]:
    """bundle.json of a built bundle directory."""
    try:
        info: dict[str, Any] = json.loads((path / "bundle.json").read_text())
    except OSError:
        raise BuildError(
            f"{path} is not a built bundle (no bundle.json): run aiot firmware build"
        ) from None
    except ValueError as exc:
        raise BuildError(f"{path}/bundle.json is not valid JSON: {exc}") from None
    return info
