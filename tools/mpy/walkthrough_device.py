# The device half of `aiot protocol walkthrough`, run under MicroPython.
#
#   micropython walkthrough_device.py batch KEY_HEX        -> frame hex
#   micropython walkthrough_device.py ack KEY_HEX FRAME_HEX -> watermark JSON
import binascii
import json
import sys

from edge import codec

hm = codec.Hmac(binascii.unhexlify(sys.argv[2]))
if sys.argv[1] == "batch":
    readings = []
    for i in range(32):
        # One reading a second of a kettle switching on: power (W), energy
        # (Wh), voltage (V), in turn.
        k = i // 3
        readings.append((i % 3, 1000 * k, (40.0 + 180 * k, 512.0 + k / 2, 230.5)[i % 3]))
    enc = codec.Encoder(512)
    enc.batch("plug-1", 1, 1, 1763700000000, readings)
    print(binascii.hexlify(bytes(enc.seal(hm))).decode())
else:
    kind, ack = codec.decode(binascii.unhexlify(sys.argv[3]), hm)
    print(
        json.dumps({"type": kind, "watermark": ack["watermark"], "hub_time_ms": ack["hub_time_ms"]})
    )
