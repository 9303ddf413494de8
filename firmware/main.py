# Device entry point. Boards run it after boot.py; on a PC (the unix port):
#
#   MICROPYPATH=.:.frozen micropython firmware/main.py --config dev.json
#
# A flashed bundle starts it through the A/B app loader (firmware/loader.py),
# which calls main(updater) from the app slot it chose; the node gets the
# updater for over-the-air updates.
#
# The config is JSON (firmware/config_template.json lists every key). On
# boards it is /config.json, written by `aiot firmware flash` or `provision`
# (or a build given the device); site settings never live in code.
import asyncio
import json
import sys

from edge.node import Node


def load_config(path):
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise SystemExit("cannot read config %s: %s" % (path, e))
    except ValueError as e:
        raise SystemExit("config %s is not valid JSON: %s" % (path, e))
    for key in ("device_id", "key", "hubs"):
        if key not in cfg:
            raise SystemExit("config %s: missing key %r" % (path, key))
    return cfg


def _arg(name, default):
    argv = sys.argv
    for i in range(len(argv) - 1):
        if argv[i] == name:
            return argv[i + 1]
    return default


def main(ota=None):
    # ota: edge.ota.Updater from the A/B app loader (firmware/loader.py).
    if sys.platform in ("esp32", "rp2"):
        from firmware.board import Board

        cfg = load_config("/config.json")
        board = Board(cfg)
        sensor = board.sensor()
        directory = cfg.get("data_dir", "/data")
    else:  # unix port: simulated plug, data in a host directory
        from edge.sensors import SimulatedPlug

        cfg = load_config(_arg("--config", "dev.json"))
        board = None
        seed = sum(cfg["device_id"].encode())
        sensor = SimulatedPlug(seed=seed, event_every_s=cfg.get("event_every_s", 30))
        directory = cfg.get("data_dir", "aiot-data")
    try:
        import os

        os.mkdir(directory)
    except OSError:
        pass  # exists
    node = Node(cfg, directory, sensor, board, ota)
    if board is not None:
        board.node = node
    try:
        asyncio.run(node.run())
    finally:
        node.store.close()
        stats = node.stats()
        if board is None:
            print(json.dumps(stats))


if __name__ == "__main__":
    main()
