// Shared by both pages: building elements safely (text only, never HTML) and reading the API.
"use strict";

const wm = {
  // An element with attributes and children; strings become text nodes, never markup.
  el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  },

  // Show a message in a box, or hide the box with an empty message.
  say(box, message) {
    box.textContent = message || "";
    box.hidden = !message;
  },

  // GET a JSON route with a bearer token. Resolves to {status, body}; the body of an error is
  // the server's {"error": ...}. Rejects only when the server cannot be reached.
  async getJson(path, token) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = { error: "the server answered " + response.status + " without JSON" };
    }
    return { status: response.status, body };
  },

  errorText(answer) {
    const reason = answer.body && answer.body.error ? answer.body.error : "no reason given";
    return reason + " (HTTP " + answer.status + ")";
  },

  time(iso) {
    if (!iso) return "never";
    const when = new Date(iso);
    return isNaN(when) ? String(iso) : when.toLocaleString();
  },
};
