// The waiting page: takes a place, polls its check, and returns the visitor when admitted.
// No framework; the server sets the admission cookie (HttpOnly), this script never sees it.
// Every string comes from messages.json (ko, en): the browser's languages (what it sends as
// Accept-Language) choose, the switch on the page overrides and is remembered. The event's
// look (name, logo, accent, headline, message) and queueing method come from the operator's
// short-lived document /vwr/events/{eventId}.json, which also names a scheduled pre-queue's
// times (prequeueStart, saleStart): before the opening the page counts down and calls again
// just after it, during the pre-queue it says what happens at sale start.
(function () {
  "use strict";
  var API = "/vwr-api/vwr";
  var ASSETS = "/vwr/assets/v2/";
  var LANGUAGES = ["en", "ko"];
  var LANG_KEY = "urr-lang";
  var MAX_BACKOFF_S = 60;
  // After the pre-queue's opening the page asks again within this spread (ms), so a crowd's
  // first calls do not all land in the same instant; no call is made before it.
  var PREQUEUE_SPREAD_MS = [300, 3000];
  var PREQUEUE_RETRY_MAX_MS = 10000;
  var EVENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
  var UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  var COLOUR_RE = /^#[0-9a-f]{6}$/i;
  var METHODS = ["fifo", "random", "passthrough", "reject"];
  // Problems that mean the event takes nobody new (the "reject" method's answers).
  var CLOSED_CODES = ["queue_rejected", "room_closed", "event_closed", "sold_out"];

  var eventId = decodeURIComponent(location.pathname.split("/")[2] || "");
  var storageKey = "urr-vwr:" + eventId;
  var failures = 0;
  var firstAhead = null;
  var powSolution = null;  // the proof of work sent with assign, when the event asks for one
  var powRounds = 0;
  var catalogue = {};
  var lang = "en";
  var page = {};  // the operator's event document (may stay empty)
  var method = "fifo";
  var lastAnswer = null;  // the last check/assign answer shown, re-rendered on a language switch
  var lastStatus = null;  // [key, params] of the last status line
  var codeWhy = null;  // catalogue key of the access-code explanation shown
  var closed = false;  // the "reject" method's view: the sale takes nobody new
  var prequeueAt = null;  // epoch ms the pre-queue opens (the document or a 409 names it)
  var saleAt = null;  // epoch ms the sale starts: the pre-queue's draw
  var skewMs = 0;  // the API's clock minus this browser's, when they differ by seconds
  var joinAt = null;  // when (API clock) the page asks for a place again, before the opening
  var ticker = null;
  var el = function (id) { return document.getElementById(id); };

  // -- Language -------------------------------------------------------------------------
  function pickLanguage() {
    try {
      var chosen = localStorage.getItem(LANG_KEY);
      if (LANGUAGES.indexOf(chosen) !== -1) return chosen;
    } catch (e) { /* private mode */ }
    var wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
    for (var i = 0; i < wanted.length; i++) {
      var base = String(wanted[i]).toLowerCase().split("-")[0];
      if (LANGUAGES.indexOf(base) !== -1) return base;
    }
    return "en";
  }

  // The string ``key`` in the page's language (English, then the key itself, as fallbacks),
  // with {name} placeholders filled from ``params``.
  function t(key, params) {
    var table = catalogue[lang] || {};
    var text = table[key] !== undefined ? table[key] : (catalogue.en || {})[key];
    if (text === undefined) text = key;
    return String(text).replace(/\{(\w+)\}/g, function (whole, name) {
      return params && params[name] !== undefined ? String(params[name]) : whole;
    });
  }

  // The operator's text for the page's language, else the other one, else null.
  function operatorText(value) {
    if (!value || typeof value !== "object") return null;
    return value[lang] || value.en || value.ko || null;
  }

  function render() {
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-msg]").forEach(function (node) {
      node.textContent = t(node.getAttribute("data-msg"));
    });
    document.querySelectorAll(".lang").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-lang") === lang));
    });
    var name = typeof page.name === "string" ? page.name : "";
    el("event-name").textContent = name;
    document.title = name ? name + " · " + t("title") : t("title");
    var headline = operatorText(page.headline);
    if (closed) el("room-title").textContent = t("closed.heading");
    else if (headline) el("room-title").textContent = headline;
    var message = operatorText(page.message);
    el("operator-message").hidden = !message;
    el("operator-message").textContent = message || "";
    el("method-text").textContent = methodText();
    renderProof();
    if (lastAnswer) show(lastAnswer);
    renderPrequeue();
    if (lastStatus) {
      // An estimate in the status line is words too: put it in the new language.
      if (lastAnswer && lastStatus[1].eta !== undefined) lastStatus[1].eta = formatEta(lastAnswer.etaSeconds);
      if (lastStatus[1].at !== undefined) lastStatus[1].time = localTime(lastStatus[1].at);
      el("status").textContent = t(lastStatus[0], lastStatus[1]);
    }
    if (codeWhy) el("access-code-why").textContent = t(codeWhy);
  }

  // A drawn order (the random method, a pre-queue's shuffle) links to what proves it: the
  // seed (or roster) and the admission log, public under /v1/log/{eventId}/ on this site.
  // With the random method the waiter's own name in the draw is shown too: the log names a
  // place by SHA-256 of its request id (never the id: it is the place's key).
  var aliasShown = null;
  function renderProof() {
    var random = method === "random";
    var verifiable = random || prequeueAt !== null;
    el("method-proof").hidden = !verifiable;
    if (!verifiable) return;
    var log = "/v1/log/" + encodeURIComponent(eventId);
    el("proof-seed").href = log + (random ? "/order-seed" : "/prequeue");
    el("proof-log").href = log + "/sth";
    var id = stored();
    if (!random || !id || !(window.crypto && crypto.subtle)) { el("proof-alias").textContent = ""; return; }
    if (aliasShown && aliasShown[0] === id) {
      el("proof-alias").textContent = t("method.proof.alias", { alias: aliasShown[1] });
      return;
    }
    crypto.subtle.digest("SHA-256", new TextEncoder().encode(id)).then(function (digest) {
      var hex = Array.prototype.map.call(new Uint8Array(digest), function (x) {
        return (x + 0x100).toString(16).slice(1);
      }).join("");
      aliasShown = [id, hex.slice(0, 16)];
      el("proof-alias").textContent = t("method.proof.alias", { alias: aliasShown[1] });
    }, function () { /* no digest: the links still stand */ });
  }

  // A pre-queue event's line is the shuffled pre-queue, then first come, first served.
  function methodText() {
    return t(prequeueAt !== null && method === "fifo" ? "method.prequeue" : "method." + method);
  }

  function switchLanguage(next) {
    if (LANGUAGES.indexOf(next) === -1) return;
    lang = next;
    try { localStorage.setItem(LANG_KEY, next); } catch (e) { /* private mode */ }
    render();
  }

  // -- The operator's look ------------------------------------------------------------------
  function safeLogo(value) {
    if (typeof value !== "string" || value.length > 512) return null;
    if (/^https:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?\//.test(value)) return value;
    if (value.charAt(0) === "/" && value.charAt(1) !== "/" && value.indexOf("\\") === -1) return value;
    return null;
  }

  function applyPage(doc) {
    page = doc && typeof doc === "object" ? doc : {};
    if (METHODS.indexOf(page.queueMethod) !== -1) method = page.queueMethod;
    notePrequeue(page);
    var accent = COLOUR_RE.test(page.accentText || "") ? page.accentText : null;
    if (accent) document.documentElement.style.setProperty("--accent", accent);
    // The operator's own colour, unchanged, where it only decorates (the top rule, the
    // message's bar); text and controls use the AA-checked one above.
    if (COLOUR_RE.test(page.accent || "")) document.documentElement.style.setProperty("--brand", page.accent);
    var logo = safeLogo(page.logo);
    if (logo) {
      el("logo").src = logo;
      el("logo").alt = "";  // the event's name sits beside it; the image adds nothing to read
      el("logo").hidden = false;
    }
  }

  // -- Place keeping --------------------------------------------------------------------------
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

  function say(key, params) {
    lastStatus = [key, params || {}];
    el("status").textContent = t(key, params);
  }

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

  // The estimate as a range: the line's pace is measured over the last minutes and changes
  // during a sale, so a single figure would promise more than is known. The range runs from
  // three quarters to one and a half times the point estimate.
  function formatEta(seconds) {
    if (seconds === null || seconds === undefined || seconds < 0) return t("eta.unknown");
    if (seconds * 1.5 < 60) return t("eta.soon");
    var low = Math.max(1, Math.floor(seconds * 0.75 / 60));
    var high = Math.max(low + 1, Math.ceil(seconds * 1.5 / 60));
    if (high < 120) return t("eta.minutes", { low: low, high: high });
    return t("eta.hours", { low: Math.round(low / 6) / 10, high: Math.round(high / 6) / 10 });
  }

  // A random line has no count ahead and no estimate until the draw picks a place.
  function drawn(answer) { return answer.ahead === null || answer.ahead === undefined; }

  function show(answer) {
    lastAnswer = answer;
    el("position").textContent = answer.position;
    if (drawn(answer)) {
      el("ahead").textContent = t("figure.drawn");
      el("eta").textContent = t("eta.drawn");
      el("eta-note").textContent = t("eta.note.random");
      el("progress").setAttribute("aria-valuenow", answer.admitted ? "100" : "0");
      el("progress-fill").style.width = answer.admitted ? "100%" : "0%";
      return;
    }
    el("ahead").textContent = answer.ahead;
    el("eta").textContent = formatEta(answer.etaSeconds);
    var known = answer.etaSeconds !== null && answer.etaSeconds !== undefined && answer.etaSeconds >= 0;
    var soon = known && answer.etaSeconds * 1.5 < 60;  // "under a minute" needs no caveat
    el("eta-note").textContent = soon ? "" : t(known ? "eta.note" : "eta.note.unknown");
    if (firstAhead === null || answer.ahead > firstAhead) firstAhead = answer.ahead;
    var done = firstAhead > 0 ? Math.round(100 * (firstAhead - answer.ahead) / firstAhead) : 0;
    if (answer.admitted) done = 100;
    el("progress").setAttribute("aria-valuenow", String(done));
    el("progress-fill").style.width = done + "%";
  }

  // -- Scheduled pre-queue (issue 19) ---------------------------------------------------------
  function moment(value) {
    var ms = typeof value === "string" ? Date.parse(value) : NaN;
    return isNaN(ms) ? null : ms;
  }

  function notePrequeue(data) {
    if (!data) return;
    var opens = moment(data.prequeueStart);
    var sale = moment(data.saleStart);
    if (opens !== null) prequeueAt = opens;
    if (sale !== null) saleAt = sale;
  }

  // The API's Date header (whole seconds): only a difference of seconds is taken as the
  // browser's clock being off, so a right clock's countdown does not jump.
  function noteClock(header) {
    var ms = header ? Date.parse(header) : NaN;
    if (isNaN(ms)) return;
    var diff = ms + 500 - Date.now();
    skewMs = Math.abs(diff) > 2000 ? diff : 0;
  }
  function apiNow() { return Date.now() + skewMs; }

  // A moment in the visitor's own time zone and the page's language, with the zone named.
  function localTime(ms) {
    var wanted = String(navigator.language || "");
    var tag = wanted.toLowerCase().split("-")[0] === lang ? wanted : (lang === "ko" ? "ko-KR" : "en-GB");
    var options = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
      second: "2-digit", hour12: false, timeZoneName: "short" };
    try { return new Date(ms).toLocaleString(tag, options); }
    catch (e) { return new Date(ms).toString(); }
  }

  function countdown(ms) {
    var s = Math.max(0, Math.ceil(ms / 1000));
    var days = Math.floor(s / 86400);
    s -= days * 86400;
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    var rest = (h ? h + ":" + two(m) : String(m)) + ":" + two(sec);
    return days ? t("countdown.days", { days: days, rest: rest }) : rest;
  }

  // "before" the opening, "during" the pre-queue, null otherwise (none, or the sale started).
  function prequeuePhase() {
    if (prequeueAt === null || saleAt === null) return null;
    var now = apiNow();
    if (now < prequeueAt) return "before";
    return now < saleAt ? "during" : null;
  }

  function renderPrequeue() {
    var phase = closed ? null : prequeuePhase();
    el("prequeue").hidden = !phase;
    if (!closed) el("waiting-view").hidden = phase === "before";  // no place to show yet
    if (!phase) return;
    var at = phase === "before" ? prequeueAt : saleAt;
    el("prequeue-title").textContent = t("prequeue.heading." + phase);
    el("prequeue-text").textContent = t("prequeue." + phase, { time: localTime(at) });
    el("prequeue-countdown").textContent =
      t("prequeue.countdown." + phase, { countdown: countdown(at - apiNow()) });
  }

  // Once a second: the countdown, and the call just after the opening (never one before).
  function tick() {
    renderPrequeue();
    if (joinAt !== null && apiNow() >= joinAt) {
      joinAt = null;
      say("status.taking");
      assign();
    }
    if (joinAt === null && prequeuePhase() === null && ticker !== null) {
      clearInterval(ticker);
      ticker = null;
    }
  }
  function startTicker() {
    if (ticker === null) ticker = setInterval(tick, 1000);
    tick();
  }

  // 409 prequeue_not_open: wait for the opening the answer names, then ask once, shortly after.
  // An API clock still short of it (this browser's is ahead) gets a few seconds more each time.
  function waitForPrequeue(answer) {
    notePrequeue(answer.data);
    if (prequeueAt === null) { backoff(assign, "status.busyRetry"); return; }
    failures += 1;
    var spread = PREQUEUE_SPREAD_MS[0] + Math.random() * (PREQUEUE_SPREAD_MS[1] - PREQUEUE_SPREAD_MS[0]);
    var now = apiNow();
    joinAt = prequeueAt > now ? prequeueAt + spread :
      now + Math.min(PREQUEUE_RETRY_MAX_MS, 1000 * Math.pow(2, failures - 1)) + spread;
    say("status.prequeueSoon", { time: localTime(prequeueAt), at: prequeueAt });
    startTicker();
  }
  // -- end of the pre-queue block

  function later(seconds, step) {
    var jittered = seconds * (0.8 + Math.random() * 0.4);  // spread the crowd's polls
    setTimeout(step, Math.max(0.5, jittered) * 1000);
  }

  function backoff(step, key) {
    failures += 1;
    var wait = Math.min(MAX_BACKOFF_S, Math.pow(2, failures));
    say(key, { seconds: Math.round(wait) });
    later(wait, step);
  }

  function call(method, path, body) {
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: {} };
    if (body) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(API + path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        noteClock(response.headers.get("Date"));
        return { status: response.status, data: data, retryAfter: response.headers.get("Retry-After") };
      });
    });
  }

  function goIn(key) {
    say(key || "status.turn");
    location.replace(destination);
  }

  // The "reject" method: nobody new is taken, so the page says so and stops.
  function showClosed() {
    method = "reject";
    closed = true;
    document.body.classList.add("closed");
    ["waiting-view", "access-code", "rules", "method"].forEach(function (id) { el(id).hidden = true; });
    forget();
    say("closed.body");
    render();
  }

  // Answers may name the method in use (the event's admission settings); the page follows.
  function noteMethod(data) {
    if (data && METHODS.indexOf(data.queueMethod) !== -1 && data.queueMethod !== method) {
      method = data.queueMethod;
      el("method-text").textContent = methodText();
    }
    renderProof();
  }

  // -- Presale access code (issue 15): asked for when the event requires one; a refusal says why.
  var accessCode = null;
  function withAccessCode(body) { if (accessCode) body.accessCode = accessCode; return body; }
  function askForCode(problem) {
    var form = el("access-code");
    form.hidden = false;
    var known = "code." + problem.code;
    codeWhy = problem.code === "access_code_required" && !accessCode ? "code.required" :
      (t(known) !== known ? known : "code.access_code_invalid");
    el("access-code-why").textContent = t(codeWhy);
    say("code.needed");
    form.onsubmit = function (e) {
      e.preventDefault();
      accessCode = el("access-code-input").value.trim();
      form.hidden = true;
      codeWhy = null;
      say("code.checking");
      assign();
    };
    el("access-code-input").focus();
  }
  // -- end of the access code block

  function handleProblem(answer, step) {
    var code = answer.data && answer.data.code;
    noteMethod(answer.data);
    if (CLOSED_CODES.indexOf(code) !== -1 || (answer.data && answer.data.queueMethod === "reject")) {
      showClosed(); return;
    }
    if (code && code.indexOf("pow_") === 0) { proveWork(); return; }
    if (code && code.indexOf("access_code_") === 0) { askForCode(answer.data); return; }
    if (code === "room_inactive") { goIn(method === "passthrough" ? "status.passthrough" : "status.turn"); return; }
    if (code === "position_not_found" || code === "position_abandoned" || code === "place_spent") {
      forget(); say("status.lapsed"); assign(); return;
    }
    if (code === "event_not_found" || code === "bad_event_id") { say("status.noRoom"); return; }
    if (code === "prequeue_not_open") { waitForPrequeue(answer); return; }
    if (answer.status === 429) {
      // Throttled: never sooner than told, and longer on each refusal in a row, so a
      // throttled crowd does not come back all at once.
      failures += 1;
      var told = Number(answer.retryAfter) || 1;
      var wait = Math.min(MAX_BACKOFF_S, Math.max(told, Math.pow(2, failures)));
      say(code === "too_many_places" ? "status.tooManyPlaces" : "status.busyRetry", { seconds: Math.round(wait) });
      later(wait, step);
      return;
    }
    backoff(step, "status.busyRetry");
  }

  function check() {
    var id = stored();
    if (!id) { assign(); return; }
    call("GET", "/check/" + encodeURIComponent(eventId) + "/" + id).then(function (answer) {
      if (answer.status !== 200) { handleProblem(answer, check); return; }
      failures = 0;
      noteMethod(answer.data);
      show(answer.data);
      notePrequeue(answer.data);
      if (answer.data.admitted) { goIn(answer.data.prequeue ? "status.prequeueIn" : null); return; }
      if (drawn(answer.data)) say("status.waitingRandom", { position: answer.data.position });
      else if (answer.data.ahead === 0) say("status.next");
      else say("status.waiting", { position: answer.data.position, ahead: answer.data.ahead, eta: formatEta(answer.data.etaSeconds) });
      later(answer.data.pollAfterSeconds || 5, check);
    }, function () { backoff(check, "status.lostRetry"); });
  }

  // The event asks for a proof of work (pow.js solves it off the page's thread), then assign.
  function proveWork() {
    powRounds += 1;
    if (!window.urrPow || !window.Worker || powRounds > 3) { say("pow.failed"); return; }
    say("pow.label");
    window.urrPow.solve(API, eventId).then(function (solution) {
      powSolution = solution;
      assign();
    }, function () { backoff(proveWork, "pow.retry"); });
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
      noteMethod(answer.data);
      notePrequeue(answer.data);
      show(answer.data);
      if (answer.data.prequeue && saleAt !== null) {
        say("status.prequeue", { time: localTime(saleAt), at: saleAt });
        startTicker();
      } else say("status.placed", { position: answer.data.position });
      later(Math.min(answer.data.pollAfterSeconds || 2, 2), check);
    }, function () { backoff(assign, "status.lostRetry"); });
  }

  function getJson(url, init) {
    return fetch(url, init).then(function (response) {
      return response.ok ? response.json() : null;
    }).catch(function () { return null; });
  }

  document.querySelectorAll(".lang").forEach(function (button) {
    button.addEventListener("click", function () { switchLanguage(button.getAttribute("data-lang")); });
  });
  lang = pickLanguage();

  var valid = EVENT_ID_RE.test(eventId);
  Promise.all([
    getJson(ASSETS + "messages.json", { credentials: "same-origin" }),
    valid ? getJson("/vwr/events/" + encodeURIComponent(eventId) + ".json", { credentials: "same-origin" }) : null
  ]).then(function (loaded) {
    catalogue = loaded[0] || {};
    applyPage(loaded[1]);
    render();
    if (!valid) { say("status.badAddress"); return; }
    if (method === "reject") { showClosed(); return; }
    say("status.taking");
    if (prequeueAt !== null) startTicker();
    if (stored()) check(); else assign();
  });
})();
