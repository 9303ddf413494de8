// Talk to the hub: the user's one thread (GET /v1/threads/me). A question
// first goes to the bot, which answers from the ledger as "Ask the hub"
// does; "Talk to a person", or a question the bot cannot answer, moves the
// thread to the admins' inbox. An admin's reply arrives live (a "thread"
// event on the stream) and is marked read while the page is open.

import { api, session } from "../api.js";
import { fmtTime, h, replace } from "../util.js";

const STATE_TEXT = {
  bot: "The hub's bot answers from the ledger. Ask for a person at any time.",
  person: "With a person: an admin will reply here.",
};

// The messages of a thread as chat bubbles; ``mine`` is the author kind
// shown on the right ("user" for the owner, "admin" in the inbox).
export function threadLog(log, messages, mine) {
  replace(
    log,
    messages.length
      ? messages.map((m) =>
          h(
            "div",
            {
              class: `msg ${m.author === mine ? "msg-you" : "msg-hub"} msg-${m.author}`,
              dataset: { seq: String(m.seq), author: m.author },
            },
            h("p", { class: "answer-text" }, m.text),
            h(
              "p",
              { class: "small" },
              m.author === "admin" ? `${m.by} (admin)` : m.author === "bot" ? "bot" : m.by,
              " · ",
              fmtTime(m.at_ms),
              m.escalate ? " · to a person" : null,
            ),
          ),
        )
      : h("p", { class: "muted" }, "No messages yet."),
  );
  log.scrollTop = log.scrollHeight;
}

// Messages by seq: events and answers may arrive in any order, twice.
export class Messages {
  constructor() {
    this.bySeq = new Map();
  }
  add(list) {
    for (const m of list || []) if (m) this.bySeq.set(m.seq, m);
  }
  list() {
    return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq);
  }
}

export async function mount(root) {
  const msgs = new Messages();
  let state = "bot";
  const log = h("div", { class: "chat", id: "thread", "aria-live": "polite" });
  const status = h("p", { class: "muted", id: "thread-state" });
  const input = h("input", {
    id: "chat-input",
    maxlength: 2000,
    autocomplete: "off",
    placeholder: "what happened to plug-1?",
    "aria-label": "message",
  });
  const send = h("button", { type: "submit", class: "primary", id: "chat-send" }, "Send");
  const person = h("button", { type: "button", id: "chat-person" }, "Talk to a person");
  const form = h("form", { class: "ask-form" }, input, send, person);
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Talk to the hub")),
    h("section", { class: "card" }, status, log, form),
  );

  function render() {
    root.dataset.state = state;
    status.textContent = STATE_TEXT[state] || state;
    threadLog(log, msgs.list(), "user");
  }

  async function markRead(thread) {
    if (thread.unread > 0) await api("POST", "/v1/threads/me/read", {}).catch(() => {});
  }

  async function load() {
    const t = await api("GET", "/v1/threads/me");
    msgs.bySeq.clear();
    msgs.add(t.messages);
    state = t.state;
    render();
    await markRead(t);
  }

  async function post(text, toPerson) {
    text = text.trim() || (toPerson ? "I would like to talk to a person." : "");
    if (!text) return;
    send.disabled = person.disabled = true;
    try {
      const out = await api("POST", "/v1/threads/me/messages", { text, person: toPerson });
      msgs.add(out.messages);
      state = out.state;
      input.value = "";
    } catch (err) {
      status.textContent = `Not sent: ${err.message}`;
      return;
    } finally {
      send.disabled = person.disabled = false;
      input.focus();
    }
    render();
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    post(input.value, false);
  });
  person.addEventListener("click", () => post(input.value, true));

  await load();
  input.focus();
  return {
    event(type, data) {
      if (type !== "thread" || data.thread !== session.name) return;
      msgs.add([data.message]);
      state = data.state;
      render();
      markRead(data);
    },
    refresh: load,
  };
}
