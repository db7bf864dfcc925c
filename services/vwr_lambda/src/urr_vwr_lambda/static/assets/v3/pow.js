// The waiting page's proof-of-work step (issue 15): when the event asks for it, fetch a
// challenge, solve it in a Web Worker (pow-worker.js) and show the progress; waiting.js sends
// the solution with its assign. Kept apart from waiting.js; no build step.
(function () {
  "use strict";
  var WORKER = "/vwr/assets/v3/pow-worker.js";
  var el = function (id) { return document.getElementById(id); };

  function showProgress(tries, bits) {
    // The chance a solution has turned up by now, so the bar moves evenly on average.
    var done = Math.min(99, Math.round(100 * (1 - Math.exp(-tries / Math.pow(2, bits)))));
    var bar = el("pow-progress");
    if (!bar) return;
    bar.setAttribute("aria-valuenow", String(done));
    el("pow-fill").style.width = done + "%";
  }

  function setVisible(visible) {
    var box = el("pow");
    if (box) box.hidden = !visible;
  }

  // Solves one challenge in a new worker: resolves {counter, tries, ms}.
  function solveChallenge(challenge, bits, onProgress) {
    return new Promise(function (resolve, reject) {
      var worker = new Worker(WORKER);
      worker.onmessage = function (message) {
        var data = message.data || {};
        if (data.type === "progress") { if (onProgress) onProgress(data.tries); return; }
        worker.terminate();
        if (data.type === "done") resolve(data); else reject(new Error(data.error || "worker failed"));
      };
      worker.onerror = function (error) { worker.terminate(); reject(error); };
      worker.postMessage({ challenge: challenge, bits: bits });
    });
  }

  // Fetches the event's challenge and solves it: resolves the assign's "pow" value, or null
  // when the event asks for none.
  function solve(apiBase, eventId) {
    return fetch(apiBase + "/challenge/" + encodeURIComponent(eventId), {
      credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (!response.ok) throw new Error("challenge " + response.status);
      return response.json();
    }).then(function (handed) {
      if (handed.botChallenge !== "pow") return null;
      setVisible(true);
      showProgress(0, handed.bits);
      return solveChallenge(handed.challenge, handed.bits, function (tries) {
        showProgress(tries, handed.bits);
      }).then(function (found) {
        showProgress(found.tries, handed.bits);
        el("pow-progress").setAttribute("aria-valuenow", "100");
        el("pow-fill").style.width = "100%";
        setVisible(false);
        return { challenge: handed.challenge, counter: found.counter };
      });
    });
  }

  window.urrPow = { solve: solve, solveChallenge: solveChallenge };
})();
