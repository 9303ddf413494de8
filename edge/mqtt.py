# A compact asyncio MQTT 3.1.1 client for the edge, on MicroPython and CPython.
#
#   c = MQTTClient("plug-7", [("10.0.0.2", 1883), ("10.0.0.3", 1883)],
#                  user="plug-7", password=pw, on_message=handle,
#                  will=("aiot/v1/plug-7/status", offline_frame, 1, True))
#   await c.connect()        # first connection, or OSError (refused, unreachable)
#   c.start()                # or: keep trying in the background from server 0
#   await c.subscribe("aiot/v1/plug-7/down", 1)
#   await c.publish("aiot/v1/plug-7/up", frame, qos=1)   # returns once PUBACKed
#   await c.up.wait()        # and c.down: link state, no exceptions to catch
#   c.next_server()          # give up on this broker, move on
#   c.set_servers(servers)   # a new order: go to its first unless already there
#   await c.disconnect()
#
# Over TLS: MQTTClient(..., tls=tls_context(ca_der)), one context for every
# connection. Each broker must then present a certificate that chains to that
# CA (the cluster CA, pinned: nothing else is trusted) and names the host the
# device dials, as an IP address or DNS subject alternative name (mbedTLS 3.5+
# and CPython match both). A failed handshake is a link error like any other:
# OSError("TLS: <reason>"), then the next server.
#
# Two layers, as in mqtt_as. MQTTBase speaks the protocol over one connection
# at a time (packets, packet ids, QoS 1 in flight) and reports every link
# problem as OSError. MQTTClient stays connected: one task (_keep) owns
# (re)connecting, failover along the ordered server list and the return to the
# preferred (first) server. While a link is up, _rx reads packets, _tick sends
# PINGREQ, watches the keepalive window and resends QoS 1 messages whose PUBACK
# is late, and _probe (only away from the preferred server) checks whether the
# preferred one is back.
#
# Every link has a generation number. A send for an older generation fails
# with OSError instead of reaching the new link, so nothing can slip in ahead
# of the resends that follow a reconnect.
#
# on_message(topic: str, payload: bytes, retained: bool) runs in the reader
# task and must not block; a QoS 1 message is PUBACKed after it returns.
# publish() keeps a reference to payload (no copy) until it returns.
#
# Comments instead of docstrings: they cost nothing once compiled to .mpy.
# Every method and string costs RAM on the device, hence the terse messages.

import asyncio
import struct
import sys
from random import getrandbits

from edge import const
from edge.clock import ticks_diff, ticks_ms

try:
    _sleep_ms = asyncio.sleep_ms
    _wait_for_ms = asyncio.wait_for_ms
except AttributeError:  # CPython

    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)

    def _wait_for_ms(aw, ms):
        return asyncio.wait_for(aw, ms / 1000)


# MicroPython's asyncio.TimeoutError is not an OSError (CPython's is): always
# catch it first, and turn it into OSError where the link is at fault.
_TIMEOUT = asyncio.TimeoutError
# MicroPython's stream copies whatever the socket does not take at once, so a
# slice of a reused buffer is safe to write. A CPython transport may keep the
# object it is given, so it gets a copy.
_COPY = sys.implementation.name != "micropython"

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = b"\xe0\x00"

_MAX_TOPIC = const(256)  # longer incoming topics are dropped like big payloads
_RBUF = const(128)  # first size of the receive buffer; it grows on demand
_PROBE_WAIT_MS = const(500)  # time a refused probe connection has to show

# Why a link went down (MQTTClient._why).
_LOST = const(1)  # I/O error, EOF, malformed packet: retry the same server once
_KEEPALIVE = const(2)  # silent broker: next server
_NEXT = const(3)  # next_server(): next server
_RETURN = const(4)  # the preferred server is back
_STOP = const(5)  # disconnect()

