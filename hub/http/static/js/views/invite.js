// Invitations. #/invites (admins): invite a user by name and role and get a
// one-time link that expires (POST /v1/invites); the invitations so far.
// #/invite/{token} (no login): the invited person sets their password
// (POST /v1/invites/{token}/accept) and is logged in.

import { api } from "../api.js";
import { fmtTime, h, replace, table } from "../util.js";

export async function mount(root) {
  const name = h("input", { id: "invite-name", required: true, maxlength: 64, autocomplete: "off" });
  const role = h(
    "select",
    { id: "invite-role" },
    ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)),
  );
  const devices = h("input", { id: "invite-devices", placeholder: "plug-1, plug-2", autocomplete: "off" });
  const hours = h("input", { id: "invite-hours", type: "number", min: 1, max: 720, value: "72" });
  const submit = h("button", { type: "submit", class: "primary", id: "invite-send" }, "Invite");
  const result = h("div", { id: "invite-result", "aria-live": "polite" });
  const list = h("div", { id: "invite-list" });
  const form = h(
    "form",
    { class: "ask-form" },
    h("label", {}, "User name ", name),
    h("label", {}, "Role ", role),
    h("label", {}, "Devices ", devices),
    h("label", {}, "Hours ", hours),
    submit,
  );
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Invite a user")),
    h("section", { class: "card" }, form, result),
    h("section", { class: "card" }, h("h3", {}, "Invitations"), list),
  );

  async function load() {
    const rows = (await api("GET", "/v1/invites")).map((i) =>
      h(
        "tr",
        { dataset: { name: i.name } },
        h("td", {}, i.name),
        h("td", {}, i.role),
        h("td", {}, i.state),
        h("td", {}, fmtTime(i.expires_ms)),
        h("td", {}, i.by),
      ),
    );
    replace(list, rows.length ? table(["user", "role", "state", "expires", "by"], rows) : h("p", { class: "muted" }, "None."));
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const out = await api("POST", "/v1/invites", {
        name: name.value.trim(),
        role: role.value,
        devices: devices.value.split(/[\s,]+/).filter(Boolean),
        ttl_s: Math.round(Number(hours.value) * 3600),
      });
      const link = `${location.origin}/#/invite/${out.token}`;
      replace(
        result,
        h("p", {}, `Send this link to ${out.name}; it works once, until ${fmtTime(out.expires_ms)}:`),
        h("p", {}, h("code", { id: "invite-link", class: "mono" }, link)),
      );
      name.value = "";
      await load();
    } catch (err) {
      replace(result, h("p", { class: "error" }, err.message));
    } finally {
      submit.disabled = false;
    }
  });
  await load();
  return { refresh: load };
}

// The page of a link, before any login: who it is for, and a password.
// ``done(out)`` gets the session of POST /v1/invites/{token}/accept.
export async function acceptPage(token, done) {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = true;
  const old = document.getElementById("invite");
  if (old) old.remove();
  const error = h("p", { class: "error", id: "invite-error", role: "alert", hidden: true });
  const pw = h("input", { id: "invite-password", type: "password", required: true, minlength: 8, maxlength: 1024, autocomplete: "new-password" });
  const again = h("input", { id: "invite-again", type: "password", required: true, maxlength: 1024, autocomplete: "new-password" });
  const submit = h("button", { type: "submit", class: "primary", id: "invite-accept" }, "Set my password");
  const title = h("p", { class: "muted", id: "invite-for" }, "Checking the invitation…");
  const form = h(
    "form",
    { class: "card login-card" },
    h("h1", {}, h("span", { class: "logo", "aria-hidden": "true" }), " aiot hub"),
    title,
    h("label", {}, "New password", pw),
    h("label", {}, "The same again", again),
    submit,
    error,
  );
  const section = h("section", { id: "invite", class: "login" }, form);
  document.body.prepend(section);
  const fail = (message) => {
    error.hidden = false;
    error.textContent = message;
  };
  try {
    const inv = await api("GET", `/v1/invites/${encodeURIComponent(token)}`, undefined, { anonymous: true });
    title.textContent = `You are invited as ${inv.name} (${inv.role}). The link works once, until ${fmtTime(inv.expires_ms)}.`;
  } catch (err) {
    title.textContent = "This invitation cannot be used.";
    submit.disabled = true;
    fail(err.status === 410 || err.status === 404 ? err.message.replace(/^\d+: /, "") : err.message);
    return;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (pw.value !== again.value) return fail("The two passwords differ.");
    submit.disabled = true;
    try {
      const out = await api("POST", `/v1/invites/${encodeURIComponent(token)}/accept`, { password: pw.value }, { anonymous: true });
      section.remove();
      await done(out);
    } catch (err) {
      submit.disabled = false;
      fail(err.message.replace(/^\d+: /, ""));
    }
  });
  pw.focus();
}
