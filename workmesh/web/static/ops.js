// The operator page: reads GET /api/v1/ops/overview with an admin token every few seconds.
"use strict";

const TOKEN_KEY = "workmesh.admin.token";
const REFRESH_MS = 3000;
const WINDOW_NAMES = { last_minute: "last minute", last_5_minutes: "last 5 minutes" };

const page = {};
const state = { token: null, timer: null };

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["signin-section", "signin", "token", "signin-button", "signin-error",
    "main", "error", "updated", "signout", "intake", "by-priority", "by-status", "throughput",
    "workers", "dead-since", "dead-letters"]) {
    page[id] = document.getElementById(id);
  }
  page.signin.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = page.token.value.trim();
    if (!token) {
      wm.say(page["signin-error"], "Enter an admin token.");
      return;
    }
    signIn(token);
  });
  page.signout.addEventListener("click", () => signOut(""));
  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (kept) signIn(kept);
});

async function signIn(token) {
  page["signin-button"].disabled = true;
  wm.say(page["signin-error"], "");
  state.token = token;
  const ok = await refresh();
  page["signin-button"].disabled = false;
  if (!ok) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  page["signin-section"].hidden = true;
  page.main.hidden = false;
  page.signout.hidden = false;
  page.updated.hidden = false;
  state.timer = setInterval(refresh, REFRESH_MS);
}

function signOut(reason) {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  page.main.hidden = true;
  page.signout.hidden = true;
  page.updated.hidden = true;
  page["signin-section"].hidden = false;
  page.token.value = "";
  wm.say(page["signin-error"], reason);
}

// One read of the overview; false when the token was refused (the page is back at sign-in).
async function refresh() {
  const token = state.token;
  let answer;
  try {
    answer = await wm.getJson("/api/v1/ops/overview", token);
  } catch (_) {
    const message = "Cannot reach the server; trying again.";
    if (page.main.hidden) wm.say(page["signin-error"], message);
    else wm.say(page.error, message);
    return !page.main.hidden;
  }
  if (token !== state.token) return false; // signed out meanwhile
  if (answer.status === 401 || answer.status === 403) {
    signOut("Sign-in refused: " + wm.errorText(answer));
    return false;
  }
  if (answer.status !== 200) {
    wm.say(page.main.hidden ? page["signin-error"] : page.error, wm.errorText(answer));
    return !page.main.hidden;
  }
  wm.say(page.error, "");
  render(answer.body);
  return true;
}

function render(overview) {
  page.updated.textContent = "updated " + wm.time(overview.generated_at);
  const intake = overview.queue.intake_messages;
  page.intake.textContent = intake === null ? "unknown" : String(intake);
  page["by-priority"].replaceChildren(
    ...Object.entries(overview.queue.queued_by_priority)
      .sort((a, b) => Number(b[0]) - Number(a[0]))
      .map(([priority, count]) =>
        wm.el("tr", { dataset: { priority } },
          wm.el("td", {}, priority), wm.el("td", { class: "num" }, count))),
  );
  page["by-status"].replaceChildren(
    ...Object.entries(overview.tasks).map(([status, count]) =>
      wm.el("tr", { dataset: { status } },
        wm.el("th", {}, status), wm.el("td", { class: "num" }, count))),
  );
  page.throughput.replaceChildren(
    ...Object.entries(overview.throughput).map(([window, counts]) =>
      wm.el("tr", { dataset: { window } },
        wm.el("th", {}, WINDOW_NAMES[window] || window),
        wm.el("td", { class: "num done" }, counts.done),
        wm.el("td", { class: "num dead" }, counts.dead))),
  );
  page.workers.replaceChildren(
    ...overview.workers.map((worker) =>
      wm.el("tr", { dataset: { workerId: worker.id } },
        wm.el("td", {}, wm.el("code", {}, worker.id)),
        wm.el("td", {}, worker.tier + (worker.tier === "reserve" && worker.engaged ? " (engaged)" : "")),
        wm.el("td", { class: worker.online ? "online" : "offline" }, worker.online ? "online" : "offline"),
        wm.el("td", { class: "num load" }, worker.load + " / " + worker.capacity),
        wm.el("td", {}, wm.time(worker.last_heartbeat_at)))),
  );
  const dead = overview.dead_letters;
  page["dead-since"].textContent = "The last " + dead.keep + " seen by this server since "
    + wm.time(dead.since) + "; every dead letter stays in the workmesh.dead queue.";
  if (dead.recent.length === 0) {
    page["dead-letters"].replaceChildren(
      wm.el("tr", {}, wm.el("td", { colspan: 5, class: "muted" }, "none since then")));
    return;
  }
  page["dead-letters"].replaceChildren(
    ...dead.recent.map((letter) =>
      wm.el("tr", {},
        wm.el("td", {}, wm.time(letter.at)),
        wm.el("td", { class: "reason" }, letter.reason),
        wm.el("td", {}, letter.source || ""),
        wm.el("td", {}, letter.task_id ? wm.el("code", {}, letter.task_id) : ""),
        wm.el("td", {}, wm.el("pre", {}, letter.body + (letter.truncated ? " …" : ""))))),
  );
}
