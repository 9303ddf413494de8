"""Copy a built bundle to a board with mpremote's transport: only what changed.

    with connect("/dev/ttyUSB0") as board:          # or "socket://127.0.0.1:7000"
        print(board.identify())
        print(board.hashes())                        # {path: (size, sha256)}
    report = flash("/dev/ttyUSB0", Path("build/plug-1"), reset=True)
    report = flash(port, Path("build/esp32"), provision=Provision(device_config))
    report = provision_board(port, Provision(device_config))    # config.json alone

Order on the board: read every managed file's sha256 (one script run on the
board), remove app_a files the bundle no longer has, copy the changed app
files, the loader (and boot.py, main.py), ota.json, then config.json, then
reset. The virtual board (the unix port behind socat) is not reset: mpremote's
soft reset would end its process, so it is left at its REPL (``reset=False``,
mpremote's ``resume``).

config.json is the bundle's, or with ``provision`` the device's (a generic
bundle has none). Flashing neither keeps the config a board already has; a
board left with none will not start (``report.config`` says which).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import importlib.util
import io
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tools.base.errors import ToolError
from tools.firmware.build import (
    BOARDS,
    Board,
    BuildError,
    Provision,
    checked_budget,
    config_bytes,
    load_bundle,
    sha256_hex,
)

# Runs on the board: every file at the root and under app_a/ and app_b/,
# with its size and sha256, one per line, then a terminator.
_HASH_SCRIPT = """
import os, hashlib, binascii
def _h(p):
    d = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    n = 0
    with open(p, 'rb') as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            d.update(m[:k])
            n += k
    return n, binascii.hexlify(d.digest()).decode()
def _w(d, deep):
    for e in os.ilistdir(d if d else '.'):
        p = d + '/' + e[0] if d else e[0]
        if e[1] == 0x4000:
            if deep or e[0] in ('app_a', 'app_b'):
                _w(p, True)
        else:
            n, s = _h(p)
            print('F', p, n, s)
_w('', False)
print('END')
"""

_IDENT_SCRIPT = (
    "import sys\n"
    "print('PLATFORM', sys.platform)\n"
    "print('MPY', getattr(sys.implementation, '_mpy', 0))\n"
    "print('MACHINE', getattr(sys.implementation, '_machine', ''))\n"
)

# Runs on a real board after Ctrl-C stopped the app: if the app started a
# watchdog, feed it from a timer while the files are copied.
_WDT_SCRIPT = """
import sys
_b = sys.modules.get('firmware.board')
if _b is not None and getattr(_b, 'wdt', None) is not None:
    import machine
    _w = _b.wdt
    _w.feed()
    machine.Timer(0 if sys.platform == 'esp32' else -1).init(
        period=1000, mode=machine.Timer.PERIODIC, callback=lambda t: _w.feed())
    print('WDT fed')
