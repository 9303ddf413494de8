"""Firmware tooling behind `aiot firmware`: build, flash, verify, OTA, a virtual board.

    build.py     edge/ and firmware/ -> a bundle of .mpy files for one board:
                 generic, or for one device (its config from the hub's
                 registry or the file `aiot device add --out` wrote)
    flash.py     copy a bundle to a board with mpremote: changed files only;
                 write a device's config.json when flashing or alone
    virtual.py   the unix port behind socat: a board mpremote can flash
    ota.py       upload a bundle to the hubs; send the ota.update command
    typecheck.py mypy over edge/ and firmware/ against the MicroPython stubs

docs/flashing.md walks through it from an unboxed board.
"""
