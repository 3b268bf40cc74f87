// Rapport console behaviour: toasts, ECharts from data attributes, HTMX error reporting, and
// the small page behaviours templates ask for with data attributes (the CSP forbids inline
// handlers and eval, so every listener lives here, delegated so HTMX-swapped content works).
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

  // The live tail asks for records after the newest offset it shows (or the page's start).
  function tailAfter(body) {
    var newest = body.querySelector("tr[data-offset]");
    return newest ? newest.getAttribute("data-offset") : body.getAttribute("data-tail-after");
  }

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
    // Row details: <tr data-toggle-next> shows/hides the next row; <button data-toggle-next="tr">
    // toggles the row after its closest <tr>. A control inside the row works itself instead.
    document.body.addEventListener("click", function (e) {
      var el = e.target.closest && e.target.closest("[data-toggle-next]");
      if (!el) return;
      var control = e.target.closest("input, select, textarea, button, a, label");
      if (control && control !== el && el.contains(control)) return;
      var selector = el.getAttribute("data-toggle-next");
      var base = selector ? el.closest(selector) : el;
      var detail = base && base.nextElementSibling;
      if (detail) detail.hidden = !detail.hidden;
    });
    // Filter reset: <button type=button data-clear-form> empties its form and submits it (HTMX)
    document.body.addEventListener("click", function (e) {
      var button = e.target.closest && e.target.closest("[data-clear-form]");
      if (!button || !button.form) return;
      button.form.querySelectorAll("select, input").forEach(function (f) { f.value = ""; });
      htmx.trigger(button.form, "submit");
    });
    // Examples: <select data-fill-example="field"> puts <template data-example="VALUE"> into field
    document.body.addEventListener("change", function (e) {
      var field = e.target.getAttribute && e.target.getAttribute("data-fill-example");
      if (!field || !e.target.form) return;
      var ex = e.target.form.querySelector('[data-example="' + CSS.escape(e.target.value) + '"]');
      if (ex) e.target.form.elements[field].value = (ex.content || ex).textContent;
    });
    // Forms that scripts handle: <form data-no-submit> never navigates
    document.body.addEventListener("submit", function (e) {
      if (e.target.hasAttribute && e.target.hasAttribute("data-no-submit")) e.preventDefault();
    });
    // After a successful HTMX request: <form data-reset-on-success> empties itself and closes
    // its <details>; <button data-reload-on-success> reloads the page
    document.body.addEventListener("htmx:afterRequest", function (e) {
      if (!e.detail.successful || !e.target.closest) return;
      var form = e.target.closest("[data-reset-on-success]");
      if (form) {
        form.reset();
        var details = form.closest("details");
        if (details) details.open = false;
      }
      if (e.target.closest("[data-reload-on-success]")) location.reload();
    });
    // The live tail: <tbody data-tail-after=OFFSET hx-get=...> sends ?after=<newest offset>
    document.body.addEventListener("htmx:configRequest", function (e) {
      var el = e.detail.elt;
      if (el && el.hasAttribute("data-tail-after")) e.detail.parameters.after = tailAfter(el);
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
