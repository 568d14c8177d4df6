// hero-procd dashboard: a page in a hidden tab lets go of its event stream.
//
// Each open page holds one HTTP/1.1 connection for its Server-Sent Events, and a
// browser keeps at most 6 per host: without this, a 7th tab of the dashboard would
// wait. When the tab is hidden the stream is closed; when it is shown again a new
// one is opened (resuming the log after the last line shown) and the page's live
// regions re-read what they show.
(function () {
  "use strict";
  var sources = [];
  document.addEventListener("htmx:sseOpen", function (event) {
    sources.push(event.detail.source);
  });
  document.addEventListener("visibilitychange", function () {
    var elt = document.getElementById("sse");
    if (!elt) {
      return;
    }
    if (document.hidden) {
      sources.forEach(function (source) { source.close(); });
      sources = [];
      elt.setAttribute("data-paused", "1");
      return;
    }
    if (!elt.hasAttribute("data-paused")) {
      return;
    }
    var url = new URL(elt.getAttribute("sse-connect"), window.location.href);
    var lines = document.querySelectorAll("#log .line");
    if (lines.length) {
      url.searchParams.set("after", lines[lines.length - 1].getAttribute("data-seq"));
    }
    var fresh = elt.cloneNode(true);
    fresh.removeAttribute("data-paused");
    fresh.setAttribute("sse-connect", url.pathname + url.search);
    elt.replaceWith(fresh);
    htmx.process(fresh);
    fresh.querySelectorAll(".live").forEach(function (region) {
      htmx.trigger(region, "refresh");
    });
  });
})();
