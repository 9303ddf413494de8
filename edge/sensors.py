# Sensors behind one interface: sample(now_ms) -> ((sensor id, value), ...).
#
# Sensor ids of the energy scenario (the hub and the tools use the same):
POWER_W = 0
ENERGY_WH = 1
VOLTAGE_V = 2
NAMES = ("power_w", "energy_wh", "voltage_v")


class _Rand:
    # xorshift32: the same sequence on MicroPython and CPython.
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def uniform(self, lo, hi):
        return lo + (hi - lo) * (self.next() / 4294967296)


# Appliances: (name, watts, seconds on)
_APPLIANCES = (
    ("kettle", 2200.0, 120),
    ("heater", 1800.0, 300),
    ("oven", 2400.0, 240),
    ("iron", 1200.0, 180),
)


class SimulatedPlug:
    # A smart plug in front of a household load: a fridge cycling, a standby
    # floor, and appliance events that push power over a typical limit about
    # every `event_every_s` seconds. Values carry a meter's resolution
    # (0.1 W, 0.01 Wh, 0.1 V). Switching the relay off drops the power to 0.
    def __init__(self, seed=1, event_every_s=30, start_energy_wh=0.0):
        self.r = _Rand(seed)
        self.event_every_ms = event_every_s * 1000
        self.energy = start_energy_wh
        self.relay_on = True
        self._last_ms = None
        self._event_end = 0
        self._event_w = 0.0
        self._next_event = None
        self.events = 0

    def _load(self, now_ms):
        if self._next_event is None:
            self._next_event = now_ms + int(self.r.uniform(0.5, 1.5) * self.event_every_ms)
        if now_ms >= self._next_event:
            _name, watts, secs = _APPLIANCES[self.r.next() % len(_APPLIANCES)]
            self._event_w = watts * self.r.uniform(0.9, 1.1)
            self._event_end = now_ms + secs * 1000 // 6  # short, for demos and tests
            self._next_event = now_ms + int(self.r.uniform(0.5, 1.5) * self.event_every_ms)
            self.events += 1
        fridge = 110.0 if (now_ms // 60000) % 3 == 0 else 4.0
        w = 35.0 + fridge + self.r.uniform(-3.0, 3.0)
        if now_ms < self._event_end:
            w += self._event_w
        return w

    def sample(self, now_ms):
        w = self._load(now_ms) if self.relay_on else 0.0
        if self._last_ms is not None:
            self.energy += w * (now_ms - self._last_ms) / 3600000.0
        self._last_ms = now_ms
        volts = 230.0 + self.r.uniform(-2.0, 2.0) - w / 2000.0
        return (
            (POWER_W, round(w, 1)),
            (ENERGY_WH, round(self.energy, 2)),
            (VOLTAGE_V, round(volts, 1)),
        )
