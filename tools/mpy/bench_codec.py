# Encode-and-sign throughput of edge/codec.py, run by `aiot bench codec`.
#
#   micropython bench_codec.py SECONDS
#
# Prints one JSON line: {"batches": N, "seconds": S, "frame_bytes": B}.
# The batch is the one every codec benchmark uses: 32 readings from a smart
# plug (power, energy, voltage), device id "plug-07", signed with HMAC-SHA256.
import json
import sys
import time

from edge import codec

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
readings = [
    (i % 3, 250 * i, (1200.5 + i, 4096.25 + i / 4, 230.0 + i / 8)[i % 3]) for i in range(32)
]
enc = codec.Encoder(512)
hm = codec.Hmac(bytes(range(32)))
n = 0
size = 0
t0 = time.ticks_ms()
budget = int(seconds * 1000)
while time.ticks_diff(time.ticks_ms(), t0) < budget:
    for _ in range(20):
        enc.batch("plug-07", 3, 1025 + n, 1763700000000, readings)
        size = len(enc.seal(hm))
        n += 1
elapsed = time.ticks_diff(time.ticks_ms(), t0) / 1000
print(json.dumps({"batches": n, "seconds": elapsed, "frame_bytes": size}))