# Why a broker refuses a connection: CONNACK return codes 1..5, "|" before each
# (one string rather than a tuple: each string object costs RAM on the device).
_REFUSED = (
    "|bad protocol version|client id rejected|server unavailable"
    "|bad user name or password|not authorized"
)


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _nodelay(w):
    # Small packets must not wait for the broker's delayed ACK (Nagle): set
    # TCP_NODELAY where the port allows it (IPPROTO_TCP 6, TCP_NODELAY 1 on
    # Linux and lwIP; MicroPython's socket module lacks the names).
    s = getattr(w, "s", None)  # MicroPython stream
    if s is None:
        try:
            s = w.get_extra_info("socket")  # CPython
        except AttributeError:
            return
    try:
        s.setsockopt(6, 1, 1)
    except (AttributeError, OSError, TypeError):
        pass  # Nagle stays on: slower, still correct


def _errstr(e):
    s = str(e)
    return s if s else type(e).__name__


def tls_context(ca):
    # The TLS client context for MQTTClient(tls=...): trusts only ca, the
    # cluster CA certificate (DER bytes, or their base64 as in the device
    # config's "ca"), requires a valid certificate from every broker and
    # checks its host name. Made once: it holds the parsed CA and the random
    # generator, and every connection reuses it. ValueError if ca is not a
    # certificate.
    import binascii  # lazy: only devices with a CA need it
    import ssl  # lazy: only devices with a CA load it (and pay its RAM)

    try:
        if isinstance(ca, str):
            ca = binascii.a2b_base64(ca)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # MicroPython's client default is CERT_NONE: say it (the stubs lack the name).
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
        ctx.load_verify_locations(cadata=ca)
    except Exception as e:
        raise ValueError("ca: not a base64 DER certificate: " + _errstr(e))
    return ctx


def _tls_error(e):
    # A failed handshake as a link error with a short reason. MicroPython
    # raises ValueError with mbedTLS's verification flags, one a line;
    # CPython an ssl.SSLError (an OSError) with the reason in an attribute.
    s = getattr(e, "verify_message", None) or getattr(e, "reason", None) or _errstr(e)
    return OSError("TLS: " + "; ".join([x.strip() for x in str(s).split("\n") if x.strip()]))


async def open_stream(host, port, tls):
    # A TCP connection to host, over TLS when tls (an SSLContext) is given:
    # host is the name sent (SNI) and checked against the certificate. For
    # the MQTT links and edge/ota.py's bundle downloads.
    if tls is None:
        return await asyncio.open_connection(host, port)
    if _COPY:  # CPython: the handshake and its checks are part of the connect
        try:
            return await asyncio.open_connection(host, port, ssl=tls)
        except OSError as e:
            if hasattr(e, "library"):  # ssl.SSLError
                raise _tls_error(e)
            raise
    # MicroPython: wrap the TCP socket here rather than in open_connection,
    # so that TCP_NODELAY goes on it first (the TLS socket hides it). The
    # handshake, and with it the certificate check, runs at the first write.
    r, w = await asyncio.open_connection(host, port)
    _nodelay(w)
    try:
        s = tls.wrap_socket(w.s, server_hostname=host, do_handshake_on_connect=False)  # type: ignore[attr-defined]
        w.s = s  # type: ignore[attr-defined]
    except Exception:
        w.close()
        raise
    return r, w


def _put_len(buf, i, n):
    # Remaining length: 7 bits a byte, high bit set when more follow.
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


def _put_str(buf, i, s):
    n = len(s)
    struct.pack_into("!H", buf, i, n)
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


async def _within(aw, ms, what):
    try:
        return await _wait_for_ms(aw, ms)
    except _TIMEOUT:
        raise OSError("timeout: " + what)


async def _close(w, ms):
    try:
        w.close()
        await _wait_for_ms(w.wait_closed(), ms)
    except Exception:
        t = getattr(w, "transport", None)  # CPython: do not wait for a dead peer
        if t is not None:
            t.abort()


