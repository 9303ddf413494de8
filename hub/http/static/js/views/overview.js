// Home: the household's overview (GET /v1/overview): power now, the day's
// energy and cost for each of the user's devices with the top consumers, the
// day before, and the open alerts. The day is the local day of the hub's
// tariff; every figure is the API's, shown as it comes (`aiot overview
// --json` prints the same answer). The raw numbers ride along in data-*
// attributes, which the browser test compares with the API.

import { api, query } from "../api.js";
import { BarChart } from "../charts.js";
import { errorToast, fmtTime, fmtW, fmtWh, h, replace, table } from "../util.js";

const TOP_BARS = 5;

export function fmtMoney(cost, currency) {
  if (cost === null || cost === undefined || !Number.isFinite(cost) || !currency) return "—";
  // Cents, or four decimals for less than one unit (a small device's day).
  return `${cost.toFixed(cost !== 0 && Math.abs(cost) < 1 ? 4 : 2)} ${currency}`;
}

function change(now, before) {
  if (!before) return "";
  const pct = ((now - before) / before) * 100;
  return `${pct >= 0 ? "+" : "−"}${Math.abs(pct).toFixed(0)} % on the day before`;
}

function stat(id, label, value, sub, tone) {
  return h(
    "div",
    { class: `stat ${tone || ""}`, id },
    h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value" }, value),
    sub ? h("div", { class: "muted small" }, sub) : null,
  );
}

function tariffText(out) {
  if (!out.tariff) return `No tariff configured: energy only (days in ${out.timezone}).`;
  const parts = out.tariff.periods.map((p) => `${p.hours} ${p.price_per_kwh} ${out.currency}/kWh`);
  return `Tariff: ${parts.join(", ")} (${out.timezone})`;
}

export async function mount(root) {
  const dayInput = h("input", { type: "date", id: "overview-day" });
  const tariffLine = h("span", { class: "muted small", id: "overview-tariff" });
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const devBox = h("div", { id: "overview-devices" });
  const alertBox = h("div", { id: "overview-alerts" });
  const topCanvas = h("canvas", { id: "overview-top", class: "chart short", role: "img", "aria-label": "top consumers" });
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Home"), h("label", { class: "inline" }, "Day ", dayInput), tariffLine),
    cards,
    h(
      "div",
      { class: "columns wide-left" },
      h("section", { class: "card" }, h("h3", {}, "Devices"), devBox),
      h(
        "div",
        { class: "view" },
        h("section", { class: "card" }, h("h3", {}, "Top consumers"), topCanvas),
        h("section", { class: "card" }, h("h3", {}, h("a", { href: "#/alerts" }, "Open alerts")), alertBox),
      ),
    ),
  );
  const top = new BarChart(topCanvas);
  let today = null; // the tariff's local day now, from the API's default

  function showCards(out) {
    const which = out.today ? "Today" : out.day;
    const fresh = out.devices.filter((d) => d.power_fresh).length;
    const powerSub = out.stale.length
      ? `${fresh} of ${out.devices.length} reporting; stale: ${out.stale.join(", ")}`
      : `${fresh} of ${out.devices.length} reporting`;
    replace(
      cards,
      stat("overview-power", "Power now", fmtW(out.power_w_now), powerSub),
      stat("overview-today", which, fmtWh(out.today_wh), fmtMoney(out.today_cost, out.currency)),
      stat(
        "overview-yesterday",
        out.today ? "Yesterday" : "The day before",
        fmtWh(out.yesterday_wh),
        [fmtMoney(out.yesterday_cost, out.currency), " · ", change(out.today_wh, out.yesterday_wh) || "—"],
      ),
      stat("overview-open-alerts", "Open alerts", String(out.open_alerts), null, out.open_alerts ? "bad" : ""),
    );
    const data = {
      powerWNow: out.power_w_now, todayWh: out.today_wh, todayCost: out.today_cost,
      yesterdayWh: out.yesterday_wh, yesterdayCost: out.yesterday_cost, openAlerts: out.open_alerts,
      day: out.day, hours: out.hours,
    };
    for (const [k, v] of Object.entries(data)) cards.dataset[k] = v === null ? "" : String(v);
  }

  function showDevices(out) {
    replace(
      devBox,
      out.devices.length
        ? table(
            ["Device", "Power now", out.today ? "Today" : out.day, "Cost", "Day before", "Share"],
            out.devices.map((d) =>
              h(
                "tr",
                { dataset: { device: d.device_id, wh: d.wh, cost: d.cost === null ? "" : d.cost } },
                h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_id)),
                h(
                  "td",
                  { class: "num", title: d.power_at_ms ? `read ${fmtTime(d.power_at_ms)}` : "" },
                  d.power_w === null ? "—" : fmtW(d.power_w),
                  d.power_w !== null && !d.power_fresh ? h("span", { class: "muted small" }, " stale") : null,
                ),
                h("td", { class: "num" }, fmtWh(d.wh)),
                h("td", { class: "num" }, fmtMoney(d.cost, out.currency)),
                h("td", { class: "num" }, fmtWh(d.yesterday_wh)),
                h("td", { class: "num" }, d.share === null ? "—" : `${(d.share * 100).toFixed(0)} %`),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No devices to show."),
    );
    top.set(
      out.devices
        .filter((d) => d.wh > 0)
        .slice(0, TOP_BARS)
        .map((d) => ({ label: d.device_id, value: d.wh, title: `${d.device_id}: ${fmtWh(d.wh)}, ${fmtMoney(d.cost, out.currency)}` })),
    );
  }

  function showAlerts(out) {
    replace(
      alertBox,
      out.alerts.length
        ? table(
            ["When", "Device", "What happened"],
            out.alerts.map((a) =>
              h(
                "tr",
                { class: "alert-row", dataset: { decisionId: a.decision_id } },
                h("td", {}, h("a", { href: `#/decisions/${encodeURIComponent(a.decision_id)}` }, fmtTime(a.at_ms))),
                h("td", {}, a.device_id),
                h("td", {}, a.description || (a.facts || [])[0] || a.rule || "—"),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No open alerts."),
      out.open_alerts > out.alerts.length ? h("p", { class: "muted small" }, `and ${out.open_alerts - out.alerts.length} more`) : null,
    );
  }

  async function load() {
    const day = dayInput.value && dayInput.value !== today ? dayInput.value : "";
    const out = await api("GET", `/v1/overview${query({ day })}`);
    if (!day && out.today) {
      today = out.day;
      dayInput.max = today;
      if (!dayInput.value) dayInput.value = today;
    }
    tariffLine.textContent = `${tariffText(out)} · ${out.hours} h day · as of ${fmtTime(out.now_ms)}`;
    showCards(out);
    showDevices(out);
    showAlerts(out);
    root.dataset.day = out.day;
  }

  dayInput.addEventListener("change", () => load().catch((e) => errorToast(e, "Overview")));
  await load();
  let last = Date.now();
  const again = () => {
    last = Date.now();
    load().catch(() => {});
  };
  const timer = setInterval(again, 30000);

  return {
    refresh: load,
    event(type) {
      // Readings come several times a second: reload at most every 10 s.
      if (type === "reading" && Date.now() - last > 10000) again();
      else if (type === "decision" || type === "alert") again();
    },
    dispose() {
      clearInterval(timer);
      top.destroy();
    },
  };
}
