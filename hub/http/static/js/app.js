// The dashboard: login, the header, the router, the live stream and the
// alert toasts. Each view is a module in views/ with
//   mount(root, args) -> {event(type, data), refresh(), dispose()}
// (all three optional); the app passes every stream event to the view on
// screen and asks it to refresh after the stream reconnects or lags.

import {
  api, clearSession, loadSession, saveSession, session, setUnauthorizedHandler, Stream,
} from "./api.js";
import { clear, h, toast } from "./util.js";
import * as alerts from "./views/alerts.js";
import * as ask from "./views/ask.js";
import * as cluster from "./views/cluster.js";
import * as commands from "./views/commands.js";
import * as decisions from "./views/decisions.js";
import * as device from "./views/device.js";
import * as devices from "./views/devices.js";
import * as models from "./views/models.js";
import * as overview from "./views/overview.js";
import * as chat from "./views/chat.js";
import * as inbox from "./views/inbox.js";
import * as invites from "./views/invite.js";

const VIEWS = { overview, cluster, devices, device, alerts, commands, decisions, models, ask };
Object.assign(VIEWS, { chat, inbox, invites }); // conversations and invitations
const DEFAULT_ROUTE = "#/devices";
const HOME_ROUTE = "#/overview"; // a viewer's first page

const $ = (id) => document.getElementById(id);

let current = null; // {name, handle}
let stream = null;
let expiryTimer = null;
let alertTimer = null;
const toasted = new Set(); // decision ids already shown as a toast

// -- login and logout --------------------------------------------------------

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  const err = $("login-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("login-password").value = "";
  $("login-user").focus();
}

async function login(ev) {
  ev.preventDefault();
  const button = $("login-submit");
  button.disabled = true;
  try {
    const out = await api(
      "POST",
      "/v1/login",
      { username: $("login-user").value.trim(), password: $("login-password").value },
      { anonymous: true },
    );
    saveSession({
      token: out.token,
      name: out.name,
      role: out.role,
      devices: out.devices,
      expiresMs: out.expires_ms,
    });
    await enter();
  } catch (err) {
    showLogin(err.status === 401 ? "Wrong user name or password." : err.message);
  } finally {
    button.disabled = false;
  }
}

function logout(message) {
  if (stream) stream.stop();
  stream = null;
  clearTimeout(expiryTimer);
  clearInterval(alertTimer);
  unmount();
  clearSession();
  clear($("toasts"));
  toasted.clear();
  showLogin(message);
}

// After a login, or on load with a session from this tab: check the token,
// learn the role, show the app and open the stream.
async function enter() {
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch (err) {
    if (err.status !== 401) showLogin(err.message);
    return;
  }
  saveSession({ name: me.name, role: me.role, devices: me.devices });
  document.body.dataset.role = me.role;
  replaceWho();
  $("login").hidden = true;
  $("app").hidden = false;
  clearTimeout(expiryTimer);
  if (session.expiresMs) {
    const ms = session.expiresMs - Date.now();
    // setTimeout's limit is 2^31-1 ms; a longer session is checked by the API.
    if (ms < 2 ** 31 - 1) expiryTimer = setTimeout(() => logout("Your session expired."), ms);
  }
  stream = new Stream({ onEvent, onState: liveState });
  stream.start();
  refreshAlertCount();
  for (const a of document.querySelectorAll("#nav a.admin-only")) a.hidden = me.role !== "admin";
  inbox.refreshInboxCount();
  clearInterval(alertTimer);
  alertTimer = setInterval(refreshAlertCount, 30000); // others acknowledge too
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    location.hash = me.role === "viewer" ? HOME_ROUTE : DEFAULT_ROUTE;
  } else route();
}

function replaceWho() {
  const who = $("who");
  clear(who);
  who.append(h("strong", {}, session.name), " ", h("span", { class: "badge muted", id: "role" }, session.role));
}

function liveState(state) {
  const el = $("live");
  el.dataset.state = state;
  el.textContent = { live: "live", connecting: "connecting", reconnecting: "reconnecting", stopped: "off" }[state];
  // Whatever happened before the stream was (re)connected came as no event:
  // a view that has loaded reads it again.
  if (state === "live" && current && current.ready && current.handle.refresh) {
    current.handle.refresh().catch(() => {});
    refreshAlertCount();
  }
}

// -- the stream --------------------------------------------------------------

