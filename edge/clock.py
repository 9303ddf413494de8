# The device clock: milliseconds since the Unix epoch, synced to the hub.
#
# Readings are stamped when they are sampled, so readings taken offline keep
# their original times. Each CommitAck carries the hub's time; sync() moves
# the offset toward it (steps when far off, slews when close), so the clock
# never jumps back by more than a slew step while in sync.
import time

try:
    from time import ticks_add, ticks_diff, ticks_ms  # MicroPython
except ImportError:  # CPython
    # (The type: ignores are for the MicroPython stubs' check, which sees
    # MicroPython's time module with these functions and no monotonic.)
    def ticks_ms():  # type: ignore[misc]
        return int(time.monotonic() * 1000) & 0x3FFFFFFF  # type: ignore[attr-defined]

    def ticks_diff(a, b):  # type: ignore[no-redef]
        d = (a - b) & 0x3FFFFFFF
        return d - 0x40000000 if d & 0x20000000 else d

    def ticks_add(a, b):  # type: ignore[misc]
        return (a + b) & 0x3FFFFFFF


_STEP_MS = 2000  # further off than this: step to the hub's time
_SLEW_MS = 50  # closer: move at most this much per sync


def _wall_ms():
    # Wall time where the port has an RTC (unix, or a board after NTP);
    # otherwise the epoch is wrong until the first sync.
    try:
        return int(time.time_ns() // 1000000)
    except AttributeError:
        return int(time.time() * 1000)


class Clock:
    def __init__(self):
        self._base_ticks = ticks_ms()
        self._base_ms = _wall_ms()
        self._elapsed = 0  # ms since base, tracked across tick wraps
        self._last = self._base_ticks
        self.synced = False
        self.offset_ms = 0  # last correction applied
        self.syncs = 0

    def now_ms(self):
        t = ticks_ms()
        self._elapsed += ticks_diff(t, self._last)
        self._last = t
        return self._base_ms + self._elapsed

    def sync(self, hub_ms, rtt_ms=0):
        # hub_ms: the hub's time when it sent the ack; rtt_ms: round trip of
        # the batch it acknowledges (half of it is the ack's flight time).
        target = hub_ms + rtt_ms // 2
        diff = target - self.now_ms()
        if not self.synced or diff > _STEP_MS or diff < -_STEP_MS:
            step = diff
        else:
            step = max(-_SLEW_MS, min(_SLEW_MS, diff))
        self._base_ms += step
        self.offset_ms = step
        self.synced = True
        self.syncs += 1
        return step

    def jump(self, ms):
        # Test hook: the clock jumps (a bad RTC, a chaos test).
        self._base_ms += ms
