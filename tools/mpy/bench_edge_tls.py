# The heap cost of TLS on the device, run by `aiot bench edge` under MicroPython:
# edge/mqtt.py connects to one broker and publishes N messages at QoS 1, one
# at a time, then disconnects; over TLS with the CA pinned when CA_DER_FILE is
# given, plain TCP otherwise. The bench runs both, in the same heap, against
# the same broker.
#
#   micropython bench_edge_tls.py HOST PORT CLIENT_ID N [CA_DER_FILE]
#
# Prints one JSON line, every figure in bytes above what was in use just
# before the SSLContext is made (the same point without TLS):
#   gc_peak      the most of the MicroPython heap in use: gc.mem_alloc() after
#                gc.collect(), sampled by a task at every scheduler step until
#                the last PUBACK (what is allocated and freed within one step,
#                such as inside one mbedTLS call, is not seen)
#   gc_session   the same after the last PUBACK: what the live link holds
#   malloc_peak, malloc_session: the same for the C heap, counted at every
#                allocation by tools/mpy/malloc_peak.c when it is preloaded
#                (null otherwise); mbedTLS allocates there on the unix port
import asyncio
import gc
import json
import os
import sys

from edge.mqtt import MQTTClient, tls_context

host, port, cid, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ca_path = sys.argv[5] if len(sys.argv) > 5 else None
topic = "bench/%s/tls" % cid
payload = bytes(range(256)) * 2  # 512 bytes, about a 32-reading batch frame


def _malloc(what):
    v = os.getenv("MALLOC_PEAK_" + what)
    return [int(x) for x in v.split()] if v else [None, None]


async def main():
    ca = None
    if ca_path:
        with open(ca_path, "rb") as f:
            ca = f.read()
    peak = [0]
    done = [False]

    async def sample(base):
        while not done[0]:
            gc.collect()
            u = gc.mem_alloc() - base
            if u > peak[0]:
                peak[0] = u
            await asyncio.sleep_ms(0)

    gc.collect()
    base = gc.mem_alloc()
    _malloc("MARK")
    sampler = asyncio.create_task(sample(base))
    c = MQTTClient(cid, [(host, port)], keepalive=30, tls=tls_context(ca) if ca else None)
    await c.connect()
    for _ in range(n):
        await c.publish(topic, payload, 1)
    done[0] = True
    await sampler
    gc.collect()
    session = gc.mem_alloc() - base
    m_peak, m_session = _malloc("READ")
    await c.disconnect()
    out = {
        "tls": ca is not None,
        "publishes": n,
        "payload_bytes": len(payload),
        "gc_peak": max(peak[0], session),
        "gc_session": session,
        "malloc_peak": m_peak,
        "malloc_session": m_session,
    }
    print(json.dumps(out))


asyncio.run(main())
