// Sign-in with a user token, shown when the server requires tokens. The token is
// kept in local storage and sent as a header; the form never submits to a URL.

import { ApiError, api, setToken } from "./api.js";
import { h } from "./dom.js";

export function signInView(message, onSignedIn) {
  const input = h("input", { type: "password", id: "token", name: "token", required: true,
    autocomplete: "off", spellcheck: "false", placeholder: "bfu_…", "aria-describedby": "token-help" });
  const error = h("p", { class: "form-error", role: "alert" }, message || "");
  const submit = async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    setToken(token);
    try {
      await api("/api/info");
    } catch (exc) {
      setToken(null);
      error.textContent = exc instanceof ApiError && exc.status === 401
        ? "That token was refused: it is wrong, revoked, or a node token."
        : exc.message;
      input.select();
      return;
    }
    onSignedIn();
  };
  const form = h("form", { class: "panel signin", method: "post", onsubmit: submit },
    h("h1", null, "Sign in"),
    h("p", null, "This farm needs a user token."),
    h("label", { for: "token" }, "User token"),
    input,
    h("p", { id: "token-help", class: "muted" }, "Create one on the server with ",
      h("code", null, "bf-server token create --user"), "."),
    error,
    h("button", { type: "submit", class: "btn primary" }, "Sign in"));
  setTimeout(() => input.focus(), 0);
  return form;
}
