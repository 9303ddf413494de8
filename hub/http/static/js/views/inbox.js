// The admins' inbox (GET /v1/inbox): the users whose thread waits for a
// person, each with the number of their messages no admin has read, newest
// first; the header's badge is the sum. #/inbox/{user} opens a thread: it is
// marked read, and the admin replies privately (the user sees it live) or
// hands it back to the bot ("Resolve").

import { api, isAdmin } from "../api.js";
import { fmtAgo, h, replace, table } from "../util.js";
import { Messages, threadLog } from "./chat.js";

let countTimer = null;

// The header badge: unread messages in threads that wait for a person.
export async function refreshInboxCount() {
  const el = document.getElementById("inbox-count");
  if (!el || !isAdmin()) return;
  try {
    const out = await api("GET", "/v1/inbox");
    el.hidden = out.unread === 0;
    el.textContent = out.unread > 999 ? "999+" : String(out.unread);
  } catch (_) {
    // the badge is a hint; the inbox view shows errors
  }
}

// A thread event on the stream: the badge is counted again (once per burst).
export function onThreadEvent() {
  clearTimeout(countTimer);
  countTimer = setTimeout(refreshInboxCount, 150);
}

export async function mount(root, args) {
  if (args[0]) return mountThread(root, args[0]);
  const body = h("div", { id: "inbox" });
  const every = h("input", { type: "checkbox", id: "inbox-all" });
  root.append(
    h(
      "div",
      { class: "view-head" },
      h("h2", {}, "Inbox"),
      h("label", { class: "muted" }, every, " every thread"),
    ),
    h("section", { class: "card" }, body),
  );

  async function load() {
    const out = await api("GET", `/v1/inbox?all=${every.checked}`);
    const rows = out.threads.map((t) =>
      h(
        "tr",
        { dataset: { user: t.user } },
        h("td", {}, h("a", { href: `#/inbox/${encodeURIComponent(t.user)}` }, t.user)),
        h("td", {}, t.state === "person" ? "waiting for a person" : "with the bot"),
        h("td", {}, t.admin_unread ? h("span", { class: "count unread" }, String(t.admin_unread)) : "0"),
        h("td", { class: "answer-text" }, t.last ? t.last.text.slice(0, 80) : ""),
        h("td", { class: "muted" }, fmtAgo(t.updated_ms)),
      ),
    );
    replace(
      body,
      rows.length
        ? table(["user", "thread", "unread", "last message", "when"], rows)
        : h("p", { class: "muted" }, "Nobody is waiting for a person."),
    );
  }

  every.addEventListener("change", load);
  await load();
  return {
    event(type) {
      if (type === "thread") load().catch(() => {});
    },
    refresh: load,
  };
}

async function mountThread(root, user) {
  const msgs = new Messages();
  const log = h("div", { class: "chat", id: "thread", "aria-live": "polite" });
  const status = h("p", { class: "muted", id: "thread-state" });
  const input = h("input", { id: "reply-input", maxlength: 2000, autocomplete: "off", "aria-label": "reply" });
  const send = h("button", { type: "submit", class: "primary", id: "reply-send" }, "Reply");
  const resolve = h("button", { type: "button", id: "reply-resolve" }, "Resolve");
  const form = h("form", { class: "ask-form" }, input, send, resolve);
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, `Thread of ${user}`), h("a", { href: "#/inbox" }, "back to the inbox")),
    h("section", { class: "card" }, status, log, form),
  );
  const path = `/v1/threads/${encodeURIComponent(user)}`;

  function show(t) {
    root.dataset.state = t.state;
    status.textContent = t.state === "person" ? `${user} waits for a person.` : `${user} talks with the bot.`;
    threadLog(log, msgs.list(), "admin");
  }

  async function load() {
    const t = await api("GET", path);
    msgs.bySeq.clear();
    msgs.add(t.messages);
    show(t);
    if (t.admin_unread) await api("POST", `${path}/read`, {});
    refreshInboxCount();
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    send.disabled = true;
    try {
      const t = await api("POST", `${path}/messages`, { text });
      msgs.add(t.messages);
      input.value = "";
      show(t);
    } catch (err) {
      status.textContent = `Not sent: ${err.message}`;
    } finally {
      send.disabled = false;
    }
  });
  resolve.addEventListener("click", async () => {
    show(await api("POST", `${path}/resolve`, {}));
    refreshInboxCount();
  });

  await load();
  return {
    event(type, data) {
      if (type !== "thread" || data.thread !== user) return;
      msgs.add([data.message]);
      show(data);
      if (data.admin_unread) api("POST", `${path}/read`, {}).catch(() => {});
    },
    refresh: load,
  };
}
