// Decisions: every decision with its provenance (GET /v1/decisions, and
// GET /v1/decisions/{id} for one), and its explanation from the hub
// (POST /v1/ask "why did <device> switch off?").

import { api, query } from "../api.js";
import { badge, errorToast, facts, fmtParams, fmtTime, h, replace, table } from "../util.js";
import { answerBlock } from "./ask.js";

const SENSORS = { 0: "power_w", 1: "energy_wh", 2: "voltage_v", "-1": "anomaly score" }; // edge/sensors.py, hub/rules.py

// Fields shown in their own rows; everything else in the record goes to
// "More provenance" (model, sha256, prompt hash, raw output, ...).
const SHOWN = new Set([
  "decision_id", "device_id", "tier", "at_ms", "command_id", "alert", "acknowledged", "rule",
  "description", "facts", "trigger", "action", "guard", "latency_ms", "requested_by",
]);

export function question(d) {
  const off = d.action && d.action.name === "relay.set" && d.action.params && d.action.params.on === false;
  if (off) return `why did ${d.device_id} switch off?`;
  if (d.alert) return `why did ${d.device_id} get an alert?`;
  return `what happened to ${d.device_id}?`;
}

export async function mount(root, [selected]) {
  const devices = await api("GET", "/v1/devices");
  const filter = h(
    "select",
    { id: "decisions-device", "aria-label": "device" },
    h("option", { value: "" }, "all devices"),
    devices.map((d) => h("option", { value: d.device_id }, d.device_id)),
  );
  const list = h("div", { id: "decisions-list" });
  const detail = h("section", { class: "card detail", id: "decision-detail" });
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Decisions"), h("label", { class: "inline" }, "Device ", filter)),
    h("div", { class: "columns" }, h("section", { class: "card" }, list), detail),
  );

  let rows = [];
  function renderList() {
    replace(
      list,
      rows.length
        ? table(
            ["When", "Device", "Tier", "Rule or origin", "Command", "Guard"],
            rows.map((d) =>
              h(
                "tr",
                {
                  dataset: { decisionId: d.decision_id },
                  class: `clickable${d.decision_id === selected ? " selected" : ""}`,
                  onclick: () => {
                    location.hash = `#/decisions/${encodeURIComponent(d.decision_id)}`;
                  },
                },
                h("td", {}, fmtTime(d.at_ms)),
                h("td", {}, d.device_id),
                h("td", {}, badge(d.tier), d.alert ? [" ", badge("alert")] : null),
                h("td", {}, d.rule || (d.requested_by ? `by ${d.requested_by}` : "—")),
                h("td", { class: "mono small" }, d.command_id || "—"),
                h("td", {}, d.guard ? badge(d.guard.outcome) : "—"),
              ),
            ),
            { id: "decisions-table" },
          )
        : h("p", { class: "empty" }, "No decisions yet."),
    );
  }

  async function load() {
    rows = await api("GET", `/v1/decisions${query({ device: filter.value, limit: 200 })}`);
    renderList();
  }

  async function show(id) {
    if (!id) {
      replace(detail, h("h3", {}, "Provenance"), h("p", { class: "muted" }, "Choose a decision to see why it was made."));
      return;
    }
    const d = await api("GET", `/v1/decisions/${encodeURIComponent(id)}`);
    const answer = h("div", { id: "decision-answer" });
    const explain = h("button", { type: "button", id: "explain" }, `Ask: ${question(d)}`);
    explain.addEventListener("click", async () => {
      explain.disabled = true;
      try {
        const out = await api("POST", "/v1/ask", { question: question(d) });
        replace(answer, answerBlock(out));
      } catch (err) {
        errorToast(err, "The hub could not answer");
      } finally {
        explain.disabled = false;
      }
    });
    const t = d.trigger || {};
    const g = d.guard || null;
    const extra = Object.entries(d).filter(([k]) => !SHOWN.has(k));
    replace(
      detail,
      h("h3", {}, "Provenance ", badge(d.tier), d.alert ? [" ", badge("alert")] : null),
      facts([
        ["Decision", h("span", { class: "mono" }, d.decision_id)],
        ["Device", h("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_id)],
        ["When", fmtTime(d.at_ms)],
        d.rule ? ["Rule", d.rule] : null,
        d.description ? ["Description", d.description] : null,
        d.requested_by ? ["Requested by", d.requested_by] : null,
        ["Action", d.action ? `${d.action.name} ${fmtParams(d.action.params)}` : "none (alert or record only)"],
        ["Command", d.command_id ? h("a", { href: `#/commands/${encodeURIComponent(d.device_id)}`, class: "mono" }, d.command_id) : "—"],
        d.latency_ms !== undefined ? ["Decided in", `${d.latency_ms} ms`] : null,
        d.acknowledged ? ["Acknowledged", `by ${d.acknowledged.by} at ${fmtTime(d.acknowledged.at_ms)}`] : null,
      ]),
      d.facts && d.facts.length ? [h("h4", {}, "Facts"), h("ul", { class: "facts" }, d.facts.map((f) => h("li", {}, f)))] : null,
      d.trigger
        ? [
            h("h4", {}, "Trigger"),
            facts([
              ["Sensor", SENSORS[t.sensor] || t.sensor],
              ["Value", typeof t.value === "number" ? +t.value.toFixed(3) : t.value],
              ["Threshold", t.threshold],
              ["Reading time", fmtTime(t.ts_ms)],
              ["Condition held since", fmtTime(t.since_ms)],
            ]),
          ]
        : null,
      g
        ? [
            h("h4", {}, "Guard"),
            facts([
              ["Outcome", badge(g.outcome)],
              ["Reason", g.reason || "—"],
              g.detail ? ["Detail", g.detail] : null,
              g.changes && g.changes.length ? ["Changes", g.changes.join("; ")] : null,
              ["Origin", g.origin],
            ]),
          ]
        : null,
      extra.length
        ? [h("h4", {}, "More provenance"), facts(extra.map(([k, v]) => [k.replace(/_/g, " "), typeof v === "object" ? JSON.stringify(v) : String(v)]))]
        : null,
      h("details", {}, h("summary", {}, "The whole record (JSON)"), h("pre", { class: "json" }, JSON.stringify(d, null, 2))),
      h("div", { class: "actions" }, explain),
      answer,
    );
  }

  filter.addEventListener("change", () => load().catch((e) => errorToast(e, "Decisions")));
  await Promise.all([load(), show(selected).catch((e) => replace(detail, h("p", { class: "error" }, e.message)))]);

  return {
    refresh: load,
    event(type, ev) {
      if (type !== "decision") return;
      if (filter.value && ev.device_id !== filter.value) return;
      if (rows.some((d) => d.decision_id === ev.decision_id)) return;
      const { type: _t, ...rec } = ev;
      rows = [rec, ...rows].slice(0, 200);
      renderList();
    },
  };
}