class _Msg:
    # One QoS 1 message in flight; max_inflight of them, allocated once.
    def __init__(self):
        self.pid = 0
        self.topic = None
        self.payload = None
        self.h = 0  # first header byte; gets DUP after the first send
        self.g = 0  # link generation of the last send, 0 before the first
        self.t = 0  # ticks_ms of the last send


class MQTTBase:
    # The wire protocol over one connection at a time. MQTTClient sets the
    # connection settings (_fields, _flags, _ka, will, _max_payload, _t_ms);
    # declared here for the type check (annotations only: no storage).
    _fields: tuple
    _flags: int
    _ka: int
    will: tuple | None
    _max_payload: int
    _t_ms: int
    _tls: object
    on_message: object

    def __init__(self, n):
        self._r = None
        self._w = None
        self._into = None  # MicroPython streams have readinto; CPython's do not
        self._gen = 0
        self._wlock = asyncio.Lock()
        self._th = bytearray(10)  # outgoing fixed header and topic length; pid at 8
        self._thv = memoryview(self._th)
        self._rh = bytearray(6)  # incoming fixed header and small fields
        self._rv = memoryview(self._rh)
        self._rv0 = self._rv[0:1]
        self._rv1 = self._rv[1:2]
        self._rbuf = bytearray(_RBUF)  # incoming topic and payload
        self._rbv = memoryview(self._rbuf)
        self._last_rx = 0
        self._last_tx = 0
        self._last_ping = 0
        self._free = [_Msg() for _ in range(n)]  # n: max_inflight
        self._order = []  # messages in flight, in publish order
        self._moved = asyncio.Event()  # set on every PUBACK and freed slot
        self._pid = 0
        self._sublock = asyncio.Lock()
        self._sub_ev = asyncio.Event()
        self._sub_pid = 0
        self._sub_rc = -1
        self.session_present = False
        self.dropped = 0  # incoming messages discarded for their size
        self.cb_errors = 0  # exceptions raised by on_message

    @property
    def inflight(self):
        return len(self._order)

    # -- writing: every send holds _wlock and names its link generation

    def _live(self, gen):
        if gen != self._gen or self._w is None:
            raise OSError("link down")
        return self._w

    def _out(self, w, data):
        w.write(bytes(data) if _COPY else data)

    async def _drain(self, w):
        await _within(w.drain(), self._t_ms, "write")
        self._last_tx = ticks_ms()

    async def _send(self, gen, t, pid=0, topic=None, payload=None, m=None):
        # Writes [t, remaining length, topic length][topic][pid][payload]: the
        # layout of PUBLISH, and of PUBACK, PINGREQ and SUBSCRIBE without a
        # topic. m: a QoS 1 message in flight, sent with DUP after the first time.
        async with self._wlock:
            w = self._live(gen)
            if m is not None:
                if m not in self._order:  # acknowledged or abandoned meanwhile
                    return
                t = m.h | (8 if m.g else 0)
                pid = m.pid
                topic = m.topic
                payload = m.payload
                m.g = gen
                m.t = ticks_ms()
            h = self._th
            n = (2 if pid else 0) + (0 if payload is None else len(payload))
            if topic is not None:
                n += 2 + len(topic)
            h[0] = t
            i = _put_len(h, 1, n)
            if topic is not None:
                struct.pack_into("!H", h, i, len(topic))
                i += 2
            self._out(w, self._thv[0:i])
            if topic is not None:
                self._out(w, topic)
            if pid:
                struct.pack_into("!H", h, 8, pid)
                self._out(w, self._thv[8:10])
            if payload:
                self._out(w, payload)
            await self._drain(w)

    def _connect_packet(self):
        # Built at each CONNECT (rare), so the application may change the will.
        # _fields: client id, then user name and password when given.
        f = self._fields
        flags = self._flags
        will = self.will
        if will:
            f = [f[0], _b(will[0]), _b(will[1])] + f[1:]
            flags |= 4 | (will[2] << 3) | (0x20 if will[3] else 0)
        n = 10
        for x in f:
            n += 2 + len(x)
        pkt = bytearray(n + 5)
        pkt[0] = _CONNECT
        i = _put_len(pkt, 1, n)
        struct.pack_into("!H4sBBH", pkt, i, 4, b"MQTT", 4, flags, self._ka)
        i += 10
        for x in f:
            i = _put_str(pkt, i, x)
        return memoryview(pkt)[:i]

    # -- reading: the connecting task, then only the _rx task

    async def _fill(self, mv):
        # Fill memoryview mv from the stream; no allocation on MicroPython.
        n = len(mv)
        i = 0
        into = self._into
        while i < n:
            if into is not None:
                k = await into(mv[i:] if i else mv)
                if k is None:  # woken without data
                    continue
            else:
                d = await self._r.read(n - i)
                k = len(d)
                mv[i : i + k] = d
            if not k:
                raise OSError("closed by broker")
            i += k
        self._last_rx = ticks_ms()

    async def _skip(self, n):
        # Read and drop n bytes, a receive buffer at a time.
        v = self._rbv
        c = len(v)
        while n > 0:
            k = n if n < c else c
            await self._fill(v[0:k])
            n -= k

    async def _open(self, host, port):
        self._gen += 1
        t = self._t_ms
        r, w = await _within(open_stream(host, port, self._tls), t, "connect")
        _nodelay(w)
        self._r = r
        self._w = w
        self._into = getattr(r, "readinto", None)
        self._last_rx = self._last_tx = self._last_ping = ticks_ms()
        # On MicroPython a refused TCP connect shows up here, at the first
        # write, and so does a failed TLS handshake (ValueError: the
        # certificate), in the write itself or in the drain.
        pkt = self._connect_packet()
        try:
            self._out(w, pkt)
            await self._drain(w)
        except ValueError as e:
            raise _tls_error(e)
        await _within(self._fill(self._rv[0:4]), t, "CONNACK")
        b = self._rh
        if b[0] != _CONNACK or b[1] != 2 or b[2] > 1:
            raise OSError("bad CONNACK")
        rc = b[3]
        if rc:
            raise OSError(
                "broker refused connection: %s (CONNACK %d)"
                % (_REFUSED.split("|")[rc] if rc < 6 else "", rc)
            )
        self.session_present = b[2] == 1

    async def _read_packet(self, gen):
        b = self._rh
        await self._fill(self._rv0)
        t = b[0]
        n = 0
        sh = 0
        while True:  # remaining length, at most 4 bytes
            await self._fill(self._rv1)
            n |= (b[1] & 0x7F) << sh
            if b[1] < 0x80:
                break
            sh += 7
            if sh > 21:
                raise OSError("bad remaining length")
        qos = (t >> 1) & 3
        if t & 0xF0 == _PUBLISH and qos < 2 and n >= (4 if qos else 2):
            await self._rx_publish(gen, t, qos, n - (4 if qos else 2))
        elif t == _PUBACK and n == 2:
            await self._fill(self._rv[1:3])
            self._acked((b[1] << 8) | b[2])
        elif t == _SUBACK and n == 3:
            await self._fill(self._rv[1:4])
            if (b[1] << 8) | b[2] == self._sub_pid:
                self._sub_rc = b[3]
                self._sub_ev.set()
        elif t != _PINGRESP or n:
            raise OSError("bad packet 0x%02x, length %d" % (t, n))

    async def _rx_publish(self, gen, t, qos, n):
        # n: topic length field excluded, topic + payload
        b = self._rh
        await self._fill(self._rv[1:3])
        tl = (b[1] << 8) | b[2]
        pl = n - tl
        if pl < 0:
            raise OSError("bad PUBLISH")
        # Too big: never allocated; read, drop and still PUBACK it, or the
        # broker would deliver it again after every reconnect.
        big = tl > _MAX_TOPIC or pl > self._max_payload
        if big:
            await self._skip(tl)
        else:
            if len(self._rbuf) < n:
                self._rbv = self._rbuf = None  # let the old buffer go first
                self._rbuf = bytearray(n)
                self._rbv = memoryview(self._rbuf)
            await self._fill(self._rbv[0:tl])
        pid = 0
        if qos:
            await self._fill(self._rv[4:6])
            pid = (b[4] << 8) | b[5]
            if not pid:
                raise OSError("bad PUBLISH")
        if big:
            await self._skip(pl)
            self.dropped += 1
        else:
            v = self._rbv
            await self._fill(v[tl:n])
            topic = str(v[0:tl], "utf-8")
            cb = self.on_message
            if cb is not None:
                try:
                    cb(topic, bytes(v[tl:n]), t & 1 == 1)
                except Exception as e:
                    self.cb_errors += 1
                    print("mqtt: on_message:", _errstr(e))
        if qos:
            await self._send(gen, _PUBACK, pid)

    # -- QoS 1 and packet ids

    def _acked(self, pid):
        for m in self._order:
            if m.pid == pid:
                self._order.remove(m)
                self._moved.set()
                return

    def _new_pid(self):
        while True:
            p = self._pid % 0xFFFF + 1
            self._pid = p
            if p == self._sub_pid:
                continue
            for m in self._order:
                if m.pid == p:
                    break
            else:
                return p

    async def _subscribe(self, gen, topic, qos):
        # One SUBSCRIBE with a single topic filter; returns the SUBACK code.
        async with self._sublock:
            self._sub_pid = pid = self._new_pid()
            self._sub_rc = -1
            self._sub_ev.clear()
            try:
                body = bytearray(3 + len(topic))
                _put_str(body, 0, topic)
                body[-1] = qos
                await self._send(gen, _SUBSCRIBE, pid, None, body)
                await _within(self._sub_ev.wait(), self._t_ms, "SUBACK")
                if self._sub_rc < 0:
                    raise OSError("link down")
                return self._sub_rc
            finally:
                self._sub_pid = 0


