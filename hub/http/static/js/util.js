// DOM building and formatting. Everything that shows data goes through h()
// and textContent, never innerHTML, so a device id or a rule description
// is always shown as text.

// h("tr", {class: "x", onclick: fn, dataset: {id: "1"}}, "text", child, [more])
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function fmtAgo(ms) {
  if (!ms) return "never";
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return fmtTime(ms);
}

export function fmtW(w) {
  if (w === null || w === undefined || !Number.isFinite(w)) return "—";
  if (Math.abs(w) >= 1000) return `${(w / 1000).toFixed(2)} kW`;
  return `${w.toFixed(1)} W`;
}

export function fmtWh(wh) {
  if (wh === null || wh === undefined || !Number.isFinite(wh)) return "—";
  if (Math.abs(wh) >= 1000) return `${(wh / 1000).toFixed(2)} kWh`;
  return `${wh.toFixed(1)} Wh`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function fmtParams(params) {
  const parts = Object.entries(params || {}).map(([k, v]) => `${k}=${v}`);
  return parts.join(" ");
}

export function todayUTC() {
  return new Date().toISOString().slice(0, 10);
}

// A state or tier name as a coloured badge.
const TONE = {
  DONE: "ok", SENT: "info", PENDING: "muted", FAILED: "bad", REJECTED: "bad", EXPIRED: "bad",
  online: "ok", offline: "muted", leader: "info", allowed: "ok", blocked: "bad", changed: "warn",
  rules: "info", onnx: "warn", llm: "violet", operator: "muted", alert: "bad", acknowledged: "muted",
};

export function badge(text, tone) {
  return h("span", { class: `badge ${tone || TONE[text] || "muted"}` }, text);
}

// Toasts: kind "alert" (red, stays until closed), "error" and "info" (go away).
export function toast(kind, title, body, opts = {}) {
  const box = document.getElementById("toasts");
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "close" }, "×");
  const t = h(
    "div",
    { class: `toast toast-${kind}`, role: kind === "alert" ? "alert" : "status", dataset: opts.dataset || {} },
    close,
    h("strong", { class: "toast-title" }, title),
    body ? h("div", { class: "toast-body" }, body) : null,
    opts.link ? h("a", { href: opts.link, class: "toast-link" }, opts.linkText || "open") : null,
  );
  t.dataset.shownAtMs = String(Date.now());
  const remove = () => t.remove();
  close.addEventListener("click", remove);
  box.append(t); // the newest at the bottom, nearest the corner
  while (box.children.length > 6) box.firstElementChild.remove();
  if (kind !== "alert") setTimeout(remove, opts.ms || 6000);
  return t;
}

// Removes the alert toast of a decision (once it is acknowledged).
export function dropAlertToast(decisionId) {
  for (const t of document.querySelectorAll("#toasts .toast-alert")) {
    if (t.dataset.decisionId === decisionId) t.remove();
  }
}

export function errorToast(err, what) {
  toast("error", what || "Request failed", err && err.message ? err.message : String(err));
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// A table with a header row; rows are <tr> elements.
export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    { class: "grid", ...attrs },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows),
  );
}

// A "key: value" list.
export function facts(pairs) {
  return h(
    "dl",
    { class: "kv" },
    pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "—" : v)]),
  );
}
