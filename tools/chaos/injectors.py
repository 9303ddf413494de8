"""The fault kinds of a chaos campaign: how each is done to a running fleet,
and how it is undone.

    injector = Injector(fleet, send_command)
    heal = injector.inject(fault, target, event)  # target: the hub's or the device's index
    ...                                           # the fault's hold
    if heal is not None:
        heal()

    hub_kill           kill -9 of the hub (its Mosquitto dies with it); healed by
                       starting it again
    hub_pause          SIGSTOP of the hub; healed by SIGCONT
    partition          the host side of the hub's veth down, so that nothing
                       reaches the hub's namespace (tools/chaos/netns.py); without
                       namespaces, SIGSTOP of the hub and its Mosquitto. Healed
                       by the link going up, or SIGCONT
    broker_kill        kill -9 of the hub's Mosquitto (its pid from /v1/status);
                       nothing to undo: the hub restarts it
    device_power_cut   SIGKILL of the device, some of them a few ms after a
                       command to it was accepted; healed by starting it again
    clock_jump         the device's clock moves (clock.jump in its data
                       directory, tools/mpy/chaos_device.py); nothing to undo:
                       the device resyncs from the next commit-ack

What an injection did beyond its kind (the broker's pid, the command's delay,
the jump) goes into the fault's event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from tools.chaos.fleet import Fleet
from tools.chaos.schedule import Fault

Heal = Callable[[], None]

# Kinds whose recovery is measured from the heal (the device's restart), not
# from the injection: a device that is off samples nothing.
MEASURED_FROM_HEAL: Final = frozenset({"device_power_cut"})
# Kinds after which the hub must become ready again (check R).
NEEDS_READY: Final = frozenset({"hub_kill", "hub_pause", "partition"})


class Skipped(Exception):
    """A fault that could not start; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SendCommand(Protocol):
    """Post relay.set for ``device`` through hub ``via``'s API and record it;
    True if the API accepted it."""

    def __call__(self, via: int, device: str, on: bool, deadline_s: float, fault: int) -> bool: ...


class Injector:
    """Does the faults of a schedule to one fleet."""

    def __init__(self, fleet: Fleet, send_command: SendCommand) -> None:
        self.fleet = fleet
        self.send_command = send_command
        self._kinds: dict[str, Callable[[Fault, int, dict[str, Any]], Heal | None]] = {
            "hub_kill": self._kill_hub,
            "hub_pause": self._pause_hub,
            "partition": self._cut_off,
            "broker_kill": self._kill_broker,
            "device_power_cut": self._cut_power,
            "clock_jump": self._jump_clock,
        }

    def inject(self, f: Fault, target: int, ev: dict[str, Any]) -> Heal | None:
        """Start fault ``f`` on ``target`` (a hub's index for hub kinds, else a
        device's); what undoes it after the hold (None: nothing does). Raises
        Skipped if it cannot start."""
        return self._kinds[f.kind](f, target, ev)

    # -- hubs

    def _kill_hub(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        cluster = self.fleet.cluster
        return _taken(i, self.fleet.down_hubs, cluster.kill, cluster.start_node)

    def _pause_hub(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        cluster = self.fleet.cluster
        return _taken(i, self.fleet.frozen_hubs, cluster.pause, cluster.resume)

    def _cut_off(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        fleet = self.fleet
        if fleet.netns is not None:
            return _taken(i, fleet.frozen_hubs, fleet.netns.cut, fleet.netns.heal)
        # Without namespaces: the hub and its broker stop answering anyone.
        fleet.frozen_hubs.add(i)
        broker = fleet.broker_pid(i)
        fleet.cluster.pause(i)
        if broker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker, signal.SIGSTOP)
                fleet.stopped_brokers.add(broker)

        def heal_stop() -> None:
            if broker:
                fleet.stopped_brokers.discard(broker)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(broker, signal.SIGCONT)
            fleet.cluster.resume(i)
            fleet.frozen_hubs.discard(i)

        return heal_stop

    def _kill_broker(self, f: Fault, i: int, ev: dict[str, Any]) -> None:
        pid = self.fleet.broker_pid(i)
        if pid is None:
            raise Skipped(f"{ev['target']} did not say its broker's pid")
        ev["broker_pid"] = pid
        os.kill(pid, signal.SIGKILL)

    # -- devices

    def _cut_power(self, f: Fault, k: int, ev: dict[str, Any]) -> Heal:
        fleet = self.fleet
        if f.command_kill_ms >= 0:
            healthy = fleet.healthy()
            via = healthy[f.pick % len(healthy)]
            on = bool(f.pick & 1)
            if self.send_command(via, fleet.ids[k], on, 30.0, f.n):
                time.sleep(f.command_kill_ms / 1000)
            ev["command_kill_ms"] = f.command_kill_ms
        devices = fleet.devices
        return _taken(
            k, fleet.off_devices, lambda k: devices[k].kill(), lambda k: devices[k].start()
        )

    def _jump_clock(self, f: Fault, k: int, ev: dict[str, Any]) -> None:
        ev["jump_ms"] = f.jump_ms
        data = Path(self.fleet.devices[k].config["data_dir"])
        tmp = data / "clock.jump.tmp"
        tmp.write_text(str(f.jump_ms))
        tmp.rename(data / "clock.jump")
        deadline = time.monotonic() + 5
        while (data / "clock.jump").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _taken(
    i: int, marks: set[int], do: Callable[[int], object], undo: Callable[[int], object]
) -> Heal:
    """Mark ``i`` as taken down by the campaign (in ``marks``, so that it is
    not taken for a crash) and ``do(i)``; the heal does ``undo(i)`` and
    clears the mark."""
    marks.add(i)
    do(i)

    def heal() -> None:
        undo(i)
        marks.discard(i)

    return heal