class MQTTClient(MQTTBase):
    # client_id; servers: [(host, port), ...] in this device's order of preference.
    # user, password: str, bytes or None. keepalive: seconds, 0 for none.
    # clean_session=False keeps the broker's session: subscriptions, and QoS 1
    #   messages queued while the device was away.
    # will: (topic, payload, qos, retain) or None; the attribute may change
    #   before a reconnect. on_message(topic, payload, retained); also settable.
    # max_inflight: QoS 1 messages awaiting PUBACK before publish() waits.
    # max_payload: bigger incoming messages are read in chunks and dropped
    #   (counted in `dropped`, still PUBACKed).
    # timeout_s: TCP connect, CONNACK, SUBACK and each write.
    # ack_timeout_s: a QoS 1 message without PUBACK for this long is resent (DUP).
    # backoff_s, backoff_max_s: reconnect delay, doubled per failed attempt,
    #   capped, with jitter.
    # return_after_s: away from servers[0], go back once it has accepted a TCP
    #   connection at every probe for this long (None: never); probe_s: the
    #   probe period (default a quarter of return_after_s, 0.1 s to 15 s).
    # tls: an SSLContext from tls_context(ca), or None for plain TCP (labs):
    #   every connection, probes included, then goes over TLS with that CA.
    #
    # State for the device status message: server (index in use), connects,
    # reconnects, dropped, cb_errors, inflight, last_error, session_present.
    def __init__(
        self,
        client_id,
        servers,
        user=None,
        password=None,
        keepalive=60,
        clean_session=False,
        will=None,
        on_message=None,
        max_inflight=4,
        max_payload=4096,
        timeout_s=10,
        ack_timeout_s=10,
        backoff_s=1,
        backoff_max_s=60,
        return_after_s=60,
        probe_s=None,
        tls=None,
    ):
        if not servers or max_inflight < 1 or (user is None and password is not None):
            raise ValueError("no servers, max_inflight < 1 or password without user")
        super().__init__(max_inflight)
        self._fields = [_b(client_id)] + [_b(x) for x in (user, password) if x is not None]
        self._flags = (
            (2 if clean_session else 0)
            | (0 if user is None else 0x80)
            | (0 if password is None else 0x40)
        )
        self._ka = int(keepalive)
        self.will = will  # (topic, payload, qos, retain) or None; read at every CONNECT
        self.on_message = on_message
        self._max_payload = max_payload
        self._t_ms = int(timeout_s * 1000)
        self._tls = tls
        self.servers = servers
        self.server = 0  # index of the server in use, or being tried
        self.connects = 0  # successful connections
        self.reconnects = 0  # successful connections after the first
        self.last_error = None  # why the last link went down or a connect failed
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self.down.set()
        self._ka_ms = self._ka * 1000
        self._ack_ms = int(ack_timeout_s * 1000)
        self._bmin = int(backoff_s * 1000)
        self._bmax = int(backoff_max_s * 1000)
        self._ret_ms = None if return_after_s is None else int(return_after_s * 1000)
        if probe_s is None:  # a quarter of return_after_s, within [0.1 s, 15 s]
            p = (self._ret_ms or 0) // 4
            self._probe_ms = 100 if p < 100 else 15000 if p > 15000 else p
        else:
            self._probe_ms = int(probe_s * 1000)
        t = min(self._ka_ms // 4 if self._ka else 1000, self._ack_ms // 2)
        self._tick_ms = 20 if t < 20 else t
        self._subs = []  # [[topic, qos, link generation SUBACKed on, code]]
        self._drop = asyncio.Event()  # wakes _keep: link lost, or leaving it
        self._why = 0
        self._tasks = []
        self._task = None
        self._stopping = False
        self._goto = None  # set_servers(): the next attempt starts at this index

    # -- application API

    async def connect(self):
        # One pass over the servers: OSError with the last reason if none
        # accepted. Then stays connected in the background.
        if self._task is not None:
            raise ValueError("started")
        self._stopping = False
        for i in range(len(self.servers)):
            if await self._try(i):
                self._set_up(i)
                self._task = asyncio.create_task(self._keep(i, True))
                return
        raise OSError(self.last_error)

    def start(self):
        # Stay connected in the background, from the preferred server on.
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._keep(0, False))

    async def disconnect(self):
        # Clean DISCONNECT (the broker drops the will), then stop. QoS 1
        # messages not yet acknowledged stay queued for a later start().
        self._stopping = True
        self._why = _STOP
        self._drop.set()
        t = self._task
        if t is not None:
            self._task = None
            await t

    def next_server(self):
        # Leave the current broker for the next one in the list.
        if self.up.is_set():
            self._lost(self._gen, _NEXT)

    async def publish(self, topic, payload, qos=0, retain=False):
        # QoS 0: returns once written. QoS 1: returns once PUBACKed; resent
        # with DUP when the PUBACK is late and after every reconnect.
        topic = _b(topic)
        payload = _b(payload)
        if qos == 0:
            while True:
                await self.up.wait()
                gen = self._gen
                try:
                    await self._send(gen, _PUBLISH | (1 if retain else 0), 0, topic, payload)
                    return
                except OSError as e:
                    self._lost(gen, _LOST, e)
        if qos != 1:
            raise ValueError("qos")
        while not self._free:
            self._moved.clear()
            await self._moved.wait()
        m = self._free.pop()
        m.pid = self._new_pid()
        m.topic = topic
        m.payload = payload
        m.h = 0x32 | (1 if retain else 0)
        m.g = 0
        self._order.append(m)
        try:
            if self.up.is_set():  # otherwise _keep sends it after the next CONNACK
                gen = self._gen
                try:
                    await self._send(gen, 0, m=m)
                except OSError as e:
                    self._lost(gen, _LOST, e)
            while m in self._order:  # removed on PUBACK
                self._moved.clear()
                await self._moved.wait()
        finally:
            if m in self._order:
                self._order.remove(m)
            m.topic = m.payload = None
            self._free.append(m)
            self._moved.set()

    async def subscribe(self, topic, qos=1):
        # Returns the granted QoS once SUBACKed; OSError if the broker refuses.
        # Re-sent on every (re)connect.
        if qos not in (0, 1):
            raise ValueError("qos")
        topic = _b(topic)
        self._forget(topic)
        s = [topic, qos, 0, 0]
        self._subs.append(s)
        while True:
            await self.up.wait()
            gen = self._gen
            if s[2] != gen:  # not yet done by _keep on this link
                try:
                    s[3] = await self._subscribe(gen, topic, qos)
                except OSError as e:
                    self._lost(gen, _LOST, e)
                    continue
            if s[3] == 0x80:
                self._forget(topic)
                raise OSError("subscription refused: " + topic.decode())
            return s[3]

    def set_servers(self, servers):
        # A new ordered server list (the hub cluster's membership changed).
        # Connected to its first server: stay. Otherwise leave the current
        # link politely and connect from the new first server on (down the
        # list if it does not answer). Not connected: the next attempt
        # starts from the new first server.
        if not servers:
            raise ValueError("no servers")
        cur = self.servers[self.server] if self.server < len(self.servers) else None
        here = self.up.is_set()
        self.servers = servers
        if here and cur is not None and list(cur) == list(servers[0]) and self.server == 0:
            return
        self.server = 0
        self._goto = 0
        if here:
            self._lost(self._gen, _RETURN)

    # -- staying connected

    def _forget(self, topic):
        for s in self._subs:
            if s[0] == topic:
                self._subs.remove(s)
                return

    def _pick(self, gen, now):
        # now None: the first message in flight not yet sent on this link;
        # otherwise the first one sent on it whose PUBACK is overdue.
        for m in self._order:
            if now is None:
                if m.g != gen:
                    return m
            elif m.g == gen and ticks_diff(now, m.t) >= self._ack_ms:
                return m
        return None

    def _set_up(self, i):
        self.server = i
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self.down.clear()
        self.up.set()

    def _lost(self, gen, why, err=None):
        # Any task may report the link gone; the first report wins.
        if gen != self._gen or self._drop.is_set():
            return
        if err is not None:
            self.last_error = _errstr(err)
        self._why = why
        self.up.clear()
        self.down.set()
        self._drop.set()
        self._sub_ev.set()  # wake a SUBACK waiter

    async def _keep(self, i, linked):
        fails = 0
        try:
            while True:
                if not linked:
                    if self._stopping:
                        break
                    if self._goto is not None:  # a new list: start at its first
                        i = self._goto
                        self._goto = None
                    if not await self._try(i):
                        fails += 1
                        i = (i + 1) % len(self.servers)
                        await self._pause(fails)
                        continue
                    fails = 0
                    self._set_up(i)
                linked = False
                await self._drop.wait()
                why = self._why
                self.up.clear()
                self.down.set()
                # Leaving by our own decision: say goodbye, so the will is dropped.
                await self._unlink(why >= _NEXT)
                if self._stopping:
                    break
                if why == _RETURN:
                    i = 0
                    self._goto = None
                elif why == _LOST:
                    await self._pause(1)
                else:
                    i = (i + 1) % len(self.servers)
        finally:  # also when cancelled: no task or socket outlives the keeper
            self.up.clear()
            self.down.set()
            if self._w is not None or self._tasks:
                await self._unlink(False)

    async def _pause(self, fails):
        # Exponential backoff, capped, with jitter: a random delay in [d/2, d].
        if self._stopping:
            return
        d = self._bmin << (fails - 1 if fails < 13 else 12)
        d = (d if d < self._bmax else self._bmax) >> 1
        self._drop.clear()  # from now on only disconnect() sets it
        try:
            await _wait_for_ms(self._drop.wait(), d + ((getrandbits(8) * (d + 1)) >> 8))
        except _TIMEOUT:
            pass

    async def _try(self, i):
        self._why = 0
        self._drop.clear()
        self.server = i
        try:
            await self._link(i)
            return True
        except Exception as e:  # whatever the reply, the keeper carries on
            self.last_error = _errstr(e)
            await self._unlink(False)
            return False

    async def _link(self, i):
        host, port = self.servers[i]
        await self._open(host, port)
        gen = self._gen
        t = self._tasks
        t.append(asyncio.create_task(self._rx(gen)))
        t.append(asyncio.create_task(self._tick(gen)))
        # Subscriptions first, so that replies to the resent messages arrive.
        k = 0
        while k < len(self._subs):
            s = self._subs[k]
            s[3] = await self._subscribe(gen, s[0], s[1])
            s[2] = gen
            if s[3] == 0x80:
                self.last_error = "subscription refused: " + s[0].decode()
                self._forget(s[0])
            else:
                k += 1
        # Then every unacknowledged message, in order, before anything new.
        while True:
            m = self._pick(gen, None)
            if m is None:
                break
            await self._send(gen, 0, m=m)
        if self._drop.is_set():
            raise OSError(self.last_error)
        if i and self._ret_ms is not None:
            t.append(asyncio.create_task(self._probe(gen)))

    async def _unlink(self, polite):
        self._gen += 1  # late writers now fail
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        self._sub_ev.set()
        async with self._wlock:  # a send in progress finishes or times out
            w = self._w
            self._r = self._w = None
        if w is not None:
            if polite:
                try:
                    self._out(w, _DISCONNECT)
                    await self._drain(w)
                except Exception:
                    pass
            await _close(w, self._t_ms)

    async def _rx(self, gen):
        try:
            while True:
                await self._read_packet(gen)
        except Exception as e:  # malformed input too: a link failure
            self._lost(gen, _LOST, e)

    async def _tick(self, gen):
        ka = self._ka_ms
        half = ka >> 1
        try:
            while True:
                await _sleep_ms(self._tick_ms)
                now = ticks_ms()
                if ka:
                    if ticks_diff(now, self._last_rx) > ka:
                        self._lost(gen, _KEEPALIVE, OSError("keepalive: broker silent"))
                        return
                    if ticks_diff(now, self._last_ping) >= half and (
                        ticks_diff(now, self._last_tx) >= half
                        or ticks_diff(now, self._last_rx) >= half
                    ):
                        self._last_ping = now
                        await self._send(gen, _PINGREQ)
                while True:
                    m = self._pick(gen, now)
                    if m is None:
                        break
                    await self._send(gen, 0, m=m)
        except Exception as e:
            self._lost(gen, _LOST, e)

    async def _probe(self, gen):
        # Away from the preferred server: go back once it has accepted TCP
        # connections (over TLS: completed a handshake, its certificate
        # checked) at every probe for return_after_s.
        host, port = self.servers[0]
        tls = self._tls
        since = None
        while True:
            await _sleep_ms(self._probe_ms)
            w = None
            ok = False
            try:
                r, w = await _wait_for_ms(open_stream(host, port, tls), self._t_ms)
                if tls is None:
                    # MicroPython's open_connection returns before the TCP
                    # handshake is known to have worked: a refused connection
                    # fails this read. A broker says nothing before CONNECT,
                    # so silence means up.
                    await _wait_for_ms(r.read(1), _PROBE_WAIT_MS)
                else:
                    # A TLS socket writes nothing before its handshake has
                    # succeeded, so a written byte proves it (on MicroPython
                    # the write drives it). The first byte of a CONNECT: the
                    # broker drops the connection when it ends there.
                    w.write(b"\x10")
                    await _wait_for_ms(w.drain(), self._t_ms)
                    ok = True
            except _TIMEOUT:
                ok = w is not None and tls is None
            except Exception:
                pass
            finally:
                if w is not None:
                    await _close(w, self._t_ms)
            if not ok:
                since = None
                continue
            now = ticks_ms()
            if since is None:
                since = now
            if ticks_diff(now, since) >= self._ret_ms:
                self._lost(gen, _RETURN)
                return
