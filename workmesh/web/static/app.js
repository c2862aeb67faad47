// The page for people who take tasks. It is a WebSocket worker (docs/channels.md): assignments
// and the queue's depth are pushed to it, and status changes go back on the same socket, so
// an assignment stays unconfirmed in RabbitMQ until the person acts on it.
"use strict";

const TOKEN_KEY = "workmesh.worker.token";
const RECONNECT_AFTER_MS = 2000;
const ON_ME = ["assigned", "in_progress"];

const page = {};
const state = {
  token: null,
  socket: null,
  workerId: null,
  signedIn: false,
  leaving: false,
  heartbeatEvery: 10,
  settingsRead: Promise.resolve(),
  heartbeat: null,
  tasks: new Map(), // task_id -> what we know of it: the assignment and its status
};

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["signin-section", "signin", "token", "signin-button", "signin-error",
    "main", "who", "worker-id", "signout", "connection", "error", "queue-waiting", "my-count",
    "no-tasks", "tasks-table", "tasks", "log"]) {
    page[id] = document.getElementById(id);
  }
  page.signin.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = page.token.value.trim();
    if (!token) {
      wm.say(page["signin-error"], "Enter your worker token.");
      return;
    }
    signIn(token);
  });
  page.signout.addEventListener("click", () => signOut(""));
  state.settingsRead = loadSettings();
  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (kept) signIn(kept);
});

async function loadSettings() {
  try {
    const response = await fetch("/app/settings.json", { cache: "no-store" });
    const body = await response.json();
    if (body.heartbeat_every > 0) state.heartbeatEvery = body.heartbeat_every;
  } catch (_) {
    // Keep the default: 10 s is within every sensible heartbeat timeout.
  }
}

async function signIn(token) {
  state.token = token;
  state.leaving = false;
  page["signin-button"].disabled = true;
  wm.say(page["signin-error"], "");
  await state.settingsRead; // the heartbeat's pace must be known before the first one
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(scheme + "//" + location.host + "/api/v1/worker/ws");
  state.socket = socket;
  // Browsers cannot put an Authorization header on a WebSocket: the token goes in a hello.
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ type: "hello", token: state.token }));
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    onFrame(frame);
  });
  socket.addEventListener("close", (event) => onClosed(socket, event));
}

function onClosed(socket, event) {
  if (socket !== state.socket) return; // an old socket, already replaced
  stopHeartbeat();
  if (state.leaving) return;
  if (event.code === 4401 || event.code === 4403) {
    // The server refused the token: back to the sign-in form with its reason.
    signOut("Sign-in refused: " + (event.reason || "unknown token, or not a worker's token"));
    return;
  }
  if (!state.signedIn) {
    signOut("Cannot reach the server (connection closed, code " + event.code + ").");
    return;
  }
  wm.say(page.connection, "Connection lost; reconnecting…");
  setTimeout(() => {
    if (!state.leaving && state.socket === socket) connect();
  }, RECONNECT_AFTER_MS);
}

function signOut(reason) {
  state.leaving = true;
  state.signedIn = false;
  stopHeartbeat();
  if (state.socket && state.socket.readyState <= WebSocket.OPEN) state.socket.close(1000);
  state.socket = null;
  state.token = null;
  state.workerId = null;
  state.tasks.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  page.main.hidden = true;
  page.who.hidden = true;
  page.signout.hidden = true;
  page["signin-section"].hidden = false;
  page["signin-button"].disabled = false;
  page.token.value = "";
  wm.say(page["signin-error"], reason);
  page.log.replaceChildren();
  render();
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      return onWelcome(frame);
    case "assignment":
      state.tasks.set(frame.task_id, { ...frame, status: "assigned" });
      note("New task " + frame.task_id + " (" + frame.kind + ", priority " + frame.priority + ").");
      return render();
    case "status":
      return onStatus(frame.task);
    case "cancel":
      state.tasks.delete(frame.task_id);
      note("Task " + frame.task_id + " was cancelled; drop it.");
      return render();
    case "withdrawn":
      state.tasks.delete(frame.task_id);
      note("Task " + frame.task_id + " was not started in time (" + frame.reason + "); it goes to someone else.");
      return render();
    case "queue":
      page["queue-waiting"].textContent = String(frame.waiting);
      return;
    case "error":
      return onError(frame);
    default:
      return; // a newer server may send more; nothing to do with it here
  }
}

function onWelcome(frame) {
  state.signedIn = true;
  state.workerId = frame.worker_id;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  page["worker-id"].textContent = frame.worker_id;
  page["signin-section"].hidden = true;
  page.main.hidden = false;
  page.who.hidden = false;
  page.signout.hidden = false;
  page["signin-button"].disabled = false;
  wm.say(page.connection, "");
  startHeartbeat();
  loadMyTasks();
}

function onStatus(task) {
  wm.say(page.error, "");
  const known = state.tasks.get(task.id) || {};
  if (ON_ME.includes(task.status)) {
    state.tasks.set(task.id, { ...known, ...fromView(task) });
  } else {
    state.tasks.delete(task.id);
  }
  note("Task " + task.id + " is now " + task.status + ".");
  render();
}

