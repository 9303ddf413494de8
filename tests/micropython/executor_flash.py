# executor_runner.py with the device's flash in RAM, where the power can fail:
#
#   micropython executor_flash.py JOBS.jsonl  -> one JSON result per line
#
# The jobs are executor_runner.py's; init also takes "flash": {"image": path,
# "blocks": n, "cut_at": k or 0, "torn": bytes or null}. The metadata lives
# on LittleFS over edge/ramdisk.py's RAM block device, loaded from the image
# file (formatted when there is none). The k-th program or erase after init
# loses power (torn: its first bytes land) and the device stays dead: the
# job during which that happens prints its output with "dead": true and is
# the boot's last. Then the flash image, as the power left it, is written
# back to the file for the next boot.
import gc
import json
import os

import vfs

from edge.ramdisk import RAMBlockDev
from tests.micropython.executor_runner import Runner

_MOUNT = "/flash"


class Flash:
    def __init__(self, cfg):
        self.image = cfg["image"]
        try:
            with open(self.image, "rb") as f:
                image = f.read()
        except OSError:
            image = None  # a new device
        self.dev = RAMBlockDev(512, cfg["blocks"], image)
        if image is None:
            vfs.VfsLfs2.mkfs(self.dev)
        image = None
        vfs.mount(vfs.VfsLfs2(self.dev), _MOUNT)
        self.dir = _MOUNT + "/meta"
        try:
            os.mkdir(self.dir)
        except OSError:
            pass  # there already
        self.dev.power.ops = 0
        self.dev.cut_at = cfg.get("cut_at") or 0
        self.dev.torn = cfg.get("torn")

    def save(self):
        with open(self.image, "wb") as f:
            f.write(self.dev.image())


def main(path):
    r = Runner()
    flash = None
    with open(path) as f:
        while True:
            line = f.readline()
            if not line:
                break
            job = json.loads(line)
            line = None
            if job["op"] == "init":
                flash = Flash(job["flash"])
                job["dir"] = flash.dir
            gc.collect()
            out = r.run(job)
            if flash is not None and flash.dev.dead:  # the boot ends here
                out["dead"] = True
                print(json.dumps(out))
                break
            print(json.dumps(out))
            job = None
    if flash is not None:
        flash.save()


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
