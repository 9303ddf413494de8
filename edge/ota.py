# Over-the-air update: check a signed firmware release, download its bundle
# over HTTP or HTTPS into an app slot directory and verify every file
# (firmware/loader.py boots it).
#
#   version = check_release(params, keys, FIRMWARE)   # before anything is written
#   await fetch_bundle("https://10.0.0.5:8080/v1/firmware/<sha>/", sha, "app_b", version, tls)
#
# The ota.update command (HMAC-signed by the device's key, edge/executor.py)
# carries the release: its signed manifest (canonical JSON, as the hub's
# registry holds it: hub/decide/registry.py "firmware releases") and the
# Ed25519 signature of it (hex). check_release refuses, before the slot is
# touched: no release key pinned in config.json ("release_keys": base64 of
# 32-byte Ed25519 public keys, written by `aiot firmware build/flash/
# provision`), a signature that verifies with none of them (edge/ed25519.py),
# a release that is not of kind firmware, names another bundle sha256 or
# another platform, or whose version is below the running one unless the
# command's allow_downgrade is true.
#
# A bundle on the hub is a directory of files plus manifest.json:
#
#   {"format": 1, "platform": "esp32", "mpy": 6, "version": "0.1.0",
#    "files": {"edge/node.mpy": [size, "sha256 hex"], ...}}
#
# sha is the sha256 of manifest.json itself: the signed command carries it,
# so the manifest is authenticated, and through it every file. Order:
# manifest (hash checked in RAM), wipe the slot, each file streamed to flash
# while hashing, then every file read back from flash and hashed again (a bad
# flash write shows here, not at the next boot), manifest.json written last.
# Any mismatch raises OtaError and leaves the slot without a manifest, which
# the loader never boots; so does a manifest whose version is not the signed
# release's.
import asyncio
import binascii
import hashlib
import json
import os
import sys

from edge import const, ed25519
from edge.clock import ticks_diff, ticks_ms
from edge.mqtt import open_stream

_CHUNK = const(512)
_MAX_MANIFEST = const(16384)
_TIMEOUT_S = 20


class OtaError(Exception):
    pass


def parse_url(url):
    # "http(s)://host:port/path/" -> (https?, host, port, "/path/").
    if url.startswith("https://"):
        secure, rest = True, url[8:]
    elif url.startswith("http://"):
        secure, rest = False, url[7:]
    else:
        raise OtaError("only http:// and https:// URLs: " + url)
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    j = hostport.rfind(":")
    if j > 0:
        host, port = hostport[:j], int(hostport[j + 1 :])
    else:
        host, port = hostport, 443 if secure else 80
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise OtaError("no host in " + url)
    return secure, host, port, path


def _hex(h):
    return str(binascii.hexlify(h.digest()), "ascii")


