"""Firmware tooling behind `aiot firmware`: build, flash, verify, OTA, a virtual board.

    build.py     edge/ and firmware/ -> a bundle of .mpy files for one board
                 and one device (config from the hub's registry)
    flash.py     copy a bundle to a board with mpremote: changed files only
    virtual.py   the unix port behind socat: a board mpremote can flash
    ota.py       upload a bundle to the hubs; send the ota.update command
    typecheck.py mypy over edge/ and firmware/ against the MicroPython stubs

docs/flashing.md walks through it from an unboxed board.
"""
