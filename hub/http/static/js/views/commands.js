// Commands: relay on and off buttons (operator and admin only), and the
// chosen device's ledger with every command's states and result
// (GET /v1/commands?device=), updated by "command" events.

import { api, canOperate, query } from "../api.js";
import { badge, errorToast, fmtParams, fmtTime, h, replace, table, toast } from "../util.js";

// The two relay buttons for a device; after(command) runs once it is sent.
export function relayButtons(deviceId, after) {
  const send = async (on, button) => {
    button.disabled = true;
    try {
      const cmd = await api("POST", "/v1/commands", {
        device: deviceId,
        action: "relay.set",
        params: { on },
      });
      toast("info", `Relay ${on ? "on" : "off"} sent to ${deviceId}`, `command ${cmd.command_id}: ${cmd.state}`);
      if (after) after(cmd);
    } catch (err) {
      errorToast(err, `Relay ${on ? "on" : "off"} for ${deviceId} refused`);
    } finally {
      button.disabled = false;
    }
  };
  const on = h("button", { type: "button", class: "primary", dataset: { action: "relay-on" } }, "Relay on");
  const off = h("button", { type: "button", class: "danger", dataset: { action: "relay-off" } }, "Relay off");
  on.addEventListener("click", () => send(true, on));
  off.addEventListener("click", () => send(false, off));
  return h("div", { class: "actions" }, on, off);
}

function stateHistory(c) {
  return c.history.map((x, i) => [
    i ? " → " : "",
    h("span", { class: "hist", title: `${fmtTime(x.at_ms)}${x.node ? ` on ${x.node}` : ""}` }, x.state),
    x.detail ? h("span", { class: "hist-detail" }, ` (${x.detail})`) : null,
  ]);
}

function result(c) {
  if (!c.result) return "—";
  const p = c.result.payload || c.result;
  const parts = [p.status];
  if (p.reason && p.reason !== "NONE") parts.push(p.reason);
  if (p.detail) parts.push(p.detail);
  if (p.executed_at_ms) parts.push(`at ${fmtTime(p.executed_at_ms)} (device clock)`);
  return parts.join(" · ");
}

export async function mount(root, [wanted]) {
  const devices = await api("GET", "/v1/devices");
  const select = h(
    "select",
    { id: "cmd-device", "aria-label": "device" },
    devices.map((d) => h("option", { value: d.device_id }, d.device_id)),
  );
  let device = wanted && devices.some((d) => d.device_id === wanted) ? wanted : devices[0] && devices[0].device_id;
  if (device) select.value = device;
  const actionsBox = h("div", { id: "cmd-actions" });
  const body = h("div", { id: "cmd-body" });
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Commands"), h("label", { class: "inline" }, "Device ", select), h("span", { class: "spacer" }), actionsBox),
    h("section", { class: "card" }, body),
  );
  if (!device) {
    replace(body, h("p", { class: "empty" }, "No devices yet."));
    return {};
  }

  const rows = new Map(); // command_id -> ledger record

  function render() {
    const list = [...rows.values()].sort((a, b) => b.issued_at_ms - a.issued_at_ms);
    replace(
      body,
      list.length
        ? table(
            ["Issued", "Command", "Action", "State", "History", "Result", "Deadline"],
            list.map((c) =>
              h(
                "tr",
                { dataset: { commandId: c.command_id, state: c.state } },
                h("td", {}, fmtTime(c.issued_at_ms)),
                h("td", { class: "mono" }, c.command_id, h("div", { class: "muted small" }, `seq ${c.seq} · term ${c.term}`)),
                h("td", {}, `${c.action} ${fmtParams(c.params)}`),
                h("td", { class: "state" }, badge(c.state)),
                h("td", { class: "small" }, stateHistory(c)),
                h("td", { class: "small" }, result(c)),
                h("td", { class: "small" }, fmtTime(c.deadline_ms)),
              ),
            ),
            { id: "commands-table" },
          )
        : h("p", { class: "muted" }, `No commands for ${device} yet.`),
    );
  }

  async function load() {
    const list = await api("GET", `/v1/commands${query({ device })}`);
    rows.clear();
    for (const c of list) rows.set(c.command_id, c);
    render();
  }

  function showActions() {
    replace(actionsBox, canOperate() ? relayButtons(device, (cmd) => {
      rows.set(cmd.command_id, cmd);
      render();
    }) : null);
  }

  select.addEventListener("change", () => {
    device = select.value;
    window.history.replaceState(null, "", `#/commands/${encodeURIComponent(device)}`);
    showActions();
    load().catch((e) => errorToast(e, "Commands"));
  });
  showActions();
  await load();

  return {
    refresh: load,
    event(type, ev) {
      if (type !== "command" || ev.device_id !== device) return;
      const old = rows.get(ev.command_id);
      // Events can arrive out of order across entries: keep the longer history.
      if (old && old.history.length > ev.history.length) return;
      const { type: _t, ...rec } = ev;
      rows.set(ev.command_id, rec);
      render();
    },
  };
}
