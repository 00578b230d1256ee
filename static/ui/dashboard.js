// mail-proxy dashboard: polling while visible, the last-hour chart, times and countdowns.
// Loaded from 'self' under a strict CSP: no inline script, no eval.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var etags = new WeakMap();
  var chart = null;

  function localTimes() { return localStorage.getItem("gmp-tz") === "local"; }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatTs(ts) {
    var d = new Date(ts * 1000);
    if (localTimes()) {
      return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + " local";
    }
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function human(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) { return seconds + " s"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s"; }
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  function renderTimes(root) {
    root.querySelectorAll("time[data-ts]").forEach(function (el) {
      el.textContent = formatTs(Number(el.dataset.ts));
      el.title = new Date(Number(el.dataset.ts) * 1000).toISOString();
    });
    var button = document.getElementById("tz-toggle");
    if (button) { button.textContent = localTimes() ? "Local time" : "UTC"; }
  }

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var left = Number(el.dataset.countdown) - now;
      el.textContent = left > 0 ? "in " + human(left) : "due now";
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.title = formatTs(Number(el.dataset.since));
      el.textContent = human(now - Number(el.dataset.since)) + " ago";
    });
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawChart() {
    var el = document.getElementById("chart");
    if (!el || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(el.dataset.series);
    if (chart) { chart.destroy(); chart = null; }
    el.textContent = "";
    var axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line") },
                 ticks: { stroke: cssVar("--line") } };
    chart = new uPlot({
      width: Math.max(300, el.clientWidth), height: 220,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(4, max)]; } } },
      tzDate: function (ts) { return localTimes() ? new Date(ts * 1000) : uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      axes: [axis, Object.assign({}, axis, { size: 50 })],
      cursor: { points: { show: false } },
      series: [{},
        { label: "sent / min", stroke: cssVar("--ok"), width: 2, points: { show: false } },
        { label: "errors / min", stroke: cssVar("--bad"), width: 2, points: { show: false } },
        { label: "deferred / min", stroke: cssVar("--warn"), width: 1, dash: [4, 4],
          points: { show: false } }]
    }, [data.t, data.sent, data.error, data.deferred], el);
  }

  function poll() {
    if (document.visibilityState !== "visible" || typeof htmx === "undefined") { return; }
    document.querySelectorAll("[data-poll]").forEach(function (el) { htmx.trigger(el, "poll"); });
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    var tag = etags.get(evt.detail.elt);
    if (tag) { evt.detail.headers["If-None-Match"] = tag; }
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var xhr = evt.detail.xhr;
    var tag = xhr && xhr.getResponseHeader("ETag");
    if (tag && xhr.status === 200) { etags.set(evt.detail.elt, tag); }
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    renderTimes(evt.detail.target);
    if (evt.detail.target.querySelector("#chart")) { drawChart(); }
    tick();
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") { poll(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("tz-toggle");
    if (button) {
      button.addEventListener("click", function () {
        localStorage.setItem("gmp-tz", localTimes() ? "utc" : "local");
        renderTimes(document);
        drawChart();
      });
    }
    renderTimes(document);
    drawChart();
    tick();
    setInterval(tick, 1000);
    setInterval(poll, POLL_MS);
    if (window.matchMedia) {
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawChart);
    }
  });
})();
