// The session, calls to the hub's HTTP API, and the live stream.
//
// The session token lives in this tab's sessionStorage: it is gone when the
// tab closes, and other tabs log in on their own.

const KEY = "aiot.session";

export const session = {
  token: null,
  name: null,
  role: null,
  devices: null, // a viewer's devices; null: every device
  expiresMs: 0,
};

let onUnauthorized = () => {};

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (s && s.token && (!s.expiresMs || s.expiresMs > Date.now())) {
      Object.assign(session, s);
      return true;
    }
  } catch (_) {
    // a damaged entry: log in again
  }
  clearSession();
  return false;
}

export function saveSession(fields) {
  Object.assign(session, fields);
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession() {
  Object.assign(session, { token: null, name: null, role: null, devices: null, expiresMs: 0 });
  sessionStorage.removeItem(KEY);
}

// Roles, most powerful first: admin > operator > viewer.
export const canOperate = () => session.role === "admin" || session.role === "operator";
export const isAdmin = () => session.role === "admin";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function detailText(body, fallback) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) {
    return d.map((x) => `${(x.loc || []).join(".")}: ${x.msg}`).join("; ");
  }
  return fallback;
}

// api("GET", "/v1/devices"), api("POST", "/v1/commands", {...}); the JSON
// answer, or an ApiError with the hub's message.
export async function api(method, path, body, opts = {}) {
  const headers = { Accept: "application/json" };
  if (session.token && !opts.anonymous) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `the hub is not reachable (${err.message})`);
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = { detail: text };
    }
  }
  if (!resp.ok) {
    if (resp.status === 401 && !opts.anonymous) onUnauthorized(detailText(data, "log in again"));
    throw new ApiError(resp.status, `${resp.status}: ${detailText(data, resp.statusText)}`);
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// The live stream: GET /v1/stream read with fetch() (an EventSource cannot
// send the Authorization header) and parsed as Server-Sent Events here. It
// reconnects with backoff and jitter, and gives up only on a 401.
//
//   const s = new Stream({onEvent(type, data), onState(state)}); s.start(); s.stop();
//   state: "connecting", "live", "reconnecting", "stopped"
export class Stream {
  constructor({ onEvent, onState }) {
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.running = false;
    this.ctrl = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  }

  stop() {
    this.running = false;
    if (this.ctrl) this.ctrl.abort();
    this.onState("stopped");
  }

  async loop() {
    let backoff = 1000;
    this.onState("connecting");
    while (this.running) {
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      let lastByte = Date.now();
      // The hub writes a keep-alive comment every 15 s: silence for longer
      // means the connection is dead even if the socket has not noticed.
      const watchdog = setInterval(() => {
        if (Date.now() - lastByte > 40000) ctrl.abort();
      }, 5000);
      try {
        const resp = await fetch("/v1/stream", {
          headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" },
          signal: ctrl.signal,
          cache: "no-store",
        });
        if (resp.status === 401) {
          this.running = false;
          onUnauthorized("the session is no longer valid");
          break;
        }
        if (!resp.ok || !resp.body) throw new Error(`stream answered ${resp.status}`);
        this.onState("live");
        backoff = 1000;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          lastByte = Date.now();
          buf += value;
          let cut;
          while ((cut = nextBreak(buf)) !== null) {
            this.dispatch(buf.slice(0, cut.at));
            buf = buf.slice(cut.at + cut.len);
          }
        }
      } catch (_) {
        // dropped, refused or aborted: reconnect below unless stopped
      } finally {
        clearInterval(watchdog);
      }
      if (!this.running) break;
      this.onState("reconnecting");
      await new Promise((r) => setTimeout(r, backoff + Math.random() * backoff * 0.5));
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  // One event block: "event: x" and "data: ..." lines; ":" lines are comments.
  dispatch(block) {
    let type = "message";
    const data = [];
    for (const raw of block.split(/\r\n|\r|\n/)) {
      if (!raw || raw.startsWith(":")) continue;
      const i = raw.indexOf(":");
      const field = i < 0 ? raw : raw.slice(0, i);
      let value = i < 0 ? "" : raw.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch (_) {
      return;
    }
    try {
      this.onEvent(type, parsed);
    } catch (err) {
      console.error("stream handler failed", type, err);
    }
  }
}

// Where the first event ends: a blank line in any of SSE's line endings.
function nextBreak(buf) {
  const m = /\r\n\r\n|\n\n|\r\r/.exec(buf);
  return m ? { at: m.index, len: m[0].length } : null;
}