async def _get(host, port, path, sink, tls=None):
    # HTTP/1.0 GET, over TLS with tls (the SSLContext the MQTT client uses:
    # the cluster CA pinned, the host name checked); calls sink(bytes) per
    # chunk; returns the body's length.
    r, w = await asyncio.wait_for(open_stream(host, port, tls), _TIMEOUT_S)
    try:
        w.write(
            ("GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()
        )
        await w.drain()
        line = await asyncio.wait_for(r.readline(), _TIMEOUT_S)
        parts = line.split()
        if len(parts) < 2 or parts[1] != b"200":
            raise OtaError("GET %s: %s" % (path, str(line.strip(), "utf-8") or "no answer"))
        length = -1
        while True:
            h = await asyncio.wait_for(r.readline(), _TIMEOUT_S)
            if h in (b"\r\n", b"\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h[15:].strip())
        if length < 0:
            raise OtaError("GET %s: no Content-Length" % path)
        got = 0
        while got < length:
            n = length - got
            chunk = await asyncio.wait_for(r.read(n if n < _CHUNK else _CHUNK), _TIMEOUT_S)
            if not chunk:
                raise OtaError("GET %s: body cut at %d of %d bytes" % (path, got, length))
            sink(chunk)
            got += len(chunk)
        return got
    finally:
        w.close()
        try:
            await w.wait_closed()
        except Exception:
            pass


def _is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def remove_tree(path):
    if not _is_dir(path):
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for name in os.listdir(path):
        remove_tree(path + "/" + name)
    os.rmdir(path)


def _makedirs(path):
    here = ""
    for part in path.split("/"):
        if not part:
            here = "/"
            continue
        here = here + part if here in ("", "/") else here + "/" + part
        if not _is_dir(here):
            os.mkdir(here)


def hash_file(path):
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    size = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            size += n
    return size, _hex(h)


def _platform():
    return sys.platform


def version_tuple(v):
    # "0.2.0" -> (0, 2, 0): 1 to 4 dotted numbers, as the hub's registry takes.
    parts = v.split(".") if isinstance(v, str) else ()
    if not 1 <= len(parts) <= 4:
        raise OtaError("bad version %r" % (v,))
    out = []
    for p in parts:
        if not p or len(p) > 6 or not p.isdigit():
            raise OtaError("bad version %r" % (v,))
        out.append(int(p))
    return tuple(out)


def pinned_keys(texts):
    # config.json's release_keys (base64) -> 32-byte public keys.
    out = []
    for t in texts or ():
        try:
            k = binascii.a2b_base64(t)
        except ValueError:
            k = b""
        if len(k) != 32:
            raise OtaError("release_keys: %r is not a base64 Ed25519 public key" % (t,))
        out.append(k)
    return out


def check_release(params, keys, running):
    # -> the version of the signed release in params (an ota.update's), if it
    # may replace the running version; OtaError says why not.
    if not keys:
        raise OtaError("no release key pinned (release_keys in config.json)")
    raw = params["release"].encode()
    try:
        sig = binascii.unhexlify(params["signature"])
    except ValueError:
        sig = b""
    ok = False
    for k in keys:
        if ed25519.verify(k, raw, sig):
            ok = True
            break
    if not ok:
        raise OtaError("release signature not by a pinned release key")
    try:
        doc = json.loads(raw)
        inner = doc["manifest"]
        version = doc["version"]
        platform = inner["platform"]
        same = inner["version"] == version
    except (ValueError, KeyError, TypeError):
        raise OtaError("signed release is not a release manifest")
    if doc.get("kind") != "firmware" or not same:
        raise OtaError("signed release is not a firmware release")
    if doc.get("sha256") != params["sha256"]:
        raise OtaError("signed release is for another bundle")
    if platform != _platform():
        raise OtaError("release is for %s, this is %s" % (platform, _platform()))
    if (
        version_tuple(version) < version_tuple(running)
        and params.get("allow_downgrade") is not True
    ):
        raise OtaError("downgrade from %s to %s not allowed by the command" % (running, version))
    return version


def check_manifest(raw, sha, version=None):
    # -> the parsed manifest, if raw hashes to sha and suits this device (and
    # is of version, when given: the signed release's).
    h = hashlib.sha256(raw)
    if _hex(h) != sha:
        raise OtaError("manifest sha256 %s, command says %s" % (_hex(h), sha))
    m = json.loads(raw)
    if m.get("format") != 1 or not isinstance(m.get("files"), dict):
        raise OtaError("not a bundle manifest")
    if version is not None and m.get("version") != version:
        raise OtaError("bundle is version %s, the release %s" % (m.get("version"), version))
    if m.get("platform") != _platform():
        raise OtaError("bundle is for %s, this is %s" % (m.get("platform"), _platform()))
    mpy = getattr(sys.implementation, "_mpy", None)
    if mpy is not None and m.get("mpy") != mpy & 0xFF:
        raise OtaError("bundle has .mpy version %s, this runs %d" % (m.get("mpy"), mpy & 0xFF))
    for name in m["files"]:
        if name.startswith("/") or ".." in name.split("/") or name == "manifest.json":
            raise OtaError("bad file name in manifest: " + name)
    return m


async def fetch_bundle(url, sha, dest, version=None, progress=None, tls=None):
    # Download and verify the bundle at url (ending in "/") into dest; its
    # manifest must be of version, when given. Returns (files, bytes).
    # progress(files, bytes), if given, is called once the manifest is
    # verified, before the first file. An https URL needs tls (the device's
    # TLS context: a config with "ca"); the bundle is signed and hashed
    # either way, TLS keeps what the device runs from eavesdroppers.
    secure, host, port, base = parse_url(url)
    if secure and tls is None:
        raise OtaError("an https:// bundle URL needs the cluster CA (config key ca)")
    if not secure:
        tls = None
    if not base.endswith("/"):
        base += "/"
    raw = bytearray()

    def keep(chunk):
        if len(raw) + len(chunk) > _MAX_MANIFEST:
            raise OtaError("manifest over %d bytes" % _MAX_MANIFEST)
        raw.extend(chunk)

    await _get(host, port, base + "manifest.json", keep, tls)
    m = check_manifest(bytes(raw), sha, version)
    files = m["files"]
    total = 0
    for name in files:
        total += files[name][0]
    if progress is not None:
        progress(len(files), total)
    remove_tree(dest)
    _makedirs(dest)
    for name in sorted(files):
        size, want = files[name]
        path = dest + "/" + name
        i = path.rfind("/")
        _makedirs(path[:i])
        h = hashlib.sha256()
        with open(path, "wb") as f:

            def sink(chunk, f=f, h=h):
                f.write(chunk)
                h.update(chunk)

            got = await _get(host, port, base + name, sink, tls)
        if got != size or _hex(h) != want:
            raise OtaError(
                "%s: got %d bytes sha256 %s, manifest says %d %s"
                % (name, got, _hex(h)[:12], size, want[:12])
            )
    # Read back what reached flash.
    for name in sorted(files):
        size, want = files[name]
        if hash_file(dest + "/" + name) != (size, want):
            raise OtaError("%s: flash content differs after writing" % name)
    tmp = dest + "/manifest.tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.rename(tmp, dest + "/manifest.json")
    return len(files), total


# CommandStatus / Reason wire values of update outcomes.
_ACCEPTED = const(0)
_DONE = const(1)
_FAILED = const(2)
_NONE = const(0)
_EXECUTION_ERROR = const(9)
_CMD_DONE = const(2)  # edge/meta.py CMD_DONE


class Updater:
    # Over-the-air updates for the node (edge/node.py), made by the A/B app
    # loader (firmware/loader.py, passed as apps) and handed to the app. The
    # node calls:
    #   start(params)  the ota.update handler: queue the download; the
    #                  command's answer stays ACCEPTED (the tuple it returns)
    #   run()          task: download and verify into the other slot, stage
    #                  it, reboot; a failure finishes the command FAILED
    #   on_ack()       each commit-ack: on a trial boot, the loader makes
    #                  the running slot active, and the command is DONE
    #   recover(node)  at boot: the loader's report of the last trial
    #                  becomes the command's answer (DONE, or FAILED after a
    #                  rollback); an ACCEPTED answer with nothing staged
    #                  means a restart cut the download (FAILED)
    #   cleanup()      from the janitor: a trial boot without an ack within
    #                  ota_confirm_s resets, which uses up one trial boot
    # On the way, further ACCEPTED answers tell the hub's ledger how it goes:
    # the download's size, the bundle verified and the reboot, each trial boot.
    # Settings (config.json): ota_max_boots (3), ota_confirm_s (300).
    def __init__(self, apps):
        self.apps = apps
        self.node = None
        self.job = None  # (command id, url, sha256, release version)
        self.wake = asyncio.Event()
        self.staged = 0  # files staged for the next boot
        self.rollbacks = 0
        self.firmware = ""

    def _describe(self):
        from edge.node import FIRMWARE

        self.firmware = FIRMWARE + "+" + self.apps.describe()

    def start(self, params):
        from edge.node import FIRMWARE

        apps = self.apps
        if apps.trial:
            raise OSError("app %s is on trial; update again once it is confirmed" % apps.running)
        if self.job is not None:
            raise OSError("an update is already downloading")
        # The signed release, before anything is written (raises: FAILED).
        keys = pinned_keys(self.node.cfg.get("release_keys"))
        version = check_release(params, keys, FIRMWARE)
        url = params["url"]
        if not url.endswith("/"):
            url += "/"
        self.job = (self.node.executor.current_id, url, params["sha256"], version)
        self.wake.set()
        return ("downloading into app " + apps.other(apps.running),)

    def _finish(self, cid, status, reason, detail):
        self.node._queue(self.node.executor.finish(cid, status, reason, detail))

    def _progress(self, cid, detail):
        # News for the command's history in the hub's ledger (not stored here).
        self.node._queue(self.node.executor.finish(cid, _ACCEPTED, _NONE, detail))

    def on_ack(self):
        if self.apps.trial:
            self.apps.confirm()  # connected and acknowledged: the update works
            self._settle()

    def recover(self, node):
        self.node = node
        self._settle()

    def _settle(self):
        apps = self.apps
        self._describe()
        rep = apps.report()
        if rep is not None:
            if rep["outcome"] == "confirmed":
                detail = "running app %s (%s)" % (rep["slot"], self.firmware)
                self._finish(rep["cmd"], _DONE, _NONE, detail)
            else:
                self.rollbacks += 1
                detail = (
                    "rolled back to app %s: app %s was not connected and acknowledged "
                    % (
                        apps.running,
                        rep["slot"],
                    )
                    + "within %d boots" % rep["boots"]
                )
                self._finish(rep["cmd"], _FAILED, _EXECUTION_ERROR, detail)
            apps.clear_report()
            return
        if apps.trial:
            st = apps.load()
            detail = "trial boot %d of %d: app %s (%s)" % (
                st["boots"],
                st["max_boots"],
                apps.running,
                self.firmware,
            )
            self._progress(st["cmd"], detail)
            return
        m = self.node.meta
        idle = not apps.trial and self.job is None and m.cmd_state == _CMD_DONE
        if idle and m.cmd_status == _ACCEPTED and m.cmd_id:
            detail = "restarted before the update was staged"
            self._finish(m.cmd_id, _FAILED, _EXECUTION_ERROR, detail)

    def cleanup(self):
        node = self.node
        if (
            self.apps.trial
            and ticks_diff(ticks_ms(), node.started) > node.cfg.get("ota_confirm_s", 300) * 1000
        ):
            node.reset()

    async def run(self):
        node = self.node
        while not node.stopping:
            if self.job is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            cid, url, sha, version = self.job
            apps = self.apps
            slot = apps.other(apps.running)
            boots = node.cfg.get("ota_max_boots", 3)

            def fetching(files, size, cid=cid, slot=slot):
                detail = "downloading %d files (%d bytes) into app %s" % (files, size, slot)
                self._progress(cid, detail)

            try:
                n, size = await fetch_bundle(
                    url, sha, apps.slot_dir(slot), version, fetching, self.node.tls
                )
                apps.stage(slot, sha, cid, boots)
            except Exception as e:  # network, flash, a bad bundle: the command fails
                self.job = None
                self._finish(
                    cid, _FAILED, _EXECUTION_ERROR, "update failed: %s" % (str(e) or repr(e))
                )
                continue
            self.staged = n
            detail = "%d files (%d bytes) verified in app %s; rebooting to try it (%d boots)" % (
                n,
                size,
                slot,
                boots,
            )
            self._progress(cid, detail)
            # The answer stays ACCEPTED until the new app confirms itself.
            node.executor.reboot_requested = True
            node._wake_results.set()
            return

    def stats(self):
        return {"firmware": self.firmware, "staged": self.staged, "rollbacks": self.rollbacks}
