// Rapport console behaviour: toasts, ECharts from data attributes, HTMX error reporting.
(function () {
  "use strict";

  function toast(message, level) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast toast-" + (level || "ok");
    el.textContent = message;
    box.appendChild(el);
    setTimeout(function () { el.style.opacity = "0"; }, 4500);
    setTimeout(function () { el.remove(); }, 5000);
  }
  window.rapportToast = toast;

  // The live tail asks for records after the newest offset it shows.
  window.rapportTailAfter = function () {
    var body = document.getElementById("tail-body");
    var newest = body.querySelector("tr[data-offset]");
    return newest ? newest.getAttribute("data-offset") : body.getAttribute("data-after");
  };

  function drawCharts(root) {
    if (!window.echarts) return;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      var option = JSON.parse(el.getAttribute("data-chart"));
      var chart = echarts.getInstanceByDom(el) || echarts.init(el);
      chart.setOption(option, true);
    });
  }

  function errorText(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) {
        return body.detail.map(function (d) {
          return (d.loc || []).slice(1).join(".") + ": " + d.msg;
        }).join("; ");
      }
    } catch (e) { /* not JSON */ }
    return xhr.status + " " + (xhr.statusText || "error");
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("#toasts .toast").forEach(function (el) {
      setTimeout(function () { el.style.opacity = "0"; }, 5000);
      setTimeout(function () { el.remove(); }, 5500);
    });
    drawCharts(document);
    window.addEventListener("resize", function () {
      document.querySelectorAll("[data-chart]").forEach(function (el) {
        var chart = window.echarts && echarts.getInstanceByDom(el);
        if (chart) chart.resize();
      });
    });
    document.body.addEventListener("flash", function (e) { toast(e.detail.message, e.detail.level); });
    document.body.addEventListener("htmx:afterSettle", function (e) {
      drawCharts(e.target);
      if (e.target.id === "tail-body") {  // keep the live tail bounded: 200 events, 2 rows each
        var rows = e.target.rows;
        while (rows.length > 400) e.target.deleteRow(rows.length - 1);
      }
    });
    document.body.addEventListener("htmx:responseError", function (e) {
      var xhr = e.detail.xhr;
      if (xhr.status === 401) {
        window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search);
        return;
      }
      toast(errorText(xhr), "error");
    });
    document.body.addEventListener("htmx:sendError", function () {
      toast("The server did not answer; check that rapport serve is running.", "error");
    });
    // Select-all checkboxes: <input type=checkbox data-select-all="name">
    document.body.addEventListener("change", function (e) {
      var name = e.target.getAttribute && e.target.getAttribute("data-select-all");
      if (!name) return;
      document.querySelectorAll('input[name="' + name + '"]').forEach(function (box) {
        box.checked = e.target.checked;
      });
    });
    // Copy buttons: <button data-copy="#id">
    document.body.addEventListener("click", function (e) {
      var sel = e.target.getAttribute && e.target.getAttribute("data-copy");
      if (!sel) return;
      var text = document.querySelector(sel).textContent;
      navigator.clipboard.writeText(text).then(function () { toast("Copied to the clipboard."); });
    });
  });
})();
