// Lead rule editor: live validation. While one types, the rule's parts go to
// POST /api/leads/rules/validate and the answer shows under the form (#rule-check).
(function () {
  "use strict";
  // the token <body hx-headers> sends with every HTMX request
  var CSRF = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
  var timer = null;

  function show(box, out) {
    box.hidden = false;
    box.className = "alert " + (out.valid ? "alert-ok" : "alert-error");
    box.textContent = "";
    if (out.valid) { box.textContent = "The rule is valid."; return; }
    var ul = document.createElement("ul");
    ul.className = "errors-list";
    (out.errors || []).forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = e.field + (e.path && e.path !== "$" ? " (" + e.path + ")" : "") + ": " + e.message;
      ul.appendChild(li);
    });
    box.appendChild(ul);
  }

  function check() {
    var form = document.getElementById("rule-form"), box = document.getElementById("rule-check");
    if (!form || !box) return;
    var body = {};
    ["trigger", "conditions", "suppression", "cooldown", "mode", "schedule"].forEach(function (k) {
      var v = form.elements[k] && form.elements[k].value.trim();
      if (v) body[k] = v;
    });
    fetch("/api/leads/rules/validate", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF},
      body: JSON.stringify(body)
    }).then(function (r) { return r.json(); }).then(function (out) { show(box, out); });
  }

  document.addEventListener("input", function (e) {
    if (!e.target.classList || !e.target.classList.contains("rule-part")) return;
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
  function start() {
    var form = document.getElementById("rule-form");
    if (form && form.elements.trigger.value.trim()) check();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
