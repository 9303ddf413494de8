# A scriptable device around edge/mqtt.py, for the MQTT tests.
#
#   micropython mqtt_device.py      (config, then commands, on stdin)
#
# The first line on stdin is the config; commands follow, one JSON object a
# line, and events leave as JSON lines on stdout (see mqtt_harness.py). The
# same Runner also runs inside CPython's asyncio, fed from a queue.
#
# Config keys: the MQTTClient arguments (client_id, servers, user, password,
# keepalive, clean_session, max_inflight, max_payload, timeout_s,
# ack_timeout_s, backoff_s, backoff_max_s, return_after_s, probe_s), plus
#   will      [topic, payload_hex, qos, retain] or absent
#   mode      "connect" (first connection must work) or "start" (background)
#   subs      [[topic, qos], ...] subscribed right after connecting
#   cb_gate   a path: on_message blocks until that file exists
#   cb_raise  on_message raises after reporting the message
import asyncio
import binascii
import gc
import json
import os
import sys
import time

# Heap in use before edge.mqtt is loaded, and after: for the "mem" command.
gc.collect()
_BASE = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0

from edge.mqtt import MQTTClient  # noqa: E402

gc.collect()
_LOADED = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0

_ARGS = (
    "user",
    "password",
    "keepalive",
    "clean_session",
    "max_inflight",
    "max_payload",
    "timeout_s",
    "ack_timeout_s",
    "backoff_s",
    "backoff_max_s",
    "return_after_s",
    "probe_s",
)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Runner:
    def __init__(self, cfg, emit):
        self.cfg = cfg
        self.emit = emit
        kw = {}
        for k in _ARGS:
            if k in cfg:
                kw[k] = cfg[k]
        will = cfg.get("will")
        if will:
            kw["will"] = (will[0], binascii.unhexlify(will[1]), will[2], will[3])
        servers = [(h, p) for h, p in cfg["servers"]]
        self.c = MQTTClient(cfg["client_id"], servers, on_message=self.on_message, **kw)
        self.tasks = []

    def on_message(self, topic, payload, retained):
        ev = {
            "ev": "msg",
            "topic": topic,
            "len": len(payload),
            "crc": binascii.crc32(payload),
            "retained": retained,
            "type": type(payload).__name__,
        }
        if len(payload) <= 1024:  # a hex line of a big payload would not fit the heap
            ev["hex"] = binascii.hexlify(payload).decode()
        self.emit(ev)
        gate = self.cfg.get("cb_gate")
        if gate:
            while not _exists(gate):
                time.sleep(0.01)
        if self.cfg.get("cb_raise"):
            raise ValueError("on_message failed on purpose")

    def status(self):
        c = self.c
        return {
            "ev": "status",
            "up": c.up.is_set(),
            "server": c.server,
            "connects": c.connects,
            "reconnects": c.reconnects,
            "dropped": c.dropped,
            "cb_errors": c.cb_errors,
            "inflight": c.inflight,
            "last_error": c.last_error,
        }

    async def watch(self):
        c = self.c
        while True:
            await c.up.wait()
            self.emit(
                {
                    "ev": "up",
                    "server": c.server,
                    "connects": c.connects,
                    "reconnects": c.reconnects,
                    "session_present": c.session_present,
                }
            )
            await c.down.wait()
            self.emit({"ev": "down", "error": c.last_error, "server": c.server})

    async def pub(self, cmd):
        await self.c.publish(
            cmd["topic"],
            binascii.unhexlify(cmd["hex"]),
            cmd.get("qos", 0),
            cmd.get("retain", False),
        )
        self.emit({"ev": "pub_done", "id": cmd["id"]})

    async def sub(self, cmd):
        try:
            rc = await self.c.subscribe(cmd["topic"], cmd.get("qos", 1))
            self.emit({"ev": "sub_done", "id": cmd["id"], "rc": rc})
        except OSError as e:
            self.emit({"ev": "sub_error", "id": cmd["id"], "error": str(e)})

    async def main(self, readline):
        c = self.c
        if self.cfg.get("mode", "connect") == "connect":
            try:
                await c.connect()
            except OSError as e:
                self.emit({"ev": "connect_failed", "error": str(e)})
                return
        else:
            c.start()
        self.tasks.append(asyncio.create_task(self.watch()))
        for topic, qos in self.cfg.get("subs", ()):
            self.tasks.append(
                asyncio.create_task(self.sub({"id": topic, "topic": topic, "qos": qos}))
            )
        while True:
            line = await readline()
            if not line:
                break
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "pub":
                self.tasks.append(asyncio.create_task(self.pub(cmd)))
            elif op == "sub":
                self.tasks.append(asyncio.create_task(self.sub(cmd)))
            elif op == "next":
                c.next_server()
            elif op == "status":
                self.emit(self.status())
            elif op == "mem":
                self.tasks = [t for t in self.tasks if not t.done()]
                gc.collect()
                used = gc.mem_alloc()
                self.emit(
                    {
                        "ev": "mem",
                        "module": _LOADED - _BASE,
                        "total": used - _BASE,
                        "free": gc.mem_free(),
                    }
                )
            elif op == "stop":
                break
        await c.disconnect()
        for t in self.tasks:
            t.cancel()
        self.emit({"ev": "stopped"})


def _emit(ev):
    print(json.dumps(ev))


async def _main():
    # The config comes as the first line on stdin, not in argv: this
    # interpreter aborts ("uncaught NLR") on a 256-byte argument.
    stdin = asyncio.StreamReader(sys.stdin)
    r = Runner(json.loads(await stdin.readline()), _emit)
    await r.main(stdin.readline)


if __name__ == "__main__":
    asyncio.run(_main())
