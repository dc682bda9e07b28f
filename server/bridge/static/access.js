// The header's "Access token" control: a button that opens a small form to
// save the token this node wants (kept in this browser, see token.js) or to
// clear it. A 401 from the API opens it with the reason and the field focused.

import { h } from "./dom.js";
import { field } from "./form.js";
import { clearToken, getToken, refusalMessage, setToken } from "./token.js";

export function mountAccessControl(slot) {
  let dismissed = false; // closed by hand: a later 401 marks the button instead of taking the focus

  const button = h(
    "button.button.button--small.access__button",
    { type: "button", "aria-expanded": "false", "aria-controls": "access-panel", onclick: () => (panel.hidden ? open() : close({ byHand: true })) },
    h("span.access__dot", { "aria-hidden": "true" }),
    "Access token",
  );
  const message = h("div.access__message", { role: "alert" });
  const input = h("input", {
    type: "password",
    id: "access-token",
    name: "access-token",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "access-token-hint access-token-state",
  });
  const state = h("p.hint.access__state", { id: "access-token-state" });
  const clearButton = h("button.button.button--quiet", { type: "button", onclick: () => clear() }, "Clear token");
  const panel = h(
    "form.access__panel",
    { id: "access-panel", hidden: true, "aria-labelledby": "access-title", novalidate: true, onsubmit: (event) => { event.preventDefault(); save(); } },
    h("p.access__title", { id: "access-title" }, "Access token"),
    message,
    field({
      id: "access-token",
      label: "Token",
      hint: "The bearer token this node was given (AUTH_TOKENS). It is kept in this browser only and sent with each request to this node.",
      control: input,
    }),
    state,
    h(
      "div.form-actions",
      {},
      h("button.button.button--primary", { type: "submit" }, "Save token"),
      clearButton,
      h("button.button.button--quiet", { type: "button", onclick: () => close({ byHand: true }) }, "Close"),
    ),
  );
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close({ byHand: true });
  });
  slot.append(button, panel);

  function show() {
    const saved = Boolean(getToken());
    if (button.dataset.state !== "needed") {
      button.title = saved ? "An access token is saved in this browser" : "No access token is saved in this browser";
    }
    state.textContent = saved ? "A token is saved in this browser." : "No token is saved in this browser.";
    clearButton.disabled = !saved;
  }

  function open({ reason = "" } = {}) {
    message.hidden = !reason;
    message.textContent = reason;
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
    show();
    input.focus();
  }

  function close({ byHand = false } = {}) {
    if (byHand) dismissed = true;
    panel.hidden = true;
    message.textContent = "";
    input.value = "";
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }

  function save() {
    const value = input.value.trim();
    if (!value) {
      message.hidden = false;
      message.textContent = "Enter the token, or close this form.";
      input.focus();
      return;
    }
    dismissed = false;
    button.dataset.state = "set";
    button.title = "";
    message.textContent = "";
    panel.hidden = true;
    input.value = "";
    button.setAttribute("aria-expanded", "false");
    setToken(value); // the page is shown again, now with the token
  }

  function clear() {
    button.dataset.state = "unset";
    button.title = "";
    clearToken();
    message.textContent = "";
    message.hidden = true;
    show();
    input.focus();
  }

  window.addEventListener("vlmnode:unauthorized", () => {
    const reason = refusalMessage();
    button.dataset.state = "needed";
    button.title = reason;
    if (!panel.hidden) {
      // Already open (maybe being typed in): say why, without moving the focus.
      message.hidden = false;
      if (message.textContent !== reason) message.textContent = reason;
      return;
    }
    if (!dismissed) open({ reason });
  });
  // A new page is a new attempt: a refusal may open the form again.
  window.addEventListener("hashchange", () => {
    dismissed = false;
  });
  window.addEventListener("vlmnode:token", show);
  button.dataset.state = getToken() ? "set" : "unset";
  show();
}
