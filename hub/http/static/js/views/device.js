// One device: a live power chart (the last minutes from
// GET /v1/devices/{id}/readings?sensor=0, then every "reading" event),
// hourly energy bars for a chosen day (GET /v1/devices/{id}/energy) and,
// beside them, daily bars for the week ending on that day with its cost
// (GET /v1/devices/{id}/week, days of the tariff's time zone), its last
// status, and its recent commands and decisions; relay buttons for
// operators and admins.

import { api, canOperate, query } from "../api.js";
import { BarChart, LineChart } from "../charts.js";
import {
  badge, errorToast, facts, fmtAgo, fmtBytes, fmtParams, fmtTime, fmtW, fmtWh, h, replace, table,
  todayUTC,
} from "../util.js";
import { relayButtons } from "./commands.js";
import { fmtMoney } from "./overview.js";

const POWER_W = 0; // edge/sensors.py
const WINDOW_MS = 5 * 60000;

export async function mount(root, [id]) {
  if (!id) {
    location.hash = "#/devices";
    return {};
  }
  const dev = await api("GET", `/v1/devices/${encodeURIComponent(id)}`);

  const stateBadge = h("span", { id: "device-state" });
  const nodeText = h("span", { class: "muted" });
  const powerNow = h("span", { class: "big", id: "power-now" }, "—");
  const pointsText = h("span", { class: "muted small", id: "power-points" }, "0 points");
  const canvas = h("canvas", { id: "power-chart", class: "chart", "aria-label": `power of ${id}`, role: "img" });
  const statusBox = h("div", { id: "device-status" });
  const dayInput = h("input", { type: "date", id: "energy-day", value: todayUTC(), max: todayUTC() });
  const energyTotal = h("span", { class: "muted", id: "energy-total" });
  const bars = h("canvas", { id: "energy-chart", class: "chart short", role: "img", "aria-label": `energy of ${id} per hour` });
  const weekTotal = h("span", { class: "muted", id: "week-total" });
  const weekBars = h("canvas", { id: "week-chart", class: "chart short", role: "img", "aria-label": `energy of ${id} per day` });
  const cmdBox = h("div", { id: "device-commands" });
  const decBox = h("div", { id: "device-decisions" });

  const actions = canOperate()
    ? relayButtons(id, () => loadCommands().catch(() => {}))
    : null;

  root.append(
    h(
      "div",
      { class: "view-head" },
      h("h2", {}, h("a", { href: "#/devices", class: "muted" }, "Devices"), " / ", id),
      stateBadge,
      nodeText,
      h("span", { class: "spacer" }),
      actions,
    ),
    h(
      "div",
      { class: "columns wide-left" },
      h(
        "section",
        { class: "card" },
        h("div", { class: "card-head" }, h("h3", {}, "Power, live"), powerNow, pointsText),
        canvas,
        h("p", { class: "muted small" }, "The last 5 minutes of readings, device time; the dashed line is the device's limit."),
      ),
      h("section", { class: "card" }, h("h3", {}, "Last status"), statusBox),
    ),
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card" },
        h(
          "div",
          { class: "card-head" },
          h("h3", {}, "Energy by hour"),
          h("label", { class: "inline" }, "Day (UTC) ", dayInput),
          energyTotal,
        ),
        bars,
      ),
      h(
        "section",
        { class: "card" },
        h("div", { class: "card-head" }, h("h3", {}, "The week to that day"), weekTotal),
        weekBars,
      ),
    ),
    h(
      "div",
      { class: "columns" },
      h("section", { class: "card" }, h("h3", {}, h("a", { href: `#/commands/${encodeURIComponent(id)}` }, "Commands")), cmdBox),
      h("section", { class: "card" }, h("h3", {}, h("a", { href: `#/decisions` }, "Decisions")), decBox),
    ),
  );

  let online = dev.presence ? dev.presence.state === "ONLINE" : false;
  let node = dev.presence ? dev.presence.node : null;
  function showState() {
    replace(stateBadge, online ? badge("online") : badge("offline"));
    nodeText.textContent = online && node ? `on ${node}` : "";
  }
  showState();

  function showStatus(last, receivedMs) {
    if (!last) {
      replace(statusBox, h("p", { class: "muted" }, "No status from this device on this node yet (a device reports its status to the node it is connected to)."));
      return;
    }
    replace(
      statusBox,
      facts([
        ["Firmware", last.firmware || "—"],
        ["Buffer fill", [h("meter", { min: 0, max: 1000, high: 800, optimum: 0, value: last.buffer_fill_permille }), ` ${(last.buffer_fill_permille / 10).toFixed(1)} %`]],
        ["Free heap", fmtBytes(last.free_heap)],
        ["Unacknowledged", last.unacked],
        ["Dropped", last.dropped],
        ["Reconnects", last.reconnects],
        ["Uptime", `${last.uptime_s} s`],
        ["Broker in its list", `#${last.hub_index + 1}`],
        ["Limit", dev.limit_w ? fmtW(dev.limit_w) : "—"],
        ["Owner", dev.owner || "—"],
        ["Readings stored", dev.watermark],
        ["Reported", fmtAgo(receivedMs)],
      ]),
    );
  }
  showStatus(
    dev.last_status ? dev.last_status.payload : null,
    dev.last_status ? Math.round(dev.last_status.received_at * 1000) : 0,
  );

  // -- the live chart --
  const chart = new LineChart(canvas, { windowMs: WINDOW_MS, limit: dev.limit_w });
  function updatePower() {
    const last = chart.last();
    powerNow.textContent = last ? fmtW(last[1]) : "—";
    powerNow.classList.toggle("over", Boolean(last && dev.limit_w && last[1] > dev.limit_w));
    pointsText.textContent = `${chart.received} points`;
  }
  async function loadWindow() {
    let from = Date.now() - WINDOW_MS;
    for (let page = 0; page < 10; page += 1) {
      const out = await api(
        "GET",
        `/v1/devices/${encodeURIComponent(id)}/readings${query({ from_ms: from, sensor: POWER_W, limit: 20000 })}`,
      );
      chart.add(out.readings.map((r) => [r.ts_ms, r.value]));
      if (!out.truncated || !out.readings.length) break;
      from = out.readings[out.readings.length - 1].ts_ms + 1;
    }
    updatePower();
  }

  // -- energy --
  const energy = new BarChart(bars);
  async function loadEnergy() {
    const day = dayInput.value || todayUTC();
    const out = await api("GET", `/v1/devices/${encodeURIComponent(id)}/energy${query({ day })}`);
    const total = out.hours.reduce((s, x) => s + x.wh, 0);
    energy.set(
      out.hours.map((x) => {
        const hh = new Date(x.start_ms).getUTCHours();
        return { label: String(hh).padStart(2, "0"), value: x.wh, title: `${String(hh).padStart(2, "0")}:00 UTC: ${fmtWh(x.wh)}` };
      }),
    );
    energyTotal.textContent = `total ${fmtWh(total)}`;
  }
  dayInput.addEventListener("change", () => {
    loadEnergy().catch((e) => errorToast(e, "Energy"));
    loadWeek().catch((e) => errorToast(e, "Week"));
  });

  // -- the week: seven local days of the tariff's time zone, with their cost --
  const week = new BarChart(weekBars);
  async function loadWeek() {
    const day = dayInput.value || todayUTC();
    const out = await api("GET", `/v1/devices/${encodeURIComponent(id)}/week${query({ day })}`);
    const names = ["Su", "Mo", "Tu", "We", "Th", "Fr", "Sa"];
    week.set(
      out.days.map((x) => {
        const d = new Date(`${x.day}T12:00:00Z`);
        const label = `${names[d.getUTCDay()]} ${x.day.slice(8)}`;
        const hours = x.hours === 24 ? "" : ` (${x.hours} h)`;
        return { label, value: x.wh, title: `${x.day}${hours}: ${fmtWh(x.wh)}, ${fmtMoney(x.cost, out.currency)}` };
      }),
    );
    weekBars.dataset.wh = String(out.wh);
    weekTotal.textContent = `total ${fmtWh(out.wh)} · ${fmtMoney(out.cost, out.currency)} · days in ${out.timezone}`;
  }

  // -- commands and decisions --
  async function loadCommands() {
    const rows = await api("GET", `/v1/commands${query({ device: id })}`);
    rows.sort((a, b) => b.issued_at_ms - a.issued_at_ms);
    replace(
      cmdBox,
      rows.length
        ? table(
            ["Issued", "Action", "State"],
            rows.slice(0, 8).map((c) =>
              h("tr", { dataset: { commandId: c.command_id } }, h("td", {}, fmtTime(c.issued_at_ms)), h("td", {}, `${c.action} ${fmtParams(c.params)}`), h("td", { class: "state" }, badge(c.state))),
            ),
          )
        : h("p", { class: "muted" }, "No commands yet."),
    );
  }
  async function loadDecisions() {
    const rows = await api("GET", `/v1/decisions${query({ device: id, limit: 8 })}`);
    replace(
      decBox,
      rows.length
        ? table(
            ["When", "Tier", "Why"],
            rows.map((d) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/decisions/${encodeURIComponent(d.decision_id)}` }, fmtTime(d.at_ms))),
                h("td", {}, badge(d.tier), d.alert ? [" ", badge("alert")] : null),
                h("td", {}, d.description || d.rule || (d.facts || [])[0] || "—"),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No decisions yet."),
    );
  }

  async function refresh() {
    await Promise.all([loadWindow(), loadEnergy(), loadWeek(), loadCommands(), loadDecisions()]);
  }
  await refresh();
  const energyTimer = setInterval(() => {
    if (dayInput.value === todayUTC()) {
      loadEnergy().catch(() => {});
      loadWeek().catch(() => {});
    }
  }, 60000);

  return {
    refresh,
    event(type, ev) {
      if (ev.device_id !== id) return;
      if (type === "reading") {
        const pts = [];
        for (const [ts, sensor, value] of ev.readings) if (sensor === POWER_W) pts.push([ts, value]);
        chart.add(pts);
        updatePower();
        dev.watermark = ev.watermark;
      } else if (type === "status") {
        if (ev.payload) {
          online = ev.payload.state === "ONLINE";
          showState();
          showStatus(ev.payload, Date.now());
        }
      } else if (type === "presence") {
        online = ev.online;
        node = ev.node;
        showState();
      } else if (type === "command") {
        loadCommands().catch(() => {});
      } else if (type === "decision") {
        loadDecisions().catch(() => {});
      }
    },
    dispose() {
      chart.destroy();
      energy.destroy();
      week.destroy();
      clearInterval(energyTimer);
    },
  };
}