function onError(frame) {
  const about = frame.task_id ? "Task " + frame.task_id + ": " : "";
  const code = frame.status ? " (HTTP " + frame.status + ")" : "";
  wm.say(page.error, "The server refused: " + about + frame.error + code);
  note("Refused: " + about + frame.error + code);
  // The task may have left us (another worker, cancelled): read our list again.
  if (frame.status === 403 || frame.status === 404 || frame.status === 409) loadMyTasks();
}

// The tasks on me as the database has them: a task started before a reload is no longer in
// the queue (its assignment was confirmed when it was started), so the socket will not bring it.
async function loadMyTasks() {
  const found = new Map();
  for (const status of ON_ME) {
    let answer;
    try {
      answer = await wm.getJson("/api/v1/tasks?status=" + status + "&limit=1000", state.token);
    } catch (_) {
      wm.say(page.error, "Cannot read your tasks: the server is unreachable.");
      return;
    }
    if (answer.status !== 200) {
      wm.say(page.error, "Cannot read your tasks: " + wm.errorText(answer));
      return;
    }
    for (const task of answer.body.tasks) found.set(task.id, fromView(task));
  }
  for (const [id, task] of found) {
    state.tasks.set(id, { ...(state.tasks.get(id) || {}), ...task });
  }
  for (const [id, task] of state.tasks) {
    // Gone from us on the server; but keep an assignment the database has not yet shown.
    if (!found.has(id) && task.status !== "assigned") state.tasks.delete(id);
  }
  render();
}

function fromView(task) {
  return {
    task_id: task.id,
    kind: task.kind,
    payload: task.payload,
    priority: task.priority,
    attempt: task.attempt,
    status: task.status,
  };
}

// Ask the server to change a task's status. The answer comes back on the socket: a "status"
// frame when applied, an "error" frame with the server's reason when refused.
function setStatus(taskId, status, result) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN || !state.signedIn) {
    wm.say(page.error, "Not connected to the server; wait for the page to reconnect.");
    return false;
  }
  const frame = { type: "status", task_id: String(taskId), status };
  if (result !== undefined) frame.result = result;
  state.socket.send(JSON.stringify(frame));
  return true;
}

// A result as typed: JSON when it parses, else the text itself; nothing when left empty.
function parseResult(text) {
  const trimmed = text.trim();
  if (!trimmed) return undefined;
  try {
    return JSON.parse(trimmed);
  } catch (_) {
    return trimmed;
  }
}

function startHeartbeat() {
  stopHeartbeat();
  const beat = () => {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "heartbeat" }));
    }
  };
  beat();
  state.heartbeat = setInterval(beat, state.heartbeatEvery * 1000);
}

function stopHeartbeat() {
  if (state.heartbeat) clearInterval(state.heartbeat);
  state.heartbeat = null;
}

function note(text) {
  const stamp = new Date().toLocaleTimeString();
  page.log.prepend(wm.el("li", {}, stamp + " — " + text));
  while (page.log.children.length > 100) page.log.lastChild.remove();
}

function render() {
  const rows = [...state.tasks.values()]
    .sort((a, b) => b.priority - a.priority || String(a.task_id).localeCompare(b.task_id))
    .map(row);
  page.tasks.replaceChildren(...rows);
  page["my-count"].textContent = String(rows.length);
  page["tasks-table"].hidden = rows.length === 0;
  page["no-tasks"].hidden = rows.length !== 0;
}

function row(task) {
  const result = wm.el("input", {
    type: "text", placeholder: "result (JSON or text)", "aria-label": "result", class: "result",
  });
  const started = task.status === "in_progress";
  return wm.el("tr", { dataset: { taskId: task.task_id } },
    wm.el("td", {}, wm.el("code", {}, task.task_id)),
    wm.el("td", {}, task.kind),
    wm.el("td", { class: "num" }, task.priority),
    wm.el("td", { class: "status" }, task.status),
    wm.el("td", {}, wm.el("pre", {}, JSON.stringify(task.payload, null, 1))),
    wm.el("td", {}, started ? "started" : task.leased_until ? wm.time(task.leased_until) : ""),
    wm.el("td", {}, wm.el("div", { class: "actions" },
      wm.el("button", {
        type: "button", class: "start", disabled: started,
        onclick: () => setStatus(task.task_id, "in_progress"),
      }, "Start"),
      result,
      wm.el("button", {
        type: "button", class: "finish primary",
        onclick: () => setStatus(task.task_id, "done", parseResult(result.value)),
      }, "Finish"),
      wm.el("button", {
        type: "button", class: "reject danger",
        onclick: () => setStatus(task.task_id, "rejected"),
      }, "Reject"),
    )),
  );
}

// For scripts and tests driving the page: act on any task id, as the buttons do.
window.workmeshWorker = { setStatus, state };
