# Drives edge/executor.py for the tests, the way the node will: decode a
# down-topic frame, hand it to the executor, seal the result.
#
#   micropython executor_runner.py JOBS.jsonl  -> one JSON result per line
#
# The same Runner class also runs in-process on CPython
# (tests/micropython/test_executor_cpython.py). One process is one boot of
# the device; the first job is always "init".
#
# Jobs:
#   {"op": "init", "dir": meta dir, "device_id": ..., "key_hex": ..., "log": path,
#    "now": ms or null, "fail": [actions whose handler raises],
#    "crash": action whose handler crashes the device after acting, or null,
#    "crash_mode": "kill" (SIGKILL this process) or "raise" (raise Crash)}
#   {"op": "clock", "now": ms or null}
#   {"op": "frame", "hex": ... or "file": path, "zeros": n extra zero bytes,
#    "crash_after": bool}
#   {"op": "recover"}
# Every handler appends {"id", "action", "params"} as one JSON line to the log
# file before anything else, so the log is the record of real actuations,
# across processes. Floats cross as {"f64": hex}.
import binascii
import gc
import json
import os
import struct
import time

from edge import codec, executor
from edge.meta import Meta


class Crash(BaseException):
    # CPython stand-in for a power cut: not an Exception, so the executor
    # does not catch it.
    pass


def out(v):
    if isinstance(v, float):
        return {"f64": binascii.hexlify(struct.pack("<d", v)).decode()}
    if isinstance(v, dict):
        return {k: out(x) for k, x in v.items()}
    return v


def crash(mode):
    if mode == "raise":
        raise Crash()
    # The unix port has no os._exit; sh's parent is this interpreter.
    os.system("kill -9 $PPID")
    while True:  # never returns
        time.sleep(1)


class Runner:
    def __init__(self):
        self.ex = None
        self.meta = None
        self.now = None
        self.enc = codec.Encoder(512)

    def clock(self):
        return self.now

    def handler(self, action, fail, crash_action, mode, log):
        def run(params):
            with open(log, "a") as f:
                f.write(
                    json.dumps({"id": self.ex.current_id, "action": action, "params": out(params)})
                )
                f.write("\n")
            if action in fail:
                raise ValueError(action + " jammed")
            if action == crash_action:
                crash(mode)
            return action + " ok"

        return run

    def init(self, job):
        self.now = job.get("now")
        self.mode = job.get("crash_mode") or "kill"
        fail = job.get("fail") or []
        handlers = {}
        for cap in executor.PLUG_CAPABILITIES:
            a = cap["action"]
            handlers[a] = self.handler(a, fail, job.get("crash"), self.mode, job["log"])
        self.meta = Meta(job["dir"])
        self.ex = executor.Executor(
            job["device_id"],
            codec.Hmac(binascii.unhexlify(job["key_hex"])),
            self.meta,
            handlers,
            now_ms=self.clock,
        )
        return None

    def frame(self, job):
        if job.get("file"):  # big frames skip the hex line (and its heap)
            with open(job["file"], "rb") as f:
                data = f.read()
        else:
            data = binascii.unhexlify(job["hex"])
        if job.get("zeros"):
            full = bytearray(len(data) + job["zeros"])
            full[: len(data)] = data
            data = full
        try:
            kind, fields = codec.decode(data, self.ex.hmac)
            result = self.ex.handle(fields) if kind == "Command" else None
        except codec.CodecError as e:
            result = self.ex.reject_frame(data, e)
        if job.get("crash_after"):  # after the executor, before the publish
            crash(self.mode)
        return result

    def run(self, job):
        op = job["op"]
        if op == "init":
            result = self.init(job)
        elif op == "clock":
            self.now = job["now"]
            result = None
        elif op == "frame":
            result = self.frame(job)
        elif op == "recover":
            result = self.ex.recover()
        else:
            raise ValueError("unknown op " + op)
        ack = None
        if result is not None:
            ack = binascii.hexlify(bytes(self.ex.seal(result, self.enc))).decode()
        m = self.meta
        return {
            "result": result,
            "ack": ack,
            "stats": self.ex.stats(),
            "reboot": self.ex.reboot_requested,
            "meta": {
                "counter": m.counter,
                "last_cmd_seq": m.last_cmd_seq,
                "highest_term": m.highest_term,
                "cmd_state": m.cmd_state,
                "cmd_id": m.cmd_id,
                "cmd_status": m.cmd_status,
                "cmd_reason": m.cmd_reason,
                "cmd_detail": m.cmd_detail,
            },
        }


def main(path):
    r = Runner()
    with open(path) as f:
        while True:
            line = f.readline()
            if not line:
                break
            job = json.loads(line)
            line = None
            gc.collect()  # as the node's loop does between messages
            print(json.dumps(r.run(job)))
            job = None


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
