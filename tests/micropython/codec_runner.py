# Runs edge/codec.py jobs under the MicroPython interpreter for the tests.
#
#   micropython codec_runner.py JOBS.jsonl  -> one JSON result per line
#
# Jobs are read one line at a time, so the runner's own memory stays small
# under a firmware-sized heap. Each job: {"op": "decode", "hex": ..., "key_hex": ... or null}
#        or {"op": "encode", "type": ..., "fields": {...}, "key_hex": ... or null}
# Floats cross the boundary as {"f64": hex of the little-endian double}, so no
# decimal formatting can blur a comparison.
import binascii
import gc
import json
import struct
import sys

from edge import codec


def out(v):
    if isinstance(v, float):
        return {"f64": binascii.hexlify(struct.pack("<d", v)).decode()}
    if isinstance(v, (list, tuple)):
        return [out(x) for x in v]
    if isinstance(v, dict):
        return {k: out(x) for k, x in v.items()}
    return v


def inp(v):
    if isinstance(v, dict):
        if "f64" in v and len(v) == 1:
            return struct.unpack("<d", binascii.unhexlify(v["f64"]))[0]
        return {k: inp(x) for k, x in v.items()}
    if isinstance(v, list):
        return [inp(x) for x in v]
    return v


def run(job):
    key = job.get("key_hex")
    hm = codec.Hmac(binascii.unhexlify(key)) if key else None
    try:
        if job["op"] == "decode":
            data = binascii.unhexlify(job["hex"])
            if job.get("zeros"):  # a long zero tail, sent as a count
                full = bytearray(len(data) + job["zeros"])
                full[: len(data)] = data
                data = full
            if hm is None:
                kind, fields = codec.decode_envelope(data)
            else:
                kind, fields = codec.decode(data, hm, job.get("max_size", codec.MAX_FRAME))
            return {"ok": True, "type": kind, "fields": out(fields)}
        enc = codec.Encoder(job.get("buffer", 4096))
        env = enc.message(job["type"], inp(job["fields"]))
        data = enc.seal(hm) if hm else env
        return {"ok": True, "hex": binascii.hexlify(bytes(data)).decode()}
    except codec.CodecError as e:
        return {"ok": False, "error": "CodecError", "reason": e.reason, "message": str(e)}
    except Exception as e:  # anything else is a codec bug the tests must see
        return {"ok": False, "error": type(e).__name__, "message": str(e)}


with open(sys.argv[1]) as f:
    while True:
        line = f.readline()
        if not line:
            break
        job = json.loads(line)
        line = None
        gc.collect()
        print(json.dumps(run(job)))
        job = None
