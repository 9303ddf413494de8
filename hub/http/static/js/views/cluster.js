// Cluster: the replicated node table, the leader and term (GET /v1/cluster),
// and this node's own Raft, broker and ingest figures (GET /v1/status).
// Another node's figures are on its own dashboard (linked from the table):
// the page talks only to the node that served it.

import { api } from "../api.js";
import { badge, facts, fmtAgo, h, replace, table } from "../util.js";

const REFRESH_MS = 3000;

function nodeUrl(http) {
  // "host:port"; a wildcard bind is reached on the host this page came from.
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(http || "");
  if (!m) return null;
  let host = m[1];
  if (host === "0.0.0.0" || host === "::" || host === "") host = location.hostname;
  if (host.includes(":")) host = `[${host}]`;
  return `${location.protocol}//${host}:${m[2]}/`;
}

function counts(obj) {
  const entries = Object.entries(obj || {}).filter(([, v]) => v);
  if (!entries.length) return "none";
  return entries.map(([k, v]) => `${k} ${v}`).join(", ");
}

export async function mount(root) {
  const cards = h("div", { class: "cards", id: "cluster-cards" });
  const nodes = h("div", { id: "cluster-nodes" });
  const here = h("div", { class: "columns", id: "cluster-here" });
  const stamp = h("p", { class: "muted small" });
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Cluster"), stamp),
    cards,
    h("section", { class: "card" }, h("h3", {}, "Nodes"), nodes),
    here,
  );

  async function load() {
    const [cl, st] = await Promise.all([api("GET", "/v1/cluster"), api("GET", "/v1/status")]);
    const raft = st.raft || {};
    const leader = cl.nodes.find((n) => n.raft === cl.leader);
    replace(
      cards,
      card("Leader", leader ? leader.node_id : cl.leader || "none", cl.leader ? "" : "bad"),
      card("Term", cl.term),
      card("Commit index", raft.commit_index),
      card("Applied index", raft.applied_index),
      card("Lag", st.lag, st.lag > 100 ? "warn" : ""),
      card("Nodes", cl.nodes.length),
    );
    const rows = cl.nodes.map((n) => {
      const url = nodeUrl(n.http);
      return h(
        "tr",
        { dataset: { node: n.node_id } },
        h("td", {}, h("strong", {}, n.node_id), " ", n.node_id === cl.node_id ? badge("this node", "info") : null),
        h("td", {}, n.raft === cl.leader ? badge("leader") : badge("follower", "muted")),
        h("td", { class: "mono" }, n.raft),
        h("td", { class: "mono" }, n.broker),
        h("td", { class: "mono" }, url && n.node_id !== cl.node_id ? h("a", { href: url, target: "_blank", rel: "noopener" }, n.http) : n.http),
      );
    });
    replace(nodes, table(["Node", "Role", "Raft", "Broker", "HTTP (its dashboard)"], rows, { id: "nodes-table" }));
    const b = st.broker || {};
    replace(
      here,
      h(
        "section",
        { class: "card" },
        h("h3", {}, `This node: ${st.node_id} — Raft`),
        facts([
          ["Address", raft.address],
          ["Ready", raft.ready ? badge("ready", "ok") : badge("not ready", "bad")],
          ["Role", raft.is_leader ? badge("leader") : badge("follower", "muted")],
          ["Term", raft.term],
          ["Commit index", raft.commit_index],
          ["Applied index", raft.applied_index],
          ["Store applied index", raft.store_applied_index],
          ["Lag", st.lag],
          ["Snapshots taken / installed", `${raft.snapshots_taken} / ${raft.snapshots_installed}`],
          raft.halted ? ["Halted", badge(raft.halted, "bad")] : null,
          raft.journal_behind_store ? ["Journal behind store", badge(String(raft.journal_behind_store), "bad")] : null,
          ["Up for", `${Math.round(st.uptime_s)} s`],
        ]),
      ),
      h(
        "section",
        { class: "card" },
        h("h3", {}, "Broker and ingest"),
        facts([
          ["Broker", `${b.mode} at ${b.address}`],
          ["Broker pid", b.pid],
          ["Restarts / reloads", `${b.restarts} / ${b.reloads}`],
          ["Consumer", b.consumer_connected ? badge("connected", "ok") : badge("disconnected", "bad")],
          ["Devices on this broker", (st.devices_connected || []).join(", ") || "none"],
          ["Batches acknowledged", st.ingest ? st.ingest.acked : null],
          ["Rejected", counts(st.ingest && st.ingest.rejected)],
          ["Commands published / results", st.commands ? `${st.commands.published} / ${st.commands.results}` : null],
          ["Decision engine", engine(st.decisions)],
        ]),
      ),
      st.cloud ? cloudCard(st.cloud.export) : null,
    );
    stamp.textContent = `updated ${fmtAgo(Date.now())} from ${cl.node_id}`;
  }

  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      await load();
    } catch (err) {
      stamp.textContent = `could not refresh: ${err.message}`;
    }
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  }
  await tick();
  return {
    refresh: load,
    dispose() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// The site's export to the cloud (hub/link/cloudlink.py): lag and link.
function cloudCard(x) {
  const lag = `${x.lag_s} s` + (x.first_unexported_index ? ` (from index ${x.first_unexported_index})` : "");
  return h(
    "section",
    { class: "card", id: "cloud-export" },
    h("h3", {}, `Cloud export — site ${x.site}`),
    facts([
      ["Lag", x.alert ? badge(lag, "bad") : lag],
      ["Alert", x.alert ? badge(x.alert, "bad") : `none (over ${x.lag_alert_s} s)`],
      ["Exporting", x.exporting ? badge("this node (leader)") : badge("no (a follower)", "muted")],
      ["Link", x.connected ? badge("connected", "ok") : x.exporting ? badge("down", "bad") : "—"],
      ["Exported index", x.exported_index],
      ["Messages / bytes", `${x.messages} / ${x.bytes}`],
      ["Duplicates dropped by JetStream", x.duplicates],
      x.error ? ["Last error", badge(x.error, "bad")] : null,
    ]),
  );
}

function card(label, value, tone = "") {
  return h("div", { class: `stat ${tone}` }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value ?? "—"));
}

function engine(d) {
  if (!d || typeof d !== "object") return "—";
  const parts = Object.entries(d)
    .filter(([, v]) => v === null || typeof v !== "object")
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`);
  return parts.join(", ") || "—";
}
