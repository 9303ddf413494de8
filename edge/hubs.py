# The device's broker order, as the hub cluster last set it (the hubs.set
# command, hub/link/membership.py), kept on flash so a reboot keeps it.
#
#   hubs = load(directory) or config["hubs"]     # at boot
#   hubs = parse("10.0.0.3:8883,10.0.0.2:8883")  # the command's text, or ValueError
#   save(directory, hubs)                        # before the device acts on it
#
# The order lives in its own file beside the metadata (hubs.json), not in
# config.json: the config is written by provisioning and flashing, and a
# later provisioning replaces the file, order included. save() writes
# hubs.tmp and renames it over hubs.json; where a rename cannot replace a
# file, hubs.json is removed first, and load() then finds hubs.tmp. A torn
# or unreadable file is ignored (the config's order is used).
#
# Comments instead of docstrings: they cost nothing once compiled to .mpy.

import json
import os

_FILE = "hubs.json"
_TMP = "hubs.tmp"
MAX_HUBS = 16


def _join(directory, name):
    return directory + "/" + name if directory else name


def parse(text):
    # "host:port,host:port" -> [[host, port], ...]; ValueError when it is
    # not a non-empty list of distinct host:port (an IPv6 host in brackets).
    out = []
    for item in text.split(","):
        i = item.rfind(":")
        if i < 1:
            raise ValueError("bad hub " + item[:40])
        host = item[:i]
        if host[0] == "[" and host[-1] == "]":
            host = host[1:-1]
        port = item[i + 1 :]
        if not host or " " in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("bad hub " + item[:40])
        hub = [host, int(port)]
        if hub in out:
            raise ValueError("hub twice " + item[:40])
        out.append(hub)
    if len(out) > MAX_HUBS:
        raise ValueError("too many hubs")
    return out


def _valid(hubs):
    if type(hubs) is not list or not hubs or len(hubs) > MAX_HUBS:
        return False
    for h in hubs:
        if type(h) is not list or len(h) != 2 or type(h[0]) is not str or type(h[1]) is not int:
            return False
    return True


def load(directory):
    # The saved order, or None (never set, or unreadable).
    for name in (_FILE, _TMP):
        try:
            with open(_join(directory, name)) as f:
                hubs = json.load(f)
        except (OSError, ValueError):
            continue
        if _valid(hubs):
            return hubs
    return None


def save(directory, hubs):
    # OSError when the flash refuses the write; the old order then stands.
    tmp = _join(directory, _TMP)
    path = _join(directory, _FILE)
    with open(tmp, "w") as f:
        f.write(json.dumps(hubs))
    try:
        os.rename(tmp, path)
    except OSError:  # a file system whose rename does not replace
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)
