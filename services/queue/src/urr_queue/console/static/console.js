// The operator console: polls one endpoint, draws the figures and sparklines, sends changes
// after a confirmation. No framework and no build step; every request stays on this origin.
"use strict";

const API = "/api/v1/admin/console";
const QUEUE_ADMIN = "/api/v1/admin/queue";
const MODES = ["queue", "paused", "passthrough", "closed"];
const cards = new Map();
let refreshMs = 1000;
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function show(value, unit) {
  if (value === null || value === undefined) return "–";
  return unit ? `${value} ${unit}` : String(value);
}

const SVG = "http://www.w3.org/2000/svg";

// A 120x28 polyline of the values (nulls skipped); the label says what it shows in words.
function sparkline(values, label) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "28");
  svg.setAttribute("viewBox", "0 0 120 28");
  svg.setAttribute("role", "img");
  const known = values.filter((v) => typeof v === "number");
  const summary = known.length
    ? `${label}, last 15 minutes: low ${Math.min(...known)}, high ${Math.max(...known)}, ` +
      `now ${known[known.length - 1]}`
    : `${label}: no history yet`;
  svg.setAttribute("aria-label", summary);
  const title = document.createElementNS(SVG, "title");
  title.textContent = summary;
  svg.append(title);
  if (known.length > 1) {
    const low = Math.min(...known);
    const span = Math.max(...known) - low || 1;
    const step = 120 / Math.max(1, values.length - 1);
    const points = [];
    values.forEach((v, i) => {
      if (typeof v === "number") points.push(`${(i * step).toFixed(1)},${(26 - ((v - low) / span) * 24).toFixed(1)}`);
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  return svg;
}

function notify(text) {
  document.getElementById("notice").textContent = text;
}

function confirmChange(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const yes = document.getElementById("confirm-yes");
    const no = document.getElementById("confirm-no");
    const done = (answer) => {
      yes.onclick = null;
      no.onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    yes.onclick = () => done(true);
    no.onclick = () => done(false);
    dialog.onclose = () => done(false);
    dialog.showModal();
    no.focus();
  });
}

async function problemText(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function sendChange(eventId, change, description) {
  if (!(await confirmChange(`${description} for event ${eventId}?`))) {
    notify("Nothing changed.");
    return;
  }
  const response = await fetch(`${API}/events/${encodeURIComponent(eventId)}/changes`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(change),
  });
  if (!response.ok) {
    notify(`Not applied: ${await problemText(response)}`);
    return;
  }
  const record = await response.json();
  const state = cards.get(eventId);
  if (state) state.seeded = false; // the inputs show the new settings after the refresh
  const parts = Object.keys(record.after).map(
    (name) => `${name} ${show(record.before[name])} → ${show(record.after[name])}`,
  );
  notify(`Applied to ${eventId}: ${parts.join(", ")} (recorded as ${record.actor}).`);
  await refresh();
  await loadAudit();
}

// -- Fairness reveals (issue 19): the random method's order seed once the line is over, and a
// pre-queue's secret after sale start. A refusal stays on the card, with the problem's code
// and the figures it names, until the next attempt.
const REFUSAL_FIELDS = { mode: "mode", queue_method: "method", waiting: "waiting", sale_start: "sale start" };

function showReveal(state, refused, text) {
  state.revealResult.hidden = false;
  state.revealResult.className = refused ? "reveal-result refusal" : "reveal-result revealed";
  state.revealResult.replaceChildren(
    el("strong", { text: refused ? "Refused: " : "Revealed: " }),
    document.createTextNode(text),
  );
  notify(`${refused ? "Refused" : "Revealed"}: ${text}`);
}

async function refusalText(response) {
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    /* not a problem document */
  }
  const facts = Object.entries(REFUSAL_FIELDS)
    .filter(([key]) => body[key] !== undefined && body[key] !== null)
    .map(([key, label]) => `${label} ${body[key]}`);
  const code = body.code ? ` ${body.code}` : "";
  const detail = body.detail || body.title || "";
  return `${response.status}${code}: ${detail}${facts.length ? ` (now: ${facts.join(", ")})` : ""}`;
}

