# The device: sample, store, upload, execute commands, report status.
#
#   node = Node(config, "/flash/aiot", SimulatedPlug(seed=7))
#   asyncio.run(node.run())
#
# config is a dict (firmware/config_template.json documents every key):
# device_id, key (hex), hubs ([[host, port], ...] in this device's order),
# user, password, ca (the cluster CA: the brokers over TLS), and optional
# tuning (sample_ms, flush_ms, status_ms, ...). The node keeps that dict as
# it is (node.cfg, no copy) and reads each optional key with its default
# where the key is used.
#
# Tasks, all in one asyncio loop:
#   sampler    every sample_ms: one reading per sensor into the slot store;
#              flushes a record when flush_ms has passed (offline_flush_ms
#              while no broker is reachable) or the record is full
#   uplink     stored readings -> signed batches -> the hub (edge/uplink.py)
#   status     the retained DeviceStatus every status_ms and on each connect;
#              the broker publishes the signed OFFLINE copy as the last will
#   janitor    erases acknowledged slots, checkpoints the metadata
#   ota        over-the-air updates (edge/ota.py), only when the A/B app
#              loader started the firmware (firmware/loader.py)
# Commands and commit-acks arrive on aiot/v1/<id>/down through on_message;
# command results leave on aiot/v1/<id>/ack.
import asyncio
import binascii
import gc

from edge import codec, hubs
from edge.clock import Clock, ticks_diff, ticks_ms
from edge.executor import PLUG_CAPABILITIES, SYSTEM_CAPABILITIES, Executor
from edge.meta import Meta
from edge.mqtt import MQTTClient, tls_context
from edge.slots import SlotStore
from edge.uplink import Uplink

FIRMWARE = "0.1.0"


def _mem_free():
    try:
        return gc.mem_free()
    except AttributeError:  # CPython
        return 0