"""

Progress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)
ConfigSource = Literal["bundle", "written", "kept", "none"]  # FlashReport.config


class FlashError(ToolError):
    """The board could not be flashed; the message says why and what to do."""


@dataclass
class FlashReport:
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    board: dict[str, Any] = field(default_factory=dict)
    reset: bool = False
    # The board's config.json: "bundle" (the bundle's), "written" (the
    # device's, given to the flash), "kept" (already on the board), "none"
    # (the board has none: it will not start until one is written).
    config: ConfigSource = "none"
    firmware: bool = True  # the board holds the loader (provisioning alone may find none)


def _port_group(path: str) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"


def describe_open_error(port: str, exc: BaseException) -> str:
    """One clear line for a port that cannot be opened."""
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err == errno.ENOENT or "No such file" in text:
        return f"no such port {port}: is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)"
    if err in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        group = _port_group(port)
        return (
            f"permission denied on {port}: join the {group} group "
            f"(sudo usermod -aG {group} $USER, then log out and in again)"
        )
    if err == errno.EBUSY or "busy" in text.lower():
        return f"{port} is busy: close the other program using it (a serial monitor, mpremote)"
    if port.startswith("socket://"):
        return f"nothing answers at {port}: is the virtual board running? ({text})"
    return f"cannot open {port}: {text}"


def _check_port(port: str) -> None:
    if "://" in port:
        return
    if not os.path.exists(port):
        raise FlashError(describe_open_error(port, FileNotFoundError(errno.ENOENT, "No such file")))
    st = os.stat(port)
    if not stat.S_ISCHR(st.st_mode):
        raise FlashError(f"{port} is not a serial device")
    if not os.access(port, os.R_OK | os.W_OK):
        raise FlashError(
            describe_open_error(port, PermissionError(errno.EACCES, "Permission denied"))
        )


class Connection:
    """A board in mpremote's raw REPL."""

    def __init__(self, port: str, timeout: float = 10.0, soft_reset: bool = False) -> None:
        # lazy: mpremote and pyserial (the dev extra) load only to reach a board
        import serial  # type: ignore[import-untyped]  # lazy: as above
        from mpremote.transport import TransportError  # type: ignore[import-untyped]  # lazy
        from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]  # lazy

        self._error: type[Exception] = TransportError
        self.port = port
        self.timeout = timeout
        _check_port(port)
        try:  # open once ourselves: mpremote's own error drops the reason
            probe = serial.serial_for_url(port, timeout=timeout, exclusive=True)
            probe.close()
        except (OSError, ValueError) as exc:
            raise FlashError(describe_open_error(port, exc)) from None
        try:
            self.t = SerialTransport(port, baudrate=115200)
        except TransportError as exc:
            raise FlashError(f"cannot open {port}: {exc}") from None
        # mpremote prints whatever the port said when it cannot get a raw REPL
        # (b'' from a silent port): the error below says it once, clearly.
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                self.t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=timeout)
        except (TransportError, OSError) as exc:
            self.t.close()
            heard = said.getvalue().strip()
            if heard and heard not in ("b''", 'b""'):
                exc = TransportError(f"{exc}; the port said {heard[:120]}")
            raise FlashError(
                f"no answer from {port} within {timeout:g}s: is it a MicroPython board? "
                f"(is another program holding the port? unplug and plug the board back) [{exc}]"
            ) from None

    def run(self, script: str) -> str:
        try:
            out: bytes = self.t.exec(script)
        except self._error as exc:
            raise FlashError(f"the board at {self.port} failed: {exc}") from None
        return out.decode(errors="replace")

    def identify(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for line in self.run(_IDENT_SCRIPT).splitlines():
            key, _, value = line.strip().partition(" ")
            info[key.lower()] = value
        mpy = int(info.get("mpy") or 0)
        info["mpy_version"] = mpy & 0xFF
        info["arch"] = mpy >> 10
        return info

    def hashes(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        text = self.run(_HASH_SCRIPT)
        if "END" not in text.split():
            raise FlashError(f"the board did not list its files: {text[-300:]}")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "F":
                out[parts[1]] = (int(parts[2]), parts[3])
        return out

    def mkdirs(self, dirs: list[str]) -> None:
        if dirs:
            self.run(
                "import os\n"
                f"for d in {dirs!r}:\n"
                "    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
            )

    def write(self, path: str, data: bytes, progress: Callable[[int], None]) -> None:
        try:
            self.t.fs_writefile(
                path, data, chunk_size=512, progress_callback=lambda done, _total: progress(done)
            )
        except (self._error, OSError) as exc:
            raise FlashError(f"writing {path} to {self.port} failed: {exc}") from None

    def remove(self, path: str) -> None:
        self.run(f"import os\nos.remove({path!r})\n")

    def reset(self) -> None:
        self.t.exec_raw_no_follow("import machine\nmachine.reset()\n")

    def close(self, leave_repl: bool = True) -> None:
        with contextlib.suppress(Exception):
            if leave_repl:
                self.t.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.t.close()


@contextlib.contextmanager
def connect(port: str, timeout: float = 10.0, soft_reset: bool = False) -> Iterator[Connection]:
    c = Connection(port, timeout, soft_reset)
    try:
        yield c
    finally:
        c.close()


def board_of(ident: dict[str, Any]) -> Board | None:
    """The kind of board that `Connection.identify` describes, if it is one we build for."""
    platform = ident.get("platform", "")
    machine = ident.get("machine", "")
    return next(
        (
            b
            for b in BOARDS.values()
            if b.platform == platform
            and (not b.machine or b.machine in machine)
            and not (b.name == "esp32" and "ESP32S3" in machine)
        ),
        None,
    )


def check_board(board: Board, ident: dict[str, Any], port: str) -> None:
    """The board on the port is the kind the bundle was built for."""
    platform = ident.get("platform", "")
    machine = ident.get("machine", "")
    right = platform == board.platform and (not board.machine or board.machine in machine)
    if (board.name == "esp32" and "ESP32S3" in machine) or (
        board.name == "esp32s3" and "ESP32S3" not in machine
    ):
        right = False
    if not right:
        found = board_of(ident)
        hint = f" (build with --board {found.name})" if found else ""
        raise FlashError(
            f"wrong board on {port}: it is {machine or platform!r} ({platform}), "
            f"the bundle is for {board.name}{hint}"
        )
    if ident.get("mpy_version") and ident["mpy_version"] != 6:
        raise FlashError(
            f"the board at {port} runs .mpy version {ident['mpy_version']}, the bundle has 6: "
            "flash a MicroPython 1.22 or newer image (--erase --micropython IMAGE)"
        )


def _order(path: str) -> tuple[int, str]:
    # App files first, then the loader and boot files, ota.json, config.json last.
    if path.startswith("app_a/"):
        return (0, path)
    if path == "ota.json":
        return (2, path)
    if path == "config.json":
        return (3, path)
    return (1, path)


def _dirs(paths: list[str]) -> list[str]:
    """The directories ``paths`` need, parents first."""
    dirs: list[str] = []
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    return dirs


def _copy(
    c: Connection,
    sources: dict[str, bytes | Path],
    files: dict[str, list[Any]],
    have: dict[str, tuple[int, str]],
    report: FlashReport,
    progress: Progress | None,
) -> None:
    """Write the files whose (size, sha256) on the board differs, in `_order`;
    then check every one of ``files`` on the board."""
    todo = [p for p in sorted(files, key=_order) if have.get(p) != tuple(files[p])]
    report.unchanged = sorted(set(files) - set(todo))
    c.mkdirs(_dirs(todo))
    total = sum(files[p][0] for p in todo)
    done = 0
    for p in todo:
        src = sources[p]
        data = src if isinstance(src, bytes) else src.read_bytes()
        if isinstance(src, Path) and len(data) != files[p][0]:
            raise BuildError(f"{src} changed since the build: build again")

        def step(n: int, p: str = p, base: int = done) -> None:
            if progress is not None:
                progress(p, base + n, total)

        c.write(p, data, step)
        done += len(data)
        if progress is not None:
            progress(p, done, total)
        report.copied.append(p)
    report.bytes_copied = done
    after = c.hashes()
    wrong = [p for p in files if after.get(p) != tuple(files[p])]
    if wrong:
        raise FlashError(f"the board's files differ after flashing: {', '.join(wrong[:5])}")


def flash(
    port: str,
    bundle: Path,
    *,
    board_name: str | None = None,
    reset: bool | None = None,
    timeout: float = 10.0,
    progress: Progress | None = None,
    provision: Provision | None = None,
) -> FlashReport:
    """Copy the bundle's changed files to the board at ``port``; with
    ``provision``, that device's config.json instead of the bundle's.
    ``report.config`` says where the board's config.json came from."""
    info = load_bundle(bundle)
    board = BOARDS.get(info["board"])
    if board is None:
        raise FlashError(f"{bundle}: unknown board {info['board']!r}")
    if board_name is not None and board_name != board.name:
        raise FlashError(
            f"--board {board_name} but the bundle in {bundle} is for {board.name}: "
            f"build it with --board {board_name}"
        )
    if reset is None:
        reset = board.stubs  # the unix port resumes instead
    files: dict[str, list[Any]] = dict(info["files"])
    sources: dict[str, bytes | Path] = {p: bundle / "board" / p for p in files}
    report = FlashReport(config="bundle" if "config.json" in files else "none")
    if provision is not None:
        cfg = provision.config(board)
        data = config_bytes(cfg)
        files["config.json"] = [len(data), sha256_hex(data)]
        sources["config.json"] = data
        checked_budget(board, files, cfg)
        report.config = "written"
    # No soft reset: it would end the unix port, and on a board it does not
    # stop a running watchdog; Ctrl-C stops the app, and the timer feeds
    # the watchdog until the reset at the end.
    with connect(port, timeout) as c:
        ident = c.identify()
        report.board = ident
        check_board(board, ident, port)
        if board.stubs:
            c.run(_WDT_SCRIPT)
        have = c.hashes()
        if report.config == "none" and "config.json" in have:
            report.config = "kept"
        for path in sorted(have):
            if path.startswith("app_a/") and path not in files:
                c.remove(path)
                report.removed.append(path)
        _copy(c, sources, files, have, report, progress)
        if reset:
            c.reset()
            report.reset = True
    return report


def provision_board(
    port: str, provision: Provision, reset: bool | None = None, timeout: float = 10.0
) -> FlashReport:
    """Write the device's config.json to the board at ``port`` (whatever
    firmware it holds), for the kind of board it is, then reset it (a real
    board; ``reset`` False: leave it at its REPL) so that it starts."""
    with connect(port, timeout) as c:
        ident = c.identify()
        board = board_of(ident)
        if board is None:
            raise FlashError(
                f"the board at {port} is {ident.get('machine') or ident.get('platform')!r}: "
                f"not one of {', '.join(BOARDS)}"
            )
        data = config_bytes(provision.config(board))
        report = FlashReport(board=ident, config="written")
        if board.stubs:
            c.run(_WDT_SCRIPT)
        have = c.hashes()
        report.firmware = "loader.mpy" in have
        files = {"config.json": [len(data), sha256_hex(data)]}
        _copy(c, {"config.json": data}, files, have, report, None)
        if board.stubs if reset is None else reset:
            c.reset()
            report.reset = True
    return report


def verify(port: str, bundle: Path | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """The board's identity and file hashes; compared with ``bundle`` if given."""
    with connect(port, timeout) as c:
        ident = c.identify()
        have = c.hashes()
    out: dict[str, Any] = {
        "port": port,
        "board": ident,
        "files": {p: {"size": s, "sha256": h} for p, (s, h) in sorted(have.items())},
    }
    if bundle is not None:
        info = load_bundle(bundle)
        want: dict[str, list[Any]] = info["files"]
        out["bundle"] = str(bundle)
        out["missing"] = sorted(p for p in want if p not in have)
        out["different"] = sorted(p for p in want if p in have and have[p] != tuple(want[p]))
        out["matches"] = not out["missing"] and not out["different"]
    return out


# -- writing the MicroPython image ------------------------------------------------------

ESP_OFFSETS = {"esp32": "0x1000", "esp32s3": "0x0"}


def esptool_argv(board: str, port: str, image: Path) -> list[list[str]]:
    """The esptool runs that erase the flash and write the MicroPython image."""
    chip = {"esp32": "esp32", "esp32s3": "esp32s3"}[board]
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", "460800"]
    return [[*base, "erase_flash"], [*base, "write_flash", "-z", ESP_OFFSETS[board], str(image)]]


def find_uf2_drive() -> Path | None:
    """A Pico in BOOTSEL mode mounts as a drive with INFO_UF2.TXT (label RPI-RP2)."""
    user = os.environ.get("USER", "root")
    for base in (Path("/media") / user, Path("/run/media") / user, Path("/media"), Path("/mnt")):
        with contextlib.suppress(OSError):
            for d in base.iterdir():
                if (d / "INFO_UF2.TXT").exists():
                    return d
    return None


def write_image(
    board: str,
    port: str,
    image: Path,
    uf2_drive: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    wait_s: float = 30.0,
) -> None:
    """Erase the board and write a MicroPython image: esptool for ESP32, a UF2
    copy for the Pico W. Needs the real board; nothing here can simulate it."""
    if not image.is_file():
        raise FlashError(f"no MicroPython image at {image}")
    if board in ESP_OFFSETS:
        if "://" in port:
            raise FlashError("esptool needs a serial port, not " + port)
        _check_port(port)
        if image.suffix != ".bin":
            raise FlashError(f"{image}: an ESP32 image is a .bin file")
        if importlib.util.find_spec("esptool") is None:
            raise FlashError("esptool is not installed: pip install esptool")
        for argv in esptool_argv(board, port, image):
            say("$ " + " ".join(argv[1:]))
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise FlashError(f"esptool failed on {port}: {' '.join(tail)}")
        return
    if board == "pico_w":
        if image.suffix != ".uf2":
            raise FlashError(f"{image}: a Pico W image is a .uf2 file")
        drive = uf2_drive or find_uf2_drive()
        if drive is None:
            raise FlashError(
                "no Pico in BOOTSEL mode: hold BOOTSEL while plugging it in, then give "
                "--uf2-drive (the RPI-RP2 drive's mount point) if it is not found"
            )
        say(f"copying {image.name} to {drive}")
        shutil.copy(image, drive / image.name)
        deadline = time.monotonic() + wait_s
        while not os.path.exists(port):
            if time.monotonic() > deadline:
                raise FlashError(f"{port} did not appear within {wait_s:g}s after the UF2 copy")
            time.sleep(0.5)
        return
    raise FlashError(f"{board} has no image to write (the unix port is the interpreter itself)")
