# The device firmware with its own history, for the fault-injection campaign
# (tools/chaos/campaign.py) on the unix port:
#
#   MICROPYPATH=.:.frozen micropython tools/mpy/chaos_device.py --config dev.json
#
# runs firmware/main.py's main() unchanged, with every Node it builds wrapped
# by History below. Nothing of this is in the firmware itself: its heap budget
# has no room for a hook it never uses on a board.
#
# History(node, directory), before node.run():
#
# history.log in the data directory (the device's "flash", so it survives a
# power cut) gets one line per event, written as it happens:
#
#   B <boot_epoch> <watermark>   a boot, with the watermark read from flash
#   F <first> <n>                readings first..first+n-1 reached flash (one
#                                record; logged after the write returned)
#   W <watermark>                a commit-ack moved the acknowledged watermark
#   X <command_id>               a command's handler is about to run: the one
#                                execution the executor allows for that id
#   J <ms>                       the clock jumped by ms (see clock.jump)
#
# A line may be missing after a power cut (the cut came between the event and
# its line), never invented: each is written after what it reports happened,
# except X, which is written after the executor persisted EXECUTING and just
# before the handler acts.
#
# clock.jump: a file holding a signed integer of milliseconds. Within about
# 0.2 s the device moves its clock by that much (Clock.jump), logs J and
# removes the file. Write it elsewhere and rename it into place.
import asyncio
import os

_LOG = "history.log"
_JUMP = "clock.jump"


class History:
    def __init__(self, node, directory):
        self.node = node
        self.dir = directory
        self.f = open(directory + "/" + _LOG, "a")  # noqa: SIM115 - open for the run
        meta = node.meta
        self.wm = meta.watermark
        self.line("B %d %d" % (meta.boot_epoch, meta.watermark))
        # Instance attributes shadow the methods the node calls.
        store = node.store
        flush = store.flush

        def flush_logged():
            first = store.next_seq
            n = flush()
            if n:
                self.line("F %d %d" % (first, n))
            return n

        store.flush = flush_logged
        on_ack = node.uplink.on_ack

        def on_ack_logged(fields):
            on_ack(fields)
            w = meta.watermark
            if w > self.wm:
                self.wm = w
                self.line("W %d" % w)

        node.uplink.on_ack = on_ack_logged
        handlers = node.executor.handlers
        for action in list(handlers):
            handlers[action] = self._logged(handlers[action])
        run = node.run

        async def run_watched():
            watch = asyncio.create_task(self._watch())
            try:
                await run()
            finally:
                watch.cancel()

        node.run = run_watched

    def line(self, text):
        self.f.write(text + "\n")
        self.f.flush()

    def _logged(self, handler):
        ex = self.node.executor

        def run(params):
            self.line("X " + ex.current_id)
            if handler is not None:
                return handler(params)
            return None

        return run

    def jump_now(self):
        # Apply a pending clock.jump; True if there was one.
        path = self.dir + "/" + _JUMP
        try:
            with open(path) as f:
                ms = int(f.read().strip())
        except (OSError, ValueError):
            return False
        try:  # noqa: SIM105 - no contextlib on MicroPython
            os.remove(path)
        except OSError:
            pass
        self.node.clock.jump(ms)
        self.line("J %d" % ms)
        return True

    async def _watch(self):
        while not self.node.stopping:
            await asyncio.sleep(0.2)
            self.jump_now()


if __name__ == "__main__":
    import edge.node

    class _Node(edge.node.Node):
        def __init__(self, config, directory, *args):
            super().__init__(config, directory, *args)
            History(self, directory)

    edge.node.Node = _Node  # before firmware.main binds the name
    import firmware.main

    firmware.main.main()
