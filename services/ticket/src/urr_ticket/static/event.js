// The event page: log in, join the Tier-2 queue, pick a seat, reserve, follow the outcome.
// Same-origin API calls only; the server sets every token cookie (HttpOnly), and the entry
// token the queue answers with is kept in memory and sent as its header, never stored.
// Every string comes from messages.json (ko, en; the browser's languages choose, the switch
// overrides). Every problem an API answers is said in words; a declined card can be paid
// again while the seat is held (attempt n+1 of the same hold), an expired hold goes back to
// the seat map. While waiting the page says how the line is ordered (the queueing method);
// once admitted it shows the buyer's receipt from the public admission log (/v1/log: leaf,
// inclusion proof, signed tree head), to download or copy exactly as urr-verify reads it.
(function () {
  "use strict";
  var FINAL = ["confirmed", "declined", "expired", "cancelled"];
  var RETRYABLE = ["card_declined"];
  var MAX_ATTEMPTS = 5;
  var LANGUAGES = ["en", "ko"];
  var LANG_KEY = "urr-lang";
  var eventId = decodeURIComponent(location.pathname.split("/")[2] || "");
  var entryToken = null;
  var chosenSeat = null;
  var holdUntil = 0;  // ms since the epoch when the chosen seat's hold ends
  var holdTimer = null;
  var attempt = 1;
  var catalogue = {};
  var lang = "en";
  var eventName = null;
  var lastStatus = null;
  var lastOutcome = null;  // the last reservation answer shown, re-rendered on a switch
  var queueMethod = null;  // how the line is ordered, as the queue answered
  var queueNumber = null;  // the number the admission log names this stay's admission by
  var receipt = null;  // {text, leaf, size, root} once the log has it
  var receiptNote = null;  // a message key shown while there is no receipt
  var copyNote = null;
  var el = function (id) { return document.getElementById(id); };
  var show = function (id) { el(id).hidden = false; };
  var hide = function (id) { el(id).hidden = true; };
  var wait = function (seconds) {
    return new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
  };

  // -- Language ---------------------------------------------------------------------------
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

  function t(key, params) {
    var text = (catalogue[lang] || {})[key];
    if (text === undefined) text = (catalogue.en || {})[key];
    if (text === undefined) text = key;
    return String(text).replace(/\{(\w+)\}/g, function (whole, name) {
      return params && params[name] !== undefined ? String(params[name]) : whole;
    });
  }
  function has(key) { return (catalogue.en || {})[key] !== undefined; }

  // Params may hold functions (words that depend on the language): resolved when shown.
  function resolve(params) {
    var out = {};
    Object.keys(params || {}).forEach(function (k) {
      out[k] = typeof params[k] === "function" ? params[k]() : params[k];
    });
    return out;
  }
  function say(key, params) {
    lastStatus = [key, params || {}];
    el("status").textContent = t(key, resolve(params));
  }

  function time(ms) { return new Date(ms).toLocaleTimeString(lang === "ko" ? "ko-KR" : "en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" }); }

  function render() {
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-msg]").forEach(function (node) {
      node.textContent = t(node.getAttribute("data-msg"));
    });
    document.querySelectorAll(".lang").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-lang") === lang));
    });
    if (eventName !== null) el("event-name").textContent = eventName;
    document.title = (eventName ? eventName + " · " : "") + t("title");
    document.querySelectorAll(".seat").forEach(labelSeat);
    if (lastStatus) el("status").textContent = t(lastStatus[0], resolve(lastStatus[1]));
    if (lastOutcome) showOutcome(lastOutcome);
    if (chosenSeat) el("retry").textContent = t("result.retry", { seat: chosenSeat });
    showMethod();
    renderReceipt();
  }

  function switchLanguage(next) {
    if (LANGUAGES.indexOf(next) === -1) return;
    lang = next;
    try { localStorage.setItem(LANG_KEY, next); } catch (e) { /* private mode */ }
    render();
  }

  // -- API ----------------------------------------------------------------------------------
  // One API call; a 429 waits as told (longer each time in a row), a lost connection backs
  // off, anything else is returned for the caller to read.
  function api(method, path, body, tries) {
    tries = tries || 0;
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: {} };
    if (body) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    if (entryToken) init.headers["X-Queue-Entry-Token"] = entryToken;
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.status === 429 && tries < 6) {
          var told = Number(response.headers.get("Retry-After")) || 1;
          var delay = Math.max(told, Math.pow(2, tries));
          say("busy.retry", { seconds: delay });
          return wait(delay).then(function () { return api(method, path, body, tries + 1); });
        }
        return { status: response.status, data: data };
      });
    }, function () {
      if (tries >= 6) return { status: 0, data: { code: "connection" } };
      say("connection.retry");
      return wait(Math.pow(2, tries)).then(function () { return api(method, path, body, tries + 1); });
    });
  }

  // The words for a refused answer: the catalogue's for its code, else a general sentence
  // naming the code, so no refusal is ever silent.
  function why(answer) {
    var code = (answer.data && answer.data.code) || (answer.status === 0 ? "connection" : "http_" + answer.status);
    return function () { return has("error." + code) ? t("error." + code) : t("error.generic", { code: code }); };
  }

  // -- Journey --------------------------------------------------------------------------------
  function credentials() { return { email: el("email").value, password: el("password").value }; }

  function loggedIn() { hide("login"); show("queue"); say("login.done"); el("join").focus(); }

  function logIn(event) {
    if (event) event.preventDefault();
    return api("POST", "/api/v1/auth/login", credentials()).then(function (answer) {
      if (answer.status === 200) loggedIn(); else say("login.failed", { why: why(answer) });
    });
  }

  function register() {
    api("POST", "/api/v1/auth/register", credentials()).then(function (answer) {
      if (answer.status === 201 || answer.status === 409) return logIn();
      say("register.failed", { why: why(answer) });
    });
  }

  function admitted(answer) {
    entryToken = answer.entry_token || null;
    el("join").disabled = true;
    hide("queue");  // the turn has come: the seat map is what matters now
    show("seats");
    loadSeats();
    if (queueNumber !== null && !receipt) { show("receipt"); fetchReceipt(0); }
  }

  // -- The queueing method and the receipt ----------------------------------------------------
  function showMethod() {
    var node = el("queue-method");
    node.textContent = queueMethod && has("method." + queueMethod) ? t("method." + queueMethod) : "";
    node.hidden = !node.textContent;
  }

  // The claims of the signed tree head (a JWS): shown, not trusted; urr-verify checks them.
  function headClaims(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      return JSON.parse(atob(part)) || {};
    } catch (e) { return {}; }
  }

  function receiptFile() { return "receipt-" + eventId + "-" + receipt.leaf + ".json"; }

  function renderReceipt() {
    if (!receipt) {
      el("receipt-summary").textContent = receiptNote ? t(receiptNote) : "";
      return;
    }
    el("receipt-summary").textContent = t("receipt.summary", { leaf: receipt.leaf, size: receipt.size, root: receipt.root.slice(0, 16) });
    el("receipt-command").textContent = "urr-verify receipt " + receiptFile() + " --jwks " + location.origin + "/v1/log/jwks.json";
    el("receipt-copy-status").textContent = copyNote ? t(copyNote) : "";
  }

  function showReceipt(text) {
    var data;
    try { data = JSON.parse(text); } catch (e) { return false; }
    var head = headClaims(data.sth);
    receipt = { text: text, leaf: data.leafIndex, size: head.size, root: String(head.root || "") };
    var link = el("receipt-download");
    link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    link.setAttribute("download", receiptFile());
    link.hidden = false;
    el("receipt-copy").hidden = false;
    el("receipt-verify").hidden = false;
    renderReceipt();
    return true;
  }

  // The log appends an admission within seconds and signs a head every few: until then the
  // receipt is "not logged" (404) or "not signed" (422), so ask again, less often each time.
  function fetchReceipt(tries) {
    if (!receipt) { receiptNote = "receipt.waiting"; renderReceipt(); }
    var path = "/v1/log/" + encodeURIComponent(eventId) + "/receipt?ticket=" + encodeURIComponent(queueNumber);
    fetch(path, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      return response.text().then(function (text) { return { status: response.status, text: text }; });
    }, function () { return { status: 0, text: "" }; }).then(function (answer) {
      if (answer.status === 200 && showReceipt(answer.text)) return;
      if (tries < 30) { wait(Math.min(10, 1 + tries)).then(function () { fetchReceipt(tries + 1); }); return; }
      receiptNote = "receipt.unavailable";
      renderReceipt();
    });
  }

  function copyReceipt() {
    var done = function (key) { copyNote = key; renderReceipt(); };
    if (!navigator.clipboard) { done("receipt.copyFailed"); return; }
    navigator.clipboard.writeText(receipt.text).then(function () { done("receipt.copied"); }, function () { done("receipt.copyFailed"); });
  }

  function followQueue(answer) {
    if (answer.status !== 200 && answer.status !== 201) {
      say("queue.refused", { why: why(answer) });
      el("join").disabled = false;
      return;
    }
    var state = answer.data;
    if (typeof state.queue_number === "number") {
      queueNumber = state.queue_number;
      // Kept for this tab, so a reload after the admission still finds the receipt.
      try { sessionStorage.setItem("urr-queue-number:" + eventId, String(queueNumber)); } catch (e) { /* private mode */ }
    } else if (queueNumber === null) {
      try {
        var kept = sessionStorage.getItem("urr-queue-number:" + eventId);
        if (kept !== null && /^[0-9]+$/.test(kept)) queueNumber = Number(kept);
      } catch (e) { /* private mode */ }
    }
    if (state.queue_method) { queueMethod = state.queue_method; showMethod(); }
    if (state.status === "admitted") { admitted(state); return; }
    el("queue-status").textContent = t("queue.position", { position: state.position, ahead: state.ahead });
    wait(Math.max(1, Math.min(5, state.poll_after_seconds || 2))).then(function () {
      return api("GET", "/api/v1/queue/" + encodeURIComponent(eventId) + "/status");
    }).then(followQueue);
  }

  function join() {
    el("join").disabled = true;
    api("POST", "/api/v1/queue/" + encodeURIComponent(eventId) + "/enter").then(followQueue);
  }

  function labelSeat(button) {
    var state = button.disabled ? t("seat.taken") : t("seat.free");
    button.setAttribute("aria-label", button.dataset.seat + ", " + state);
  }

  // ``quiet``: a message about what just happened stays on the status line.
  function loadSeats(quiet) {
    api("GET", "/api/v1/seats/" + encodeURIComponent(eventId)).then(function (answer) {
      if (answer.status !== 200) { say("seats.unavailable", { why: why(answer) }); return; }
      var map = el("seat-map");
      map.textContent = "";
      answer.data.seats.forEach(function (seat) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "seat";
        button.textContent = seat.seatId;
        button.dataset.seat = seat.seatId;
        var mine = seat.seatId === chosenSeat && Date.now() < holdUntil;
        button.setAttribute("aria-pressed", String(mine));
        button.disabled = seat.state !== "free" && !mine;
        labelSeat(button);
        button.addEventListener("click", function () { hold(button); });
        map.appendChild(button);
      });
      el("reserve").disabled = !(chosenSeat && Date.now() < holdUntil);
      if (!quiet) say("seats.pick");
    });
  }

  // The hold ends at a known time (it is never extended): say so when it does, and go back
  // to the seat map instead of letting a reserve fail later.
  function watchHold() {
    if (holdTimer) clearTimeout(holdTimer);
    holdTimer = setTimeout(function () {
      if (!chosenSeat || Date.now() < holdUntil) return;
      holdExpired();
    }, Math.max(0, holdUntil - Date.now()) + 250);
  }

  function holdExpired() {
    var seat = chosenSeat;
    chosenSeat = null; holdUntil = 0; attempt = 1;
    hide("result"); hide("retry"); show("seats");
    say("seats.holdExpired", { seat: seat });
    loadSeats(true);
  }

  function hold(button) {
    var seatId = button.dataset.seat;
    var path = "/api/v1/seats/" + encodeURIComponent(eventId) + "/" + encodeURIComponent(seatId) + "/hold";
    api("POST", path).then(function (answer) {
      if (answer.status !== 200) { say("seats.holdFailed", { seat: seatId, why: why(answer) }); loadSeats(true); return; }
      // One seat at a time on this page: give the previous one back (holds count towards the
      // event's per-account limit, and a hold is never extended, so there is no use in
      // keeping it).
      if (chosenSeat && chosenSeat !== seatId) {
        api("DELETE", "/api/v1/seats/" + encodeURIComponent(eventId) + "/" + encodeURIComponent(chosenSeat) + "/hold");
      }
      chosenSeat = seatId;
      attempt = 1;
      holdUntil = answer.data.expiresAtMs;
      watchHold();
      document.querySelectorAll(".seat").forEach(function (b) { b.setAttribute("aria-pressed", "false"); });
      button.setAttribute("aria-pressed", "true");
      el("reserve").disabled = false;
      say("seats.held", { seat: seatId, until: function () { return time(holdUntil); } });
    });
  }

  function reserve() {
    el("reserve").disabled = true;
    el("retry").disabled = true;
    api("POST", "/api/v1/reservations/" + encodeURIComponent(eventId), { seatIds: [chosenSeat], attempt: attempt })
      .then(function (answer) {
        el("retry").disabled = false;
        if (answer.status !== 202 && answer.status !== 200 && answer.status !== 201) {
          var code = answer.data && answer.data.code;
          if (code === "seat_not_held" || code === "retry_not_allowed") { holdExpired(); return; }
          say("result.refused", { why: why(answer) });
          el("reserve").disabled = false;
          return;
        }
        hide("seats"); hide("retry"); hide("other-seat"); hide("reason"); show("result");
        lastOutcome = { status: "pending", reason: null };
        showOutcome(lastOutcome);
        el("reservation-id").textContent = answer.data.reservationId;
        say("result.sent");
        follow(answer.data.reservationId);
      });
  }

  function retry() {
    attempt += 1;
    reserve();
  }

  function otherSeat() {
    hide("result"); lastOutcome = null; chosenSeat = null; holdUntil = 0; attempt = 1;
    show("seats"); loadSeats();
  }

  // The outcome in words: the status, and for a decline or an expiry why, and what the buyer
  // can do next (pay again while the seat is held, or pick a seat again).
  function showOutcome(outcome) {
    var status = outcome.status;
    el("outcome").dataset.status = status;
    el("outcome").textContent = t("outcome." + status);
    if (FINAL.indexOf(status) === -1) return;
    var reason = outcome.reason;
    var text = null;
    var canRetry = false;
    if (status === "declined" && RETRYABLE.indexOf(reason) !== -1) {
      if (attempt >= MAX_ATTEMPTS) text = t("reason.card_declined.last");
      else if (Date.now() >= holdUntil) text = t("reason.card_declined.late");
      else { text = t("reason.card_declined", { until: time(holdUntil) }); canRetry = true; }
    } else if (reason) {
      text = has("reason." + reason) ? t("reason." + reason) : t("reason.other", { reason: reason });
    }
    el("reason").hidden = !text;
    el("reason").textContent = text || "";
    el("attempt").hidden = status !== "declined" || RETRYABLE.indexOf(reason) === -1;
    el("attempt").textContent = t("result.attempt", { n: attempt, max: MAX_ATTEMPTS });
    el("retry").hidden = !canRetry;
    el("retry").textContent = t("result.retry", { seat: chosenSeat });
    el("other-seat").hidden = status === "confirmed" || canRetry;
  }

  // The owner's read of a reservation needs no entry token: the queue ends the session (and
  // revokes the token) as soon as the outcome is final.
  function follow(reservationId) {
    var path = "/api/v1/events/" + encodeURIComponent(eventId) + "/reservations/" + encodeURIComponent(reservationId);
    api("GET", path).then(function (answer) {
      if (answer.status !== 200) {
        say("result.refused", { why: why(answer) });
        wait(3).then(function () { follow(reservationId); });
        return;
      }
      lastOutcome = { status: answer.data.status, reason: answer.data.reason || null };
      showOutcome(lastOutcome);
      var status = lastOutcome.status;
      if (FINAL.indexOf(status) === -1) { wait(2).then(function () { follow(reservationId); }); return; }
      say("final." + status, { seat: chosenSeat });
      if (status === "expired") {
        // The hold is gone with the booking: back to the seat map, saying why.
        wait(0).then(function () {
          var seat = chosenSeat;
          chosenSeat = null; holdUntil = 0; attempt = 1;
          show("seats"); loadSeats(true);
          say("seats.holdExpired", { seat: seat });
        });
      } else if (!el("retry").hidden) {
        el("retry").focus();
      }
    });
  }

  document.querySelectorAll(".lang").forEach(function (button) {
    button.addEventListener("click", function () { switchLanguage(button.getAttribute("data-lang")); });
  });
  el("login-form").addEventListener("submit", logIn);
  el("register-button").addEventListener("click", register);
  el("join").addEventListener("click", join);
  el("reserve").addEventListener("click", reserve);
  el("retry").addEventListener("click", retry);
  el("other-seat").addEventListener("click", otherSeat);
  el("receipt-copy").addEventListener("click", copyReceipt);

  lang = pickLanguage();
  fetch("/site/assets/messages.json", { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : {}; })
    .catch(function () { return {}; })
    .then(function (loaded) {
      catalogue = loaded || {};
      render();
      return api("GET", "/api/v1/events/" + encodeURIComponent(eventId));
    })
    .then(function (answer) {
      if (answer.status !== 200) {
        eventName = t("noEvent");
        el("event-name").textContent = eventName;
        say("page.failed", { why: why(answer) });
        return;
      }
      eventName = answer.data.name || eventId;
      render();
      show("login");
    });
})();
