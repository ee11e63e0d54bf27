// borgcell web UI: live refresh without a build step.
// Every page is rendered by the master; this script re-fetches the page's <main> as an HTML
// fragment (?partial=1) every few seconds and swaps it in, and /api/cell refreshes the
// header (which replica serves us, its Raft role and the leader). Polling pauses while the
// tab is hidden. The "live" badge turns red when the replica stops answering.
(function () {
  "use strict";
  var body = document.body;
  var period = parseInt(body.getAttribute("data-refresh") || "0", 10);
  if (!period) { return; }
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var replica = document.getElementById("replica");
  var busy = false;

  function partialURL() {
    var u = new URL(window.location.href);
    u.searchParams.set("partial", "1");
    return u.toString();
  }

  function setLive(ok) {
    live.classList.toggle("stale", !ok);
    live.textContent = ok ? "live" : "disconnected";
    live.title = ok ? "updated " + new Date().toLocaleTimeString() : "replica not answering";
  }

  function keepScroll(el) {
    // Log pages: stay at the bottom when the reader was at the bottom.
    var pre = el.querySelector("pre.log");
    return pre ? pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40 : false;
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    var atBottom = keepScroll(main);
    var page = fetch(partialURL(), { cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (html) {
      if (html !== main.getAttribute("data-last")) {
        main.innerHTML = html;
        main.setAttribute("data-last", html);
        if (atBottom) {
          var pre = main.querySelector("pre.log");
          if (pre) { pre.scrollTop = pre.scrollHeight; }
        }
      }
    });
    var head = fetch("/api/cell?replica_only=1", { cache: "no-store" }).then(function (r) {
      return r.json();
    }).then(function (cell) {
      var me = cell.replica;
      replica.textContent = "replica " + me.id + " (" + me.role + ", term " + me.term +
        ") · leader " + (cell.leader_id || "none");
    });
    Promise.all([page, head]).then(function () { setLive(true); }, function () {
      setLive(false);
    }).then(function () { busy = false; });
  }

  var pre = main.querySelector("pre.log");
  if (pre) { pre.scrollTop = pre.scrollHeight; }
  setLive(true);
  window.setInterval(tick, period * 1000);
  document.addEventListener("visibilitychange", tick);
})();
