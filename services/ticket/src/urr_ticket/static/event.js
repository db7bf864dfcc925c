// The event page: log in, join the Tier-2 queue, pick a seat, reserve, follow the outcome.
// Same-origin API calls only; the server sets every token cookie (HttpOnly), and the entry
// token the queue answers with is kept in memory and sent as its header, never stored.
(function () {
  "use strict";
  var FINAL = ["confirmed", "declined", "expired", "cancelled"];
  var eventId = decodeURIComponent(location.pathname.split("/")[2] || "");
  var entryToken = null;
  var chosenSeat = null;
  var el = function (id) { return document.getElementById(id); };
  var show = function (id) { el(id).hidden = false; };
  var hide = function (id) { el(id).hidden = true; };
  var say = function (text) { el("status").textContent = text; };
  var wait = function (seconds) {
    return new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
  };

  // One API call; a 429 waits as told (longer each time in a row), a lost connection backs
  // off, anything else is returned for the caller to read.
  function api(method, path, body, attempt) {
    attempt = attempt || 0;
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: {} };
    if (body) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    if (entryToken) init.headers["X-Queue-Entry-Token"] = entryToken;
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.status === 429 && attempt < 6) {
          var told = Number(response.headers.get("Retry-After")) || 1;
          say("Busy; trying again in " + Math.max(told, Math.pow(2, attempt)) + " s.");
          return wait(Math.max(told, Math.pow(2, attempt))).then(function () {
            return api(method, path, body, attempt + 1);
          });
        }
        return { status: response.status, data: data };
      });
    }, function () {
      if (attempt >= 6) return { status: 0, data: { detail: "the connection is lost" } };
      say("Connection lost; trying again…");
      return wait(Math.pow(2, attempt)).then(function () { return api(method, path, body, attempt + 1); });
    });
  }

  function problem(answer) {
    return (answer.data && (answer.data.detail || answer.data.title)) || "HTTP " + answer.status;
  }

  function credentials() {
    return { email: el("email").value, password: el("password").value };
  }

  function loggedIn() {
    hide("login"); show("queue"); say("Logged in. Join the queue to book.");
  }

  function logIn(event) {
    if (event) event.preventDefault();
    return api("POST", "/api/v1/auth/login", credentials()).then(function (answer) {
      if (answer.status === 200) loggedIn(); else say("Login failed: " + problem(answer));
    });
  }

  function register() {
    api("POST", "/api/v1/auth/register", credentials()).then(function (answer) {
      if (answer.status === 201 || answer.status === 409) return logIn();
      say("Registration failed: " + problem(answer));
    });
  }

  function admitted(answer) {
    entryToken = answer.entry_token || null;
    el("queue-status").textContent = "It is your turn.";
    el("join").disabled = true;
    show("seats");
    loadSeats();
  }

  function followQueue(answer) {
    if (answer.status !== 200 && answer.status !== 201) {
      el("queue-status").textContent = "The queue refused: " + problem(answer);
      el("join").disabled = false;
      return;
    }
    var state = answer.data;
    if (state.status === "admitted") { admitted(state); return; }
    el("queue-status").textContent = "Position " + state.position + " (" + state.ahead + " ahead).";
    wait(Math.max(1, Math.min(5, state.poll_after_seconds || 2))).then(function () {
      return api("GET", "/api/v1/queue/" + encodeURIComponent(eventId) + "/status");
    }).then(followQueue);
  }

  function join() {
    el("join").disabled = true;
    api("POST", "/api/v1/queue/" + encodeURIComponent(eventId) + "/enter").then(followQueue);
  }

  function loadSeats() {
    api("GET", "/api/v1/seats/" + encodeURIComponent(eventId)).then(function (answer) {
      if (answer.status !== 200) { say("The seat map is unavailable: " + problem(answer)); return; }
      var map = el("seat-map");
      map.textContent = "";
      answer.data.seats.forEach(function (seat) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "seat";
        button.textContent = seat.seatId;
        button.dataset.seat = seat.seatId;
        button.setAttribute("aria-pressed", "false");
        button.disabled = seat.state !== "free";
        button.addEventListener("click", function () { hold(button); });
        map.appendChild(button);
      });
      say("Pick a free seat.");
    });
  }

  function hold(button) {
    var seatId = button.dataset.seat;
    var path = "/api/v1/seats/" + encodeURIComponent(eventId) + "/" + encodeURIComponent(seatId) + "/hold";
    api("POST", path).then(function (answer) {
      if (answer.status !== 200) { say("Seat " + seatId + ": " + problem(answer)); loadSeats(); return; }
      // One seat at a time on this page: give the previous one back (holds count towards the
      // event's per-account limit, and a hold is never extended, so there is no use in
      // keeping it).
      if (chosenSeat && chosenSeat !== seatId) {
        api("DELETE", "/api/v1/seats/" + encodeURIComponent(eventId) + "/" + encodeURIComponent(chosenSeat) + "/hold");
      }
      chosenSeat = seatId;
      document.querySelectorAll(".seat").forEach(function (b) { b.setAttribute("aria-pressed", "false"); });
      button.setAttribute("aria-pressed", "true");
      el("reserve").disabled = false;
      var until = new Date(answer.data.expiresAtMs).toLocaleTimeString();
      say("Seat " + seatId + " is held for you until " + until + ".");
    });
  }

  function reserve() {
    el("reserve").disabled = true;
    api("POST", "/api/v1/reservations/" + encodeURIComponent(eventId), { seatIds: [chosenSeat] })
      .then(function (answer) {
        if (answer.status !== 202 && answer.status !== 200 && answer.status !== 201) {
          say("The reservation was refused: " + problem(answer)); el("reserve").disabled = false; return;
        }
        hide("seats"); show("result");
        el("reservation-id").textContent = answer.data.reservationId;
        say("Reservation sent; waiting for the outcome…");
        follow(answer.data.reservationId);
      });
  }

  // The owner's read of a reservation needs no entry token: the queue ends the session (and
  // revokes the token) as soon as the outcome is final.
  function follow(reservationId) {
    var path = "/api/v1/events/" + encodeURIComponent(eventId) + "/reservations/" + encodeURIComponent(reservationId);
    api("GET", path).then(function (answer) {
      var status = answer.status === 200 ? answer.data.status : null;
      if (status) el("outcome").textContent = status;
      if (status && FINAL.indexOf(status) !== -1) { say("Your booking is " + status + "."); return; }
      wait(2).then(function () { follow(reservationId); });
    });
  }

  el("login-form").addEventListener("submit", logIn);
  el("register-button").addEventListener("click", register);
  el("join").addEventListener("click", join);
  el("reserve").addEventListener("click", reserve);

  api("GET", "/api/v1/events/" + encodeURIComponent(eventId)).then(function (answer) {
    if (answer.status !== 200) { el("event-name").textContent = "No such event"; say(problem(answer)); return; }
    el("event-name").textContent = answer.data.name || eventId;
    show("login");
  });
})();