function onEvent(type, data) {
  if (type === "alert") alertToast(data);
  if (type === "lagged") {
    toast("info", "Catching up", `${data.dropped} live events were dropped; reloading the view.`);
    if (current && current.handle.refresh) current.handle.refresh().catch(() => {});
    return;
  }
  if (type === "thread") inbox.onThreadEvent(data); // the inbox badge
  if (current && current.handle.event) current.handle.event(type, data);
}

function alertToast(d) {
  if (d.kind && !d.decision_id) return nodeAlertToast(d);
  if (!d.decision_id || toasted.has(d.decision_id)) return;
  toasted.add(d.decision_id);
  const facts = Array.isArray(d.facts) ? d.facts : [];
  const over = facts.some((f) => /over the limit/i.test(f)) || /over.*limit|overconsum/i.test(d.description || "");
  const title = over ? `Overconsumption: ${d.device_id}` : `Alert: ${d.device_id}`;
  const action = d.action ? ` → ${d.action.name} ${Object.entries(d.action.params || {}).map(([k, v]) => `${k}=${v}`).join(" ")}` : "";
  const body = (d.description || facts.join("; ") || d.rule || "") + action;
  toast("alert", title, body, {
    link: `#/alerts`,
    linkText: "see alerts",
    dataset: { decisionId: d.decision_id, device: d.device_id },
  });
  refreshAlertCount();
}

// A node's own alert (kind "store": its store filling up; "cloud_export":
// the site's export to the cloud falling behind): raised, then cleared.
const NODE_ALERTS = { store: "Store", cloud_export: "Cloud export" };

function nodeAlertToast(d) {
  const what = NODE_ALERTS[d.kind] || d.kind;
  if (d.active) toast("alert", `${what} alert on ${d.node}`, d.reason || "", { link: "#/cluster", linkText: "see the cluster", dataset: { kind: d.kind, node: d.node } });
  else toast("info", `${what} alert cleared on ${d.node}`, "", { dataset: { kind: d.kind, node: d.node } });
}

export async function refreshAlertCount() {
  try {
    const rows = await api("GET", "/v1/alerts?unacknowledged=true&limit=1000");
    const el = $("alert-count");
    el.hidden = rows.length === 0;
    el.textContent = rows.length >= 1000 ? "999+" : String(rows.length);
  } catch (_) {
    // the count is a hint; the alerts view shows errors
  }
}

// -- routing -----------------------------------------------------------------

function unmount() {
  if (current && current.handle.dispose) {
    try {
      current.handle.dispose();
    } catch (err) {
      console.error(err);
    }
  }
  current = null;
  clear($("view"));
}

async function route() {
  if (!session.token) return;
  const parts = (location.hash || DEFAULT_ROUTE).replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = parts[0] || "devices";
  const view = VIEWS[name];
  if (!view) {
    location.hash = DEFAULT_ROUTE;
    return;
  }
  unmount();
  for (const a of document.querySelectorAll("#nav a")) {
    const active = a.dataset.view === name || (name === "device" && a.dataset.view === "devices");
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = h("div", { class: `view view-${name}` });
  $("view").append(root);
  const handle = {};
  current = { name, handle };
  try {
    Object.assign(handle, (await view.mount(root, parts.slice(1), { refreshAlertCount })) || {});
    if (current && current.handle === handle) current.ready = true;
    root.dataset.ready = "1"; // loaded: what the browser test waits for
  } catch (err) {
    root.append(h("p", { class: "error" }, `This view could not load: ${err.message}`));
  }
  // A newer route may have replaced this one while it loaded.
  if ((!current || current.handle !== handle) && handle.dispose) handle.dispose();
}

// -- start -------------------------------------------------------------------

async function start() {
  setUnauthorizedHandler((why) => logout(`Please log in again (${why}).`));
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  // The node's name, for the login card and the header. Nothing waits for
  // it: a node slow to answer must not keep the login from showing.
  api("GET", "/v1/health", undefined, { anonymous: true })
    .then((health) => {
      $("node-id").textContent = health.node_id;
      $("login-node").textContent = `Sign in to hub node ${health.node_id}.`;
      document.title = `aiot hub ${health.node_id}`;
    })
    .catch(() => {
      // the login works without it
    });
  // An invitation's link (#/invite/{token}): its page comes before any login.
  const invited = /^#\/invite\/([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (invited) {
    await invites.acceptPage(invited[1], async (out) => {
      saveSession({ token: out.token, name: out.name, role: out.role, devices: out.devices, expiresMs: out.expires_ms });
      location.hash = "#/chat";
      await enter();
    });
    return;
  }
  if (loadSession()) await enter();
  else showLogin();
}

start();