async function sendReveal(state, eventId, path, body, description, describe) {
  if (!(await confirmChange(`${description} for event ${eventId}? This is published and cannot be undone.`))) {
    notify("Nothing revealed.");
    return;
  }
  let response;
  try {
    response = await fetch(`${QUEUE_ADMIN}/${encodeURIComponent(eventId)}/${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
  } catch (error) {
    showReveal(state, true, `${description} failed: ${error.message}`);
    return;
  }
  if (!response.ok) {
    showReveal(state, true, `${description}: ${await refusalText(response)}`);
    return;
  }
  showReveal(state, false, describe(await response.json()));
}

function revealSeed(state, eventId) {
  return sendReveal(state, eventId, "order-seed/reveal", {}, "Reveal the order seed", (answer) =>
    `order seed ${answer.order_seed} (commitment ${answer.order_seed_commitment}).`,
  );
}

function revealPrequeue(state, eventId) {
  const secret = state.secret.value.trim().toLowerCase();
  if (!/^([0-9a-f]{2})+$/.test(secret) || secret.length > 1024) {
    showReveal(state, true, "the pre-queue secret is an even number of hex digits (0-9, a-f).");
    state.secret.focus();
    return undefined;
  }
  return sendReveal(state, eventId, "prequeue/reveal", { secret }, "Reveal the pre-queue secret", (doc) => {
    state.secret.value = ""; // published now, but no need to keep it on screen
    return `pre-queue roster of ${doc.size} frozen, root ${doc.root}; the shuffled order is placed in line.`;
  });
}

function row(label, field, sparkField) {
  const cells = [el("th", { scope: "row", text: label }), el("td", { "data-field": field, text: "–" })];
  const spark = el("td", { class: "spark" });
  if (sparkField) spark.setAttribute("data-spark", sparkField);
  cells.push(spark);
  return el("tr", {}, ...cells);
}

function table(caption, rows) {
  return el("table", {}, el("caption", { class: "muted", text: caption }), el("tbody", {}, ...rows));
}

function buildCard(eventId) {
  const safe = eventId.replace(/[^A-Za-z0-9_-]/g, "_");
  const heading = el("h3", { id: `title-${safe}`, text: eventId });
  const card = el("article", { class: "event", id: `event-${safe}`, "aria-labelledby": `title-${safe}` }, heading);
  const figures = el(
    "div",
    { class: "figures" },
    table("Tier 1 (edge waiting room)", [
      row("Waiting room", "t1-active"),
      row("Next position", "t1-next"),
      row("Serving counter", "t1-serving", "t1_serving"),
      row("Waiting", "t1-waiting", "t1_waiting"),
    ]),
    table("Tier 2 (service queue)", [
      row("Mode", "t2-mode"),
      row("Waiting", "t2-waiting", "t2_waiting"),
      row("Admitted", "t2-admitted", "t2_admitted"),
      row("Admission rate", "t2-rate", "t2_rate"),
      row("Oldest waiter", "t2-oldest"),
      row("ETA for the last", "t2-eta"),
    ]),
    table("Seats", [row("Held (awaiting payment)", "seats-held", "held"), row("Sold", "seats-sold", "sold"), row("Total", "seats-total")]),
  );
  card.append(figures);

  const controls = el("div", { class: "controls", role: "group", "aria-label": `Controls for ${eventId}` });
  const modeSelect = el("select", { id: `mode-${safe}` }, ...MODES.map((m) => el("option", { value: m, text: m })));
  const capacity = el("input", { id: `capacity-${safe}`, type: "number", min: "1", step: "1" });
  const rate = el("input", { id: `rate-${safe}`, type: "number", min: "0.001", step: "any" });
  const applyButton = (text, action, handler) => {
    const button = el("button", { type: "button", "data-action": action, text });
    button.addEventListener("click", handler);
    return button;
  };
  controls.append(
    el("label", { for: modeSelect.id }, "Mode", modeSelect),
    applyButton("Set mode", "mode", () => sendChange(eventId, { mode: modeSelect.value }, `Set the mode to ${modeSelect.value}`)),
    el("label", { for: capacity.id }, "Capacity", capacity),
    applyButton("Set capacity", "capacity", () => {
      const value = Number.parseInt(capacity.value, 10);
      if (!(value >= 1)) return notify("Capacity must be a whole number of at least 1.");
      return sendChange(eventId, { capacity: value }, `Set the capacity to ${value}`);
    }),
    el("label", { for: rate.id }, "Admissions per second", rate),
    applyButton("Set rate", "rate", () => {
      const value = Number.parseFloat(rate.value);
      if (!(value > 0)) return notify("The admission rate must be above 0.");
      return sendChange(eventId, { admit_per_second: value }, `Set the admission rate to ${value}/s`);
    }),
  );
  const pause = applyButton("Pause", "pause", () => {
    const paused = card.dataset.mode === "paused";
    const mode = paused ? "queue" : "paused";
    return sendChange(eventId, { mode }, paused ? "Resume admissions" : "Pause admissions");
  });
  const room = applyButton("Activate waiting room", "waiting-room", () => {
    const active = card.dataset.room === "true";
    return sendChange(
      eventId,
      { waiting_room_active: !active },
      active ? "Switch the waiting room off" : "Activate the waiting room",
    );
  });
  room.classList.add("secondary");
  controls.append(pause, room);
  card.append(controls);

  const fairness = el("div", { class: "controls fairness", role: "group", "aria-label": `Fairness reveals for ${eventId}` });
  const secret = el("input", {
    id: `secret-${safe}`, type: "text", class: "secret", autocomplete: "off", spellcheck: "false",
    "aria-describedby": `reveal-${safe}`,
  });
  const secretLabel = el("label", { for: secret.id }, "Pre-queue secret (hex)", secret);
  const revealResult = el("p", { id: `reveal-${safe}`, class: "reveal-result", hidden: "" });
  const state = { card, modeSelect, capacity, rate, pause, room, secret, revealResult, seeded: false };
  const seedButton = applyButton("Reveal order seed", "reveal-seed", () => revealSeed(state, eventId));
  const prequeueButton = applyButton("Reveal pre-queue", "reveal-prequeue", () => revealPrequeue(state, eventId));
  seedButton.classList.add("secondary");
  prequeueButton.classList.add("secondary");
  fairness.append(seedButton, secretLabel, prequeueButton);
  Object.assign(state, { fairness, seedButton, secretLabel, prequeueButton });
  card.append(fairness, revealResult);
  cards.set(eventId, state);
  return state;
}

function setField(card, field, text, className) {
  const cell = card.querySelector(`[data-field="${field}"]`);
  if (cell.textContent !== text) cell.textContent = text;
  if (className !== undefined) cell.className = className;
}

function renderEvent(event, canSwitchRoom) {
  const state = cards.get(event.event_id) || buildCard(event.event_id);
  const { card } = state;
  card.querySelector("h3").textContent = event.name ? `${event.name} (${event.event_id})` : event.event_id;
  const t1 = event.tier1;
  const t2 = event.tier2;
  const seats = event.seats;
  setField(card, "t1-active", t1 ? (t1.is_active ? "active" : "off") : "not configured");
  setField(card, "t1-next", show(t1 && t1.next_position));
  setField(card, "t1-serving", show(t1 && t1.serving_counter));
  setField(card, "t1-waiting", show(t1 && t1.waiting));
  setField(card, "t2-mode", t2 ? t2.mode : "not configured", t2 ? `mode-${t2.mode}` : "");
  setField(card, "t2-waiting", show(t2 && t2.waiting));
  setField(card, "t2-admitted", t2 ? `${t2.admitted} of ${t2.capacity}` : "–");
  const rate = t2 && t2.admission_rate_per_second !== null ? `${t2.admission_rate_per_second}/s` : "none";
  setField(card, "t2-rate", t2 ? `${rate} (limit ${t2.admit_per_second}/s)` : "–");
  setField(card, "t2-oldest", show(t2 && t2.oldest_waiter_seconds, "s"));
  setField(card, "t2-eta", show(t2 && t2.eta_seconds, "s"));
  setField(card, "seats-held", show(seats && seats.held));
  setField(card, "seats-sold", show(seats && seats.sold));
  setField(card, "seats-total", show(seats && seats.total));
  for (const cell of card.querySelectorAll("[data-spark]")) {
    const field = cell.getAttribute("data-spark");
    cell.replaceChildren(sparkline(event.history[field] || [], `${event.event_id} ${field.replace("_", " ")}`));
  }
  card.dataset.mode = t2 ? t2.mode : "";
  card.dataset.room = t1 ? String(t1.is_active) : "";
  state.pause.textContent = t2 && t2.mode === "paused" ? "Resume" : "Pause";
  state.pause.disabled = !t2;
  state.room.hidden = !(t1 && canSwitchRoom);
  state.room.textContent = t1 && t1.is_active ? "Switch waiting room off" : "Activate waiting room";
  if (t2 && !state.seeded) {
    // Seeded once: a refresh must not overwrite what the operator is typing.
    state.modeSelect.value = t2.mode;
    state.capacity.value = t2.capacity;
    state.rate.value = t2.admit_per_second;
    state.seeded = true;
  }
  for (const control of [state.modeSelect, state.capacity, state.rate]) control.disabled = !t2;
  // The reveals the event has: the random method's seed, a pre-queue's secret.
  const seeded = Boolean(t2 && t2.queue_method === "random");
  const prequeued = Boolean(t2 && t2.sale_start);
  state.seedButton.hidden = !seeded;
  state.secretLabel.hidden = !prequeued;
  state.prequeueButton.hidden = !prequeued;
  state.fairness.hidden = !(seeded || prequeued);
  state.prequeueButton.title = prequeued ? `Sale start ${new Date(t2.sale_start).toLocaleString()}` : "";
  for (const button of card.querySelectorAll('[data-action="mode"],[data-action="capacity"],[data-action="rate"]')) {
    button.disabled = !t2;
  }
  return card;
}

function render(view) {
  const list = document.getElementById("events");
  const seen = new Set();
  view.events.forEach((event, index) => {
    const card = renderEvent(event, view.controls.waiting_room);
    seen.add(event.event_id);
    if (list.children[index] !== card) list.insertBefore(card, list.children[index] || null);
  });
  for (const [id, state] of cards) {
    if (!seen.has(id)) {
      state.card.remove();
      cards.delete(id);
    }
  }
  if (!view.events.length) list.replaceChildren(el("p", { text: "No events are configured." }));
  const rl = view.rate_limit;
  document.getElementById("refused").textContent = String(rl.refused_this_hour);
  document.getElementById("refused-spark").replaceChildren(sparkline(rl.history, "refusals per sample"));
  document.getElementById("refused-by-policy").replaceChildren(
    ...Object.entries(rl.by_policy).filter(([, n]) => n > 0).map(([policy, n]) => el("li", { text: `${policy}: ${n}` })),
  );
  const unavailable = document.getElementById("unavailable");
  unavailable.hidden = !view.unavailable.length;
  unavailable.textContent = view.unavailable.length ? `Not available right now: ${view.unavailable.join(", ")}.` : "";
  const at = new Date(view.generated_at_ms);
  document.getElementById("updated").textContent = `Figures of ${at.toLocaleTimeString()}`;
  refreshMs = Math.min(2000, Math.max(500, view.refresh_seconds * 1000));
}

async function refresh() {
  try {
    const response = await fetch(`${API}/figures`, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      document.getElementById("updated").textContent = `Figures unavailable: ${await problemText(response)}`;
      return;
    }
    render(await response.json());
  } catch (error) {
    document.getElementById("updated").textContent = `Figures unavailable: ${error.message}`;
  }
}

async function loadAudit() {
  const response = await fetch(`${API}/audit?limit=20`, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) return;
  const { records } = await response.json();
  document.getElementById("audit").replaceChildren(
    ...records.map((r) => {
      const parts = Object.keys(r.after).map((k) => `${k} ${show(r.before[k])} → ${show(r.after[k])}`);
      return el("li", { text: `${new Date(r.at_ms).toLocaleString()} · ${r.actor} · ${r.event_id}: ${parts.join(", ")}` });
    }),
  );
}

async function loop() {
  await refresh();
  timer = setTimeout(loop, refreshMs);
}

document.addEventListener("DOMContentLoaded", () => {
  loop();
  loadAudit();
  setInterval(loadAudit, 10000);
});