class Node:
    def __init__(self, config, directory, sensor, board=None, ota=None):
        # ota: an edge.ota.Updater when the A/B app loader started the
        # firmware; None from a source tree, which then does not declare the
        # ota.update capability.
        cfg = self.cfg = config
        self.device_id = cfg["device_id"]
        self.sensor = sensor
        self.board = board  # optional: relay pin, reset, watchdog feed
        self.hm = codec.Hmac(binascii.unhexlify(cfg["key"]))  # type: ignore[arg-type]
        self.meta = Meta(directory)
        self.meta.boot_epoch += 1
        self.meta.save()
        self.store = SlotStore(
            directory,
            self.meta,
            capacity=cfg.get("slot_capacity", 512 * 1024),
            cleanup_ratio=cfg.get("cleanup_ratio", 0.5),
            policy=cfg.get("overflow", "drop_oldest"),
            record_bytes=cfg.get("record_bytes", 1024),
            io=board.slot_io() if board is not None else None,
        )
        self.ota = ota
        handlers = {
            "relay.set": self._relay,
            "limit.set": self._limit,
            "sample.set": self._sample_interval,
            "reboot": None,
            "hubs.set": self._hubs,
        }
        caps = PLUG_CAPABILITIES
        if ota is None:
            caps = caps[:-1]  # the last one is ota.update
        else:
            handlers["ota.update"] = ota.start
        self.clock = Clock()
        self.sample_ms = cfg.get("sample_ms", 1000)
        self.limit_w = 0.0
        self.executor = Executor(
            self.device_id,
            self.hm,
            self.meta,
            handlers,
            caps,
            now_ms=self._synced_ms,
            system=SYSTEM_CAPABILITIES,
        )
        prefix = "aiot/v1/%s/" % self.device_id
        self.t_status = prefix + "status"
        self.t_ack = prefix + "ack"
        self.t_down = prefix + "down"
        # Status (with capabilities) and results; the uplink's batches too:
        # each frame is built and copied out in one go, so they never overlap.
        # A status with the ota.update capability (its signed release params)
        # takes about 860 bytes with a 32-character device id.
        self.enc = codec.Encoder(1024)
        # "ca": base64 of the cluster CA's DER: the brokers over TLS, that CA
        # pinned, and https:// bundle downloads (edge/ota.py) with the same
        # context. Absent or null: plain TCP (labs).
        self.tls = tls_context(cfg["ca"]) if cfg.get("ca") else None
        # The broker order the cluster last set (hubs.set), else the config's.
        self._directory = directory
        self._new_hubs = None  # set by hubs.set; applied once its answer is out
        self.client = MQTTClient(
            self.device_id,
            hubs.load(directory) or cfg["hubs"],
            user=cfg.get("user"),
            password=cfg.get("password"),
            keepalive=cfg.get("keepalive_s", 30),
            will=(self.t_status, self._status_frame(False), 1, True),
            on_message=self._on_message,
            return_after_s=cfg.get("return_after_s", 60),
            max_payload=cfg.get("max_payload", 2048),
            tls=self.tls,
        )
        self.uplink = Uplink(
            self.device_id,
            self.hm,
            self.store,
            self.client,
            self.clock,
            self.meta,
            max_readings=cfg.get("batch_readings", 32),
            max_bytes=cfg.get("batch_bytes", 1024),
            window=cfg.get("window", 4),
            ack_timeout_ms=cfg.get("ack_timeout_ms", 5000),
            failover_after_ms=cfg.get("failover_after_ms", 15000),
            enc=self.enc,
        )
        self._results = []  # sealed CommandResult frames waiting to be sent
        self._wake_results = asyncio.Event()
        self.started = ticks_ms()
        self.sampled = 0
        self.refused = 0  # readings refused while sampling was stopped
        self.down_rejected = 0  # down frames that were not for us / invalid
        self.min_free = None  # lowest gc.mem_free() seen (MicroPython)
        self.faults = 0  # errors the sampler and janitor survived
        self.last_fault = None
        self.stopping = False

    # -- command handlers ------------------------------------------------------------

    def _relay(self, params):
        on = params["on"]
        self.sensor.relay_on = on
        if self.board is not None:
            self.board.relay(on)
        return "relay on" if on else "relay off"

    def _limit(self, params):
        self.limit_w = params["watts"]
        return None

    def _sample_interval(self, params):
        self.sample_ms = params["interval_ms"]
        return None

    def _hubs(self, params):
        # hubs.set: a new broker order from the cluster (a node joined, left
        # or was drained). Saved before it counts; the device moves to the
        # new first broker once this command's answer is out (_results_out).
        new = hubs.parse(params["hubs"])
        if new == self.client.servers:
            return "unchanged"
        hubs.save(self._directory, new)
        self._new_hubs = new
        return "%d hubs" % len(new)

    def _synced_ms(self):
        return self.clock.now_ms() if self.clock.synced else None

    # -- messages from the hub ---------------------------------------------------------

    def _on_message(self, topic, payload, retained):
        if topic != self.t_down:
            self.down_rejected += 1
            return
        try:
            kind, fields = codec.decode(payload, self.hm)
        except codec.CodecError as e:
            self.down_rejected += 1
            self._queue(self.executor.reject_frame(payload, e))
            return
        if kind == "CommitAck":
            if fields["device_id"] == self.device_id:
                self.uplink.on_ack(fields)
                if self.ota is not None:
                    self.ota.on_ack()
            else:
                self.down_rejected += 1
        elif kind == "Command":
            self._queue(self.executor.handle(fields))
        else:
            self.down_rejected += 1

    def _queue(self, result):
        if result is not None:
            self._results.append(bytes(self.executor.seal(result, self.enc)))
            self._wake_results.set()

    # -- status ---------------------------------------------------------------------------

    def _status_frame(self, online):
        st = self.store
        fields = {
            "device_id": self.device_id,
            "state": 1 if online else 0,
            "firmware": FIRMWARE if self.ota is None else self.ota.firmware,
            "boot_epoch": self.meta.boot_epoch,
            "uptime_s": ticks_diff(ticks_ms(), self.started) // 1000 if online else 0,
            "free_heap": _mem_free(),
            "buffer_fill_permille": st.fill_permille(),
            "unacked": st.unacked(),
            "dropped": self.meta.dropped,
            "reconnects": getattr(self.client, "reconnects", 0) if online else 0,
            "hub_index": getattr(self.client, "server", 0) if online else 0,
            "capabilities": self.executor.capabilities if online else None,
        }
        self.enc.message("DeviceStatus", fields)
        return bytes(self.enc.seal(self.hm))

    def _note_memory(self):
        # Live data only: collect first, then sample.
        gc.collect()
        free = _mem_free()
        if free and (self.min_free is None or free < self.min_free):
            self.min_free = free

    # -- tasks --------------------------------------------------------------------------------

    def _fault(self, e):
        # A task hit an error (flash full, a write error): count it, keep
        # going. The device must never stop sampling because of one.
        self.faults += 1
        self.last_fault = repr(e)

    def _sample_tick(self, last_flush):
        # One sampling step; True while done sampling (stop_after reached).
        stop_after = self.cfg.get("stop_after", 0)
        if stop_after and self.sampled >= stop_after:
            if self.store.pending:
                self.store.flush()
                self.uplink.kick()
            elif self.cfg.get("exit_when_done", False) and not self.store.unacked():
                self.stopping = True
            return True
        writes = self.store.flash_writes
        if self.store.stopped:
            self.refused += 1
        else:
            now = self.clock.now_ms()
            for sensor, value in self.sensor.sample(now):
                if stop_after and self.sampled >= stop_after:
                    break
                if self.store.add(sensor, now, value):
                    self.sampled += 1
                else:
                    self.refused += 1
        online = self.client.up.is_set()
        limit = (
            self.cfg.get("flush_ms", 2000) if online else self.cfg.get("offline_flush_ms", 30000)
        )
        if self.store.pending and ticks_diff(ticks_ms(), last_flush[0]) >= limit:
            self.store.flush()
            last_flush[0] = ticks_ms()
        if self.store.flash_writes != writes:  # a record reached flash
            self.uplink.kick()
        return False

    async def _sampler(self):
        last_flush = [ticks_ms()]
        while not self.stopping:
            t0 = ticks_ms()
            try:
                done = self._sample_tick(last_flush)
            except Exception as e:  # see _fault
                self._fault(e)
                done = False
                t0 = ticks_ms() - self.sample_ms + 1000  # retry in about a second
            if self.board is not None:
                self.board.feed()
            if done:
                await asyncio.sleep(0.05)
                continue
            wait = self.sample_ms - ticks_diff(ticks_ms(), t0)
            await asyncio.sleep(max(0, wait) / 1000)

    async def _status(self):
        while not self.stopping:
            await self.client.up.wait()
            try:
                await self.client.publish(self.t_status, self._status_frame(True), 1, True)
            except OSError:
                continue
            # Again after status_ms, or at once after a reconnect.
            seen = self.client.connects
            t0 = ticks_ms()
            while (
                not self.stopping
                and self.client.connects == seen
                and ticks_diff(ticks_ms(), t0) < self.cfg.get("status_ms", 30000)
            ):
                await asyncio.sleep(0.1)

    def reset(self):
        self.store.close()
        if self.board is not None:
            self.board.reset()
        self.stopping = True

    async def _results_out(self):
        while not self.stopping:
            if not self._results:
                if self.executor.reboot_requested:
                    self.reset()
                    return
                self._wake_results.clear()
                await self._wake_results.wait()
                continue
            await self.client.up.wait()
            try:
                await self.client.publish(self.t_ack, self._results[0], 1)
            except OSError:
                continue
            self._results.pop(0)
            if self._new_hubs is not None and not self._results:
                self.client.set_servers(self._new_hubs)
                self._new_hubs = None

    async def _janitor(self):
        last_checkpoint = ticks_ms()
        while not self.stopping:
            await asyncio.sleep(1)
            try:
                self.store.cleanup()
                if ticks_diff(ticks_ms(), last_checkpoint) >= self.cfg.get("checkpoint_ms", 60000):
                    # Keeps the watermark on flash, so a reboot resends little.
                    self.store.checkpoint()
                    last_checkpoint = ticks_ms()
            except Exception as e:  # see _fault
                self._fault(e)
            self._note_memory()
            if self.ota is not None:
                self.ota.cleanup()  # resets a trial boot that never got an ack

    async def run(self):
        self._queue(self.executor.recover())
        if self.ota is not None:
            self.ota.recover(self)
        self.client.start()
        tasks = [
            # Waits for the first connection; re-sent on every reconnect.
            asyncio.create_task(self.client.subscribe(self.t_down, 1)),
            asyncio.create_task(self._sampler()),
            asyncio.create_task(self.uplink.run()),
            asyncio.create_task(self._status()),
            asyncio.create_task(self._results_out()),
            asyncio.create_task(self._janitor()),
        ]
        if self.ota is not None:
            tasks.append(asyncio.create_task(self.ota.run()))
        while not self.stopping:
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await self.client.disconnect()

    def stats(self):
        st = self.store
        out = {
            "sampled": self.sampled,
            "refused": self.refused,
            "next_seq": st.next_seq,
            "watermark": self.meta.watermark,
            "unacked": st.unacked(),
            "dropped": self.meta.dropped,
            "batches_sent": self.uplink.batches_sent,
            "retransmits": self.uplink.retransmits,
            "failovers": self.uplink.failovers,
            "reconnects": self.client.reconnects,
            "hub_index": self.client.server,
            "min_free": self.min_free,
            "bytes_written": st.bytes_written,
            "down_rejected": self.down_rejected,
            "faults": self.faults,
            "uplink_errors": self.uplink.errors,
            "relay_on": self.sensor.relay_on,
            "commands": self.executor.stats(),
        }
        if self.ota is not None:
            out["ota"] = self.ota.stats()
        return out
