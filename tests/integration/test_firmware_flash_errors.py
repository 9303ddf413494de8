"""`aiot firmware flash`'s error paths: each one clear line and a non-zero exit."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.support import micropython, need_tool
from tools.base.ports import free_port
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build
from tools.firmware.flash import describe_open_error, esptool_argv
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard

pytestmark = pytest.mark.micropython

REGISTRY = {"device_id": "plug-e", "key": "00" * 32, "hubs": [["127.0.0.1", 1883]]}


def cli() -> typer.Typer:
    app = typer.Typer()
    cli_firmware.register(app)
    return app


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli(), ["firmware", *args])
    return res.exit_code, res.output


def one_line(out: str) -> str:
    """The whole output of a failed command: exactly one line (no progress
    bar, nothing the port said, no traceback)."""
    lines = out.strip("\n").splitlines()
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {b: (build(BOARDS[b], REGISTRY, root / b), root / b)[1] for b in ("unix", "esp32")}


@contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port that accepts and then never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for s in held:
            s.close()
        srv.close()


def test_missing_port(bundles: dict[str, Path]) -> None:
    code, out = run("flash", "--port", "/dev/ttyUSB97", "--out", str(bundles["unix"]))
    assert code == 1
    assert "no such port /dev/ttyUSB97: is the board plugged in?" in one_line(out)


def test_nothing_listening_on_a_socket_port(bundles: dict[str, Path]) -> None:
    url = f"socket://127.0.0.1:{free_port()}"
    code, out = run("verify", "--port", url)
    assert code == 1 and f"nothing answers at {url}" in one_line(out)


def test_a_port_that_never_answers_times_out(bundles: dict[str, Path]) -> None:
    with silent_port() as port:
        url = f"socket://127.0.0.1:{port}"
        code, out = run("flash", "--port", url, "--out", str(bundles["unix"]), "--timeout", "2")
    assert code == 1
    assert f"no answer from {url} within 2s: is it a MicroPython board?" in one_line(out)
    assert "b''" not in out  # what mpremote prints of a silent port


def test_wrong_board_is_refused_before_anything_is_written(
    tmp_path: Path, bundles: dict[str, Path]
) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    with VirtualBoard(tmp_path / "vb") as vb:
        code, out = run("flash", "--port", vb.url, "--out", str(bundles["esp32"]))
        assert code == 1
        assert "wrong board on socket://" in one_line(out) and "the bundle is for esp32" in out
        assert "(build with --board unix)" in out
        code, out = run(
            "flash", "--port", vb.url, "--out", str(bundles["unix"]), "--board", "esp32"
        )
        assert code == 1 and "--board esp32 but the bundle" in out
    assert list((tmp_path / "vb").iterdir()) == []  # nothing was written


def test_open_errors_name_the_cause_and_the_group() -> None:
    denied = describe_open_error("/dev/null", PermissionError(errno.EACCES, "Permission denied"))
    assert denied.startswith("permission denied on /dev/null: join the root group")
    # pyserial wraps the OSError in its message; the reason still shows.
    wrapped = OSError("could not open port /dev/ttyACM0: [Errno 13] Permission denied: ...")
    assert "join the" in describe_open_error("/dev/ttyACM0", wrapped)
    busy = describe_open_error("/dev/ttyACM0", OSError(errno.EBUSY, "Device or resource busy"))
    assert "busy: close the other program" in busy


def test_erase_paths_that_need_no_hardware(tmp_path: Path, bundles: dict[str, Path]) -> None:
    # The esptool runs for an ESP32: erase, then the image at 0x1000 (0x0 on the S3).
    erase, write = esptool_argv("esp32", "/dev/ttyUSB0", Path("fw.bin"))
    assert " ".join(erase[1:]) == (
        "-m esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 erase_flash"
    )
    assert write[-3:] == ["-z", "0x1000", "fw.bin"]
    assert esptool_argv("esp32s3", "/dev/ttyACM0", Path("s3.bin"))[1][-2] == "0x0"
    code, out = run("flash", "--port", "/dev/ttyUSB0", "--out", str(bundles["esp32"]), "--erase")
    assert code == 2 and "--erase needs --micropython IMAGE" in out
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9" + bytes(100))
    code, out = run(
        "flash",
        "--port",
        "socket://127.0.0.1:1",
        "--out",
        str(bundles["esp32"]),
        "--erase",
        "--micropython",
        str(image),
    )
    assert code == 1 and "esptool needs a serial port" in out
