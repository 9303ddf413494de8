// Ask the hub: a chat box over POST /v1/ask. Answers come from the ledger
// (or the local model, checked against it); each shows how it was made and
// the records it rests on. The conversation lasts as long as the tab.

import { api } from "../api.js";
import { h, replace } from "../util.js";

const chat = []; // {who: "you"|"hub", text, out}

function sourceLink(id) {
  if (/^d-/.test(id)) return h("a", { href: `#/decisions/${encodeURIComponent(id)}`, class: "mono" }, id);
  return h("span", { class: "mono" }, id);
}

// An answer of POST /v1/ask as a block: the text, the method, the sources.
export function answerBlock(out) {
  return h(
    "div",
    { class: "answer" },
    h("p", { class: "answer-text" }, out.answer),
    h(
      "p",
      { class: "muted small" },
      `answered by ${out.method}`,
      out.sources && out.sources.length ? ["; from ", out.sources.map((s, i) => [i ? ", " : "", sourceLink(s)])] : null,
      out.refused ? ` (the model's answer was refused: ${out.refused})` : null,
    ),
  );
}

export async function mount(root) {
  const log = h("div", { class: "chat", id: "chat", "aria-live": "polite" });
  const input = h("input", {
    id: "ask-input",
    maxlength: 500,
    autocomplete: "off",
    placeholder: "why did plug-1 switch off?",
    "aria-label": "question",
  });
  const send = h("button", { type: "submit", class: "primary", id: "ask-send" }, "Ask");
  const form = h("form", { class: "ask-form" }, input, send);
  const hints = h("div", { class: "hints" });
  root.append(
    h("div", { class: "view-head" }, h("h2", {}, "Ask the hub")),
    h("section", { class: "card" }, log, form, hints),
  );

  function render() {
    replace(
      log,
      chat.length
        ? chat.map((m) =>
            h(
              "div",
              { class: `msg msg-${m.who}` },
              m.out ? answerBlock(m.out) : h("p", {}, m.text),
            ),
          )
        : h("p", { class: "muted" }, "Ask why a device switched off, what happened to it, or how much energy it used."),
    );
    log.scrollTop = log.scrollHeight;
  }

  async function ask(q) {
    q = q.trim();
    if (!q) return;
    chat.push({ who: "you", text: q });
    input.value = "";
    send.disabled = true;
    render();
    try {
      const out = await api("POST", "/v1/ask", { question: q });
      chat.push({ who: "hub", out });
    } catch (err) {
      chat.push({ who: "hub", text: `No answer: ${err.message}` });
    } finally {
      send.disabled = false;
      render();
      input.focus();
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    ask(input.value);
  });

  try {
    const devices = await api("GET", "/v1/devices");
    const first = devices.slice(0, 2).map((d) => d.device_id);
    const qs = first.flatMap((id) => [`why did ${id} switch off?`, `what happened to ${id}?`, `how much energy did ${id} use today?`]);
    replace(
      hints,
      qs.map((q) => {
        const b = h("button", { type: "button", class: "chip" }, q);
        b.addEventListener("click", () => ask(q));
        return b;
      }),
    );
  } catch (_) {
    // suggestions are optional
  }
  render();
  input.focus();
  return {};
}
