# Runs edge/ed25519.py and edge/ota.py release checks under the MicroPython
# interpreter for the tests.
#
#   micropython release_runner.py JOBS.jsonl  -> one JSON result per line
#
# Each job, one per line (bytes as hex):
#   {"op": "verify", "pub": ..., "msg": ..., "sig": ...}        -> {"ok": bool}
#   {"op": "release", "params": {...}, "keys": [base64, ...], "running": "0.2.0"}
#       -> {"version": ...} or {"error": "..."}
#   {"op": "start", ...the same...}  Updater.start as the executor calls it,
#       with a slot directory: -> {"answer": ..., "job": bool, "slot": [names]}
#       or {"error": ...}
import binascii
import json
import os
import sys

from edge import ed25519, ota


class Apps:
    # The A/B loader's side as the Updater uses it before a download.
    trial = False
    running = "a"

    def other(self, slot):
        return "b" if slot == "a" else "a"


class Executor:
    current_id = "c-1"


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.executor = Executor()


def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def run(job):
    op = job["op"]
    if op == "verify":
        u = binascii.unhexlify
        return {"ok": ed25519.verify(u(job["pub"]), u(job["msg"]), u(job["sig"]))}
    if op == "release":
        try:
            keys = ota.pinned_keys(job["keys"])
            return {"version": ota.check_release(job["params"], keys, job["running"])}
        except ota.OtaError as e:
            return {"error": str(e)}
    if op == "start":
        up = ota.Updater(Apps())
        up.node = Node({"release_keys": job["keys"]})
        try:
            answer = up.start(job["params"])
        except Exception as e:
            return {"error": str(e), "job": up.job is not None, "slot": listing(job["slot"])}
        return {"answer": answer[0], "job": up.job is not None, "slot": listing(job["slot"])}
    raise ValueError("unknown op " + op)


def main():
    with open(sys.argv[1]) as f:
        for line in f:
            if line.strip():
                print(json.dumps(run(json.loads(line))))


main()
