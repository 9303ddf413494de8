// Alerts: the alert decisions (GET /v1/alerts), newest first, and
// acknowledgement (POST /v1/alerts/{id}/ack, operator and admin only).
// The red toast for a new alert is the app's (app.js), on every view.

import { api, canOperate, query } from "../api.js";
import { badge, dropAlertToast, errorToast, fmtTime, h, replace, table } from "../util.js";

export async function mount(root, _args, app) {
  const onlyOpen = h("input", { type: "checkbox", id: "alerts-open" });
  const body = h("div", { id: "alerts-body" });
  root.append(
    h(
      "div",
      { class: "view-head" },
      h("h2", {}, "Alerts"),
      h("label", { class: "inline" }, onlyOpen, " unacknowledged only"),
    ),
    h("section", { class: "card" }, body),
  );

  async function ack(d, button) {
    button.disabled = true;
    try {
      await api("POST", `/v1/alerts/${encodeURIComponent(d.decision_id)}/ack`);
      dropAlertToast(d.decision_id);
      await load();
      app.refreshAlertCount();
    } catch (err) {
      button.disabled = false;
      errorToast(err, "Acknowledge refused");
    }
  }

  async function load() {
    const rows = await api("GET", `/v1/alerts${query({ limit: 200, unacknowledged: onlyOpen.checked ? "true" : "" })}`);
    replace(
      body,
      rows.length
        ? table(
            ["When", "Device", "What happened", "Action", "State", ""],
            rows.map((d) => {
              const done = d.acknowledged;
              let button = null;
              if (!done && canOperate()) {
                button = h("button", { type: "button", dataset: { action: "ack" } }, "Acknowledge");
                button.addEventListener("click", () => ack(d, button));
              }
              return h(
                "tr",
                { dataset: { decisionId: d.decision_id }, class: done ? "dim" : "alert-row" },
                h("td", {}, h("a", { href: `#/decisions/${encodeURIComponent(d.decision_id)}` }, fmtTime(d.at_ms))),
                h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_id)),
                h(
                  "td",
                  {},
                  h("div", {}, d.description || d.rule || "—"),
                  (d.facts || []).length ? h("div", { class: "muted small" }, d.facts.join("; ")) : null,
                ),
                h(
                  "td",
                  {},
                  d.action ? `${d.action.name} ${Object.entries(d.action.params || {}).map(([k, v]) => `${k}=${v}`).join(" ")}` : "alert only",
                  d.guard && d.guard.outcome !== "allowed" ? [" ", badge(d.guard.outcome)] : null,
                ),
                h(
                  "td",
                  { class: "small" },
                  done ? [badge("acknowledged"), ` by ${done.by} at ${fmtTime(done.at_ms)}`] : badge("alert"),
                ),
                h("td", {}, button),
              );
            }),
            { id: "alerts-table" },
          )
        : h("p", { class: "empty" }, onlyOpen.checked ? "No unacknowledged alerts." : "No alerts yet."),
    );
  }

  onlyOpen.addEventListener("change", () => load().catch((e) => errorToast(e, "Alerts")));
  await load();
  return {
    refresh: load,
    event(type) {
      if (type === "alert") load().catch(() => {});
    },
  };
}
