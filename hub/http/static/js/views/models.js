// Models: every version of every model, the version the cluster asks for,
// what this node runs, and activation (operator and admin only).
//
//   GET  /v1/models                  [{name, version, kind, sha256, size, created,
//                                      activated, active_on: {node: version}, error_on}]
//   POST /v1/models/{name}/activate  {version}
//
// A hub without a model registry answers 404 (or 503 while it is not
// running): the view says so.

import { api, canOperate } from "../api.js";
import { badge, errorToast, fmtBytes, h, replace, table, toast } from "../util.js";

export async function mount(root) {
  const body = h("div", { id: "models-body" });
  root.append(h("div", { class: "view-head" }, h("h2", {}, "Models")), body);

  async function activate(name, version, button) {
    button.disabled = true;
    try {
      await api("POST", `/v1/models/${encodeURIComponent(name)}/activate`, { version });
      toast("info", `Activating ${name} ${version}`, "Each node loads and verifies it before it switches.");
      await load();
    } catch (err) {
      button.disabled = false;
      errorToast(err, `Activate ${name} ${version} refused`);
    }
  }

  function missing(err) {
    replace(
      body,
      h(
        "section",
        { class: "card" },
        h(
          "p",
          { class: "empty", id: "models-missing" },
          err.status === 404
            ? "No model registry on this hub yet."
            : `The model registry is not running on this node (${err.message}).`,
        ),
        h("p", { class: "muted small" }, "Once it runs, its models, their versions and the version each node runs show here."),
      ),
    );
  }

  function model(name, versions) {
    // active_on: {node: version} for the nodes this hub reports (its own at
    // least); "activated": the version the cluster asks for.
    const perNode = {};
    const errors = {};
    for (const v of versions) {
      for (const [n, ver] of Object.entries(v.active_on || {})) if (ver) perNode[n] = ver;
      for (const [n, err] of Object.entries(v.error_on || {})) if (err) errors[n] = err;
    }
    const nodes = Object.keys(perNode).sort();
    const rows = versions.map((v) => {
      const on = nodes.filter((n) => perNode[n] === v.version);
      let button = null;
      if (canOperate() && !v.activated) {
        button = h("button", { type: "button", dataset: { action: "activate" } }, "Activate");
        button.addEventListener("click", () => activate(name, v.version, button));
      }
      return h(
        "tr",
        { dataset: { version: v.version } },
        h("td", {}, h("strong", {}, v.version)),
        h("td", {}, v.kind || "—"),
        h("td", { class: "mono small", title: v.sha256 || "" }, (v.sha256 || "—").slice(0, 16)),
        h("td", { class: "num" }, v.size ? fmtBytes(v.size) : "—"),
        h("td", { class: "small" }, v.created || "—"),
        h("td", {}, v.activated ? badge("active", "ok") : ""),
        h("td", {}, on.length ? on.map((n) => [badge(n, "ok"), " "]) : h("span", { class: "muted" }, "—")),
        h("td", {}, button),
      );
    });
    return h(
      "section",
      { class: "card", dataset: { model: name } },
      h("h3", {}, name, " ", h("span", { class: "muted" }, versions[0].kind || "")),
      table(["Version", "Kind", "sha256", "Size", "Created", "Cluster", "Running on", ""], rows),
      h(
        "p",
        { class: "muted small" },
        nodes.length
          ? ["Per node: ", nodes.map((n, i) => [i ? ", " : "", `${n} runs ${perNode[n]}`]), ". "]
          : "No node reports this model loaded. ",
        "Each node's own dashboard shows what it runs.",
      ),
      Object.keys(errors).length
        ? h("p", { class: "error small" }, Object.entries(errors).map(([n, err]) => `${n}: ${err}`).join("; "))
        : null,
    );
  }

  async function load() {
    let rows;
    try {
      rows = await api("GET", "/v1/models");
    } catch (err) {
      if (err.status === 404 || err.status === 503) {
        missing(err);
        return;
      }
      throw err;
    }
    const byName = new Map();
    for (const r of rows) {
      if (!byName.has(r.name)) byName.set(r.name, []);
      byName.get(r.name).push(r);
    }
    if (!byName.size) {
      replace(body, h("section", { class: "card" }, h("p", { class: "empty" }, "The registry holds no models yet (aiot models push).")));
      return;
    }
    replace(body, [...byName.entries()].map(([name, versions]) => model(name, versions)));
  }

  await load();
  return { refresh: load };
}
