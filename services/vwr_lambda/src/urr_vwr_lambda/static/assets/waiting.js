// The waiting page: takes a place, polls its check, and returns the visitor when admitted.
// No framework; the server sets the admission cookie (HttpOnly), this script never sees it.
(function () {
  "use strict";
  var API = "/vwr-api/vwr";
  var MAX_BACKOFF_S = 60;
  var EVENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
  var UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  var eventId = decodeURIComponent(location.pathname.split("/")[2] || "");
  var storageKey = "urr-vwr:" + eventId;
  var failures = 0;
  var firstAhead = null;
  var powSolution = null;  // the proof of work sent with assign, when the event asks for one
  var powRounds = 0;
  var el = function (id) { return document.getElementById(id); };

  // Only a same-site path may be a destination: one leading "/", no "//" or "\" tricks.
  function safeReturn(value) {
    if (!value || value.length > 2048 || value.charAt(0) !== "/") return null;
    if (value.charAt(1) === "/" || value.indexOf("\\") !== -1 || /[\x00-\x1f\x7f]/.test(value)) return null;
    var decoded;
    try { decoded = decodeURIComponent(value); } catch (e) { return null; }
    if (decoded.charAt(1) === "/" || decoded.indexOf("\\") !== -1 || /[\x00-\x1f\x7f]/.test(decoded)) return null;
    var target = new URL(value, location.origin);
    return target.origin === location.origin ? target.pathname + target.search + target.hash : null;
  }

  var destination = safeReturn(new URLSearchParams(location.search).get("return")) ||
    "/events/" + encodeURIComponent(eventId);

  function say(text) { el("status").textContent = text; }

  function newRequestId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function stored() {
    try { var v = localStorage.getItem(storageKey); return v && UUID_RE.test(v) ? v : null; }
    catch (e) { return null; }
  }
  function remember(id) { try { localStorage.setItem(storageKey, id); } catch (e) { /* private mode */ } }
  function forget() { try { localStorage.removeItem(storageKey); } catch (e) { /* private mode */ } }

  function formatEta(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    if (seconds < 60) return "under a minute";
    var minutes = Math.round(seconds / 60);
    return minutes < 60 ? "about " + minutes + " min" : "about " + Math.round(minutes / 6) / 10 + " h";
  }

  function show(answer) {
    el("position").textContent = answer.position;
    el("ahead").textContent = answer.ahead;
    el("eta").textContent = formatEta(answer.etaSeconds);
    if (firstAhead === null || answer.ahead > firstAhead) firstAhead = answer.ahead;
    var done = firstAhead > 0 ? Math.round(100 * (firstAhead - answer.ahead) / firstAhead) : 0;
    if (answer.admitted) done = 100;
    el("progress").setAttribute("aria-valuenow", String(done));
    el("progress-fill").style.width = done + "%";
  }

  function later(seconds, step) {
    var jittered = seconds * (0.8 + Math.random() * 0.4);  // spread the crowd's polls
    setTimeout(step, Math.max(0.5, jittered) * 1000);
  }

  function backoff(step, why) {
    failures += 1;
    var wait = Math.min(MAX_BACKOFF_S, Math.pow(2, failures));
    say(why + " Trying again in " + Math.round(wait) + " s; your place is kept.");
    later(wait, step);
  }

  function call(method, path, body) {
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: {} };
    if (body) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(API + path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { status: response.status, data: data, retryAfter: response.headers.get("Retry-After") };
      });
    });
  }

  function goIn() {
    say("It is your turn. Taking you through…");
    location.replace(destination);
  }

  // -- Presale access code (issue 15): asked for when the event requires one; a refusal says why.
  var accessCode = null;
  function withAccessCode(body) { if (accessCode) body.accessCode = accessCode; return body; }
  function askForCode(problem) {
    var form = el("access-code");
    form.hidden = false;
    el("access-code-why").textContent = problem.code === "access_code_required" && !accessCode ?
      "This sale is open to access code holders: enter yours to take a place." : problem.detail;
    say("An access code is needed to take a place.");
    form.onsubmit = function (e) {
      e.preventDefault();
      accessCode = el("access-code-input").value.trim();
      form.hidden = true;
      say("Checking your code…");
      assign();
    };
    el("access-code-input").focus();
  }
  // -- end of the access code block

  function handleProblem(answer, step) {
    var code = answer.data && answer.data.code;
    if (code && code.indexOf("pow_") === 0) { proveWork(); return; }
    if (code && code.indexOf("access_code_") === 0) { askForCode(answer.data); return; }
    if (code === "room_inactive") { goIn(); return; }
    if (code === "position_not_found" || code === "position_abandoned" || code === "place_spent") {
      forget(); say("Your earlier place has lapsed; taking a new one…"); assign(); return;
    }
    if (code === "event_not_found" || code === "bad_event_id") {
      say("There is no waiting room for this event."); return;
    }
    if (answer.status === 429) {
      // Throttled: never sooner than told, and longer on each refusal in a row, so a
      // throttled crowd does not come back all at once.
      failures += 1;
      var told = Number(answer.retryAfter) || 1;
      var wait = Math.min(MAX_BACKOFF_S, Math.max(told, Math.pow(2, failures)));
      say("The waiting room is busy; your place is kept.");
      later(wait, step);
      return;
    }
    backoff(step, "The waiting room is busy.");
  }

  function check() {
    var id = stored();
    if (!id) { assign(); return; }
    call("GET", "/check/" + encodeURIComponent(eventId) + "/" + id).then(function (answer) {
      if (answer.status !== 200) { handleProblem(answer, check); return; }
      failures = 0;
      show(answer.data);
      if (answer.data.admitted) { goIn(); return; }
      say(answer.data.ahead === 0 ? "You are next." : "Waiting: " + answer.data.ahead + " ahead of you.");
      later(answer.data.pollAfterSeconds || 5, check);
    }, function () { backoff(check, "Connection lost."); });
  }

  // The event asks for a proof of work (pow.js solves it off the page's thread), then assign.
  function proveWork() {
    powRounds += 1;
    if (!window.urrPow || !window.Worker || powRounds > 3) {
      say("This browser could not complete the check the waiting room asks for."); return;
    }
    say("Checking this browser before it takes a place…");
    window.urrPow.solve(API, eventId).then(function (solution) {
      powSolution = solution;
      assign();
    }, function () { backoff(proveWork, "The check could not start."); });
  }

  function assign() {
    var id = stored() || newRequestId();
    remember(id);
    var body = withAccessCode({ requestId: id });
    if (powSolution) body.pow = powSolution;
    call("POST", "/assign/" + encodeURIComponent(eventId), body).then(function (answer) {
      if (answer.status !== 200 && answer.status !== 201) { handleProblem(answer, assign); return; }
      failures = 0;
      powSolution = null; powRounds = 0;  // used: a later place needs a new one
      remember(answer.data.requestId);  // a logged-in visitor may already hold a place elsewhere
      show(answer.data);
      say("You have a place in line.");
      later(Math.min(answer.data.pollAfterSeconds || 2, 2), check);
    }, function () { backoff(assign, "Connection lost."); });
  }

  if (!EVENT_ID_RE.test(eventId)) { say("This waiting-room address is not valid."); return; }
  if (stored()) check(); else assign();
})();
