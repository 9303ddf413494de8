# What one Ed25519 verification (edge/ed25519.py) costs on this interpreter:
# the device does one per over-the-air update (edge/ota.py check_release).
#
#   MICROPYPATH=.:.frozen micropython -X heapsize=64k tools/mpy/ed25519_cost.py [N]
#
# Prints one JSON line: "ms" per verification (the mean of N, default 5),
# "alloc_bytes" allocated in all per verification (garbage included; the
# unix port's micropython.mem_total, null elsewhere), "live_bytes_after_import"
# what the heap holds once the module is loaded, and SHA-512's share for a
# message the size of a release manifest. The smallest -X heapsize the script
# still runs in bounds the peak heap from above.
# RFC 8032 section 7.1 test 1 is the signature; it must verify.
import binascii
import gc
import json
import sys
import time

from edge import ed25519

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
pub = binascii.unhexlify("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
sig = binascii.unhexlify(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
    "39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
gc.collect()
live = gc.mem_alloc()
try:
    from micropython import mem_total  # builds with MICROPY_MEM_STATS (the unix port)
except ImportError:
    mem_total = None
before = mem_total() if mem_total else 0
ok = ed25519.verify(pub, b"", sig)
alloc = mem_total() - before if mem_total else None
gc.collect()
if not ok:
    raise SystemExit("RFC 8032 test 1 did not verify")
t0 = time.ticks_us()
for _ in range(n):
    ed25519.verify(pub, b"", sig)
ms = time.ticks_diff(time.ticks_us(), t0) / 1000 / n
# A release manifest is about 250 bytes: SHA-512 over R || A || it.
t1 = time.ticks_us()
ed25519.sha512(bytes(64 + 250))
sha_ms = time.ticks_diff(time.ticks_us(), t1) / 1000
print(
    json.dumps(
        {
            "platform": sys.platform,
            "ms": round(ms, 2),
            "sha512_314_bytes_ms": round(sha_ms, 2),
            "alloc_bytes": alloc,
            "live_bytes_after_import": live,
        }
    )
)
