# Mount the ROMFS image that tools/firmware/romfs.py mapped outside the heap, then run
# the script named after this one (its arguments follow), as a board would
# with its ROMFS partition: module bytecode executes in place.
import os
import sys

import uctypes
import vfs

spec = os.getenv("AIOT_ROMFS")
if not spec:
    raise SystemExit("romfs_boot: AIOT_ROMFS is not set; run through `python -m tools.romfs run`")
addr, size = spec.split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(addr), int(size))), "/rom")
sys.path.insert(0, "/rom")
del sys.argv[0]  # sys.argv cannot be rebound on MicroPython
script = sys.argv[0]
if script.startswith("-m"):
    name = sys.argv[1]
    __import__(name)
    mod = sys.modules[name]
    # Run as "-m": firmware/main.py starts the device only as __main__ (the
    # A/B loader imports it and calls main() itself).
    if name == "firmware.main":
        mod.main()
else:
    with open(script) as f:
        code = f.read()
    exec(compile(code, script, "exec"), {"__name__": "__main__"})
