// Devices: online or offline with last seen, the latest power reading, and
// buffer fill, free heap and firmware from each device's last status
// (GET /v1/devices, then GET /v1/devices/{id} for presence and last_status),
// kept current by reading, status and presence events.
//
// A device's status message reaches the hub node whose broker it is
// connected to; another node shows "—" until the device reports to it.

import { api } from "../api.js";
import { badge, fmtAgo, fmtBytes, fmtW, h, replace, table } from "../util.js";

const POWER_W = 0; // edge/sensors.py
const RELOAD_MS = 30000;

export async function mount(root) {
  const summary = h("p", { class: "muted", id: "devices-summary" });
  const body = h("div", { id: "devices-body" });
  root.append(h("div", { class: "view-head" }, h("h2", {}, "Devices"), summary), h("section", { class: "card" }, body));

  const state = new Map(); // id -> {row fields}

  async function load() {
    const list = await api("GET", "/v1/devices");
    const details = await inBatches(list, 8, (d) =>
      api("GET", `/v1/devices/${encodeURIComponent(d.device_id)}`).catch(() => null),
    );
    state.clear();
    list.forEach((d, i) => {
      const full = details[i] || {};
      const st = full.last_status ? full.last_status.payload || {} : null;
      const pres = full.presence || null;
      const seen = Math.max(
        full.last_status ? Math.round(full.last_status.received_at * 1000) : 0,
        pres && pres.state === "ONLINE" ? pres.at_ms : 0,
      );
      state.set(d.device_id, {
        id: d.device_id,
        online: d.online,
        node: d.node,
        limit: d.limit_w,
        owner: d.owner,
        watermark: d.watermark,
        status: st,
        seen,
        power: null,
      });
    });
    render();
  }

  function render() {
    const rows = [...state.values()].map((d) => {
      const st = d.status;
      const fill = st ? st.buffer_fill_permille : null;
      return h(
        "tr",
        { dataset: { device: d.id }, class: d.online ? "" : "dim" },
        h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}`, class: "device-link" }, d.id)),
        h("td", { class: "device-state" }, d.online ? badge("online") : badge("offline")),
        h("td", {}, d.node || "—"),
        h("td", { class: "last-seen", title: d.seen ? new Date(d.seen).toString() : "" }, fmtAgo(d.seen)),
        h("td", { class: "num power" }, fmtW(d.power)),
        h(
          "td",
          { class: "buffer" },
          fill === null || fill === undefined
            ? "—"
            : [h("meter", { min: 0, max: 1000, high: 800, optimum: 0, value: fill }), ` ${(fill / 10).toFixed(1)} %`],
        ),
        h("td", { class: "num" }, st ? fmtBytes(st.free_heap) : "—"),
        h("td", { class: "mono" }, st ? st.firmware || "—" : "—"),
        h("td", { class: "num" }, d.watermark),
        h("td", { class: "num" }, d.limit ? fmtW(d.limit) : "—"),
      );
    });
    const online = [...state.values()].filter((d) => d.online).length;
    summary.textContent = `${state.size} device${state.size === 1 ? "" : "s"}, ${online} online`;
    replace(
      body,
      state.size
        ? table(
            ["Device", "State", "Node", "Last seen", "Power", "Buffer fill", "Free heap", "Firmware", "Readings", "Limit"],
            rows,
            { id: "devices-table" },
          )
        : h("p", { class: "empty" }, "No devices yet. Register one with `aiot device add` or POST /v1/devices."),
    );
  }

  let dirty = false;
  const redraw = () => {
    if (dirty) return;
    dirty = true;
    setTimeout(() => {
      dirty = false;
      render();
    }, 250);
  };

  await load();
  const ago = setInterval(render, 5000);
  const reload = setInterval(() => load().catch(() => {}), RELOAD_MS);

  return {
    refresh: load,
    event(type, ev) {
      const d = state.get(ev.device_id);
      if (!d) {
        if (type === "presence") load().catch(() => {}); // a new device
        return;
      }
      if (type === "reading") {
        d.seen = Date.now();
        d.watermark = ev.watermark;
        for (const [, sensor, value] of ev.readings) if (sensor === POWER_W) d.power = value;
      } else if (type === "status") {
        d.status = ev.payload || null;
        d.seen = Date.now();
        if (d.status && d.status.state) d.online = d.status.state === "ONLINE";
      } else if (type === "presence") {
        d.online = ev.online;
        d.node = ev.node;
        if (ev.online) d.seen = Date.now();
      } else {
        return;
      }
      redraw();
    },
    dispose() {
      clearInterval(ago);
      clearInterval(reload);
    },
  };
}

// fn over items, at most n at a time; results in order.
export async function inBatches(items, n, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}
