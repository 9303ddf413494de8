# The baseline of `aiot bench edge`: edge/mqtt.py publishing pre-built signed
# batch frames at QoS 1 as fast as it can: no sampling, no slot store.
#
#   micropython bench_edge_publish.py FRAMES HOST PORT CLIENT_ID [INFLIGHT]
#
# FRAMES is a file of frames, each a u16 little-endian length and the frame
# (TelemetryBatch envelopes with their HMAC trailer, built by the bench). They
# are read from the file one at a time, as the device reads its records from
# flash, so the baseline runs in the same heap as the device. INFLIGHT
# publishers (default 4, the client's default max_inflight) keep that many
# QoS 1 messages awaiting PUBACK; 1 is one publish at a time. The topic is
# aiot/v1/CLIENT_ID/up. Prints one JSON line once every frame is PUBACKed.
import asyncio
import json
import struct
import sys
import time

from edge.mqtt import MQTTClient

path, host, port, cid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
inflight = int(sys.argv[5]) if len(sys.argv) > 5 else 4
topic = "aiot/v1/%s/up" % cid


async def main(f):
    c = MQTTClient(cid, [(host, port)], keepalive=30, max_inflight=inflight)
    await c.connect()
    sent = [0]

    def frame():
        h = f.read(2)
        if len(h) < 2:
            return None
        return f.read(struct.unpack("<H", h)[0])

    async def pump():
        while True:
            fr = frame()
            if fr is None:
                return
            await c.publish(topic, fr, 1)
            sent[0] += 1

    t0 = time.ticks_ms()
    await asyncio.gather(*[pump() for _ in range(inflight)])
    ms = time.ticks_diff(time.ticks_ms(), t0)
    await c.disconnect()
    print(json.dumps({"frames": sent[0], "ms": ms}))


with open(path, "rb") as frames:
    asyncio.run(main(frames))
