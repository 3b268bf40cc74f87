// Audience builder: a condition tree edited with pickers, its text form kept in step, and the
// audience size (plus the overlap with the saved version) fetched ~300 ms after each edit.
// The tree state mirrors the condition JSON of rapport.conditions.model; no framework.
(function () {
  "use strict";

  var root = document.getElementById("builder");
  if (!root) return;
  var OPTS = JSON.parse(root.getAttribute("data-options"));
  var EDITING = root.getAttribute("data-editing") || "";
  var SAVED = EDITING ? JSON.parse(root.getAttribute("data-condition") || "null") : null;
  var CSRF = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";

  var KINDS = [["attr", "attribute"], ["tag", "has tag"], ["segment", "in segment"],
    ["did", "did event"], ["sequence", "sequence"]];
  var OPS = ["=", "!=", "<", "<=", ">", ">=", "between", "in", "not in", "contains",
    "starts with", "is set", "is not set"];
  var RELATIVE = ["in last", "in next", "anniversary in next"];
  var MEASURE_OPS = ["=", "!=", "<", "<=", ">", ">="];
  var AGGS = ["count", "sum", "avg", "min", "max", "distinct"];
  var UNITS = ["minutes", "hours", "days"];

  // -- the state: groups {type:"group", op, not, items}, leaves {type:"leaf", kind, not, ...} --
  function newLeaf(kind) {
    var leaf = { type: "leaf", kind: kind, not: false };
    if (kind === "attr") { leaf.field = ""; leaf.op = "="; leaf.value = ""; }
    if (kind === "tag") { leaf.tag = ""; leaf.values = ""; }
    if (kind === "segment") { leaf.segment = ""; leaf.bucket = ""; }
    if (kind === "did") {
      leaf.event = ""; leaf.where = []; leaf.agg = "count"; leaf.property = "";
      leaf.op = ">="; leaf.threshold = "1"; leaf.win = { type: "all", amount: "30", unit: "days" };
    }
    if (kind === "sequence") {
      leaf.steps = [{ event: "", where: [] }, { event: "", where: [] }];
      leaf.within = { amount: "1", unit: "hours" }; leaf.excluding = ""; leaf.thenNot = "";
      leaf.window = null;
    }
    return leaf;
  }
  function newGroup(op) { return { type: "group", op: op || "and", not: false, items: [] }; }

  function scalarText(v) {
    if (v === null || v === undefined) return "";
    return String(v);
  }
  function valueText(op, v) {
    if (RELATIVE.indexOf(op) >= 0 && v) return String(v.amount);
    if (Array.isArray(v)) return v.map(scalarText).join(", ");
    return scalarText(v);
  }
  function unitOf(v) { return (v && v.unit) || "days"; }
  function compareState(c) {
    return { field: c.field, op: c.op, value: valueText(c.op, c.value), unit: unitOf(c.value) };
  }
  function isoDay(text) { return text ? String(text).slice(0, 10) : ""; }

  function fromCondition(c) {
    if (!c) return newGroup("and");
    var state = fromNode(c);
    if (state.type === "group") return state;
    var g = newGroup("and");
    g.items.push(state);
    return g;
  }
  function fromNode(c) {
    if (c.kind === "and" || c.kind === "or") {
      var g = newGroup(c.kind);
      (c.kind === "and" ? c.all : c.any).forEach(function (x) { g.items.push(fromNode(x)); });
      return g;
    }
    if (c.kind === "not") {
      var inner = fromNode(c.cond);
      if (inner.not) { var wrap = newGroup("and"); wrap.items.push(inner); inner = wrap; }
      inner.not = true;
      return inner;
    }
    var leaf = { type: "leaf", kind: c.kind, not: false };
    if (c.kind === "attr") {
      var cs = compareState(c);
      leaf.field = cs.field; leaf.op = cs.op; leaf.value = cs.value; leaf.unit = cs.unit;
    } else if (c.kind === "tag") {
      leaf.tag = c.tag; leaf.values = (c.values || []).join(", ");
    } else if (c.kind === "segment") {
      leaf.segment = c.segment; leaf.bucket = c.bucket || "";
    } else if (c.kind === "did") {
      var w = c.window || {};
      leaf.event = c.event; leaf.where = (c.where || []).map(compareState);
      leaf.agg = c.agg || "count"; leaf.property = c.property || "";
      leaf.op = c.op || ">="; leaf.threshold = String(c.threshold === undefined ? 1 : c.threshold);
      leaf.win = { type: "all", amount: "30", unit: "days" };
      if (w.last) leaf.win = { type: "last", amount: String(w.last.amount), unit: w.last.unit || "days" };
      else if (w.start || w.end) leaf.win = { type: "between", start: isoDay(w.start), end: isoDay(w.end) };
      else if (w.since_event) leaf.win = { type: "since", event: w.since_event };
    } else if (c.kind === "sequence") {
      leaf.steps = c.steps.map(function (s) { return { event: s.event, where: s.where || [] }; });
      leaf.within = { amount: String(c.within.amount), unit: c.within.unit || "days" };
      leaf.excluding = c.excluding ? c.excluding.event : "";
      leaf.thenNot = c.then_not ? c.then_not.event : "";
      // filters on excluding / then-not steps and a window are kept as they came
      leaf.raw = { excluding: c.excluding, then_not: c.then_not, window: c.window };
    } else {
      leaf.kind = "raw"; leaf.json = c;  // e.g. a trigger leaf: kept, edited as text only
    }
    return leaf;
  }

  // -- state -> condition JSON (null when nothing is complete yet) --
  function typeOf(list, name) {
    for (var i = 0; i < list.length; i++) if (list[i].name === name) return list[i].type;
    return "";
  }
  function eventProps(event) {
    for (var i = 0; i < OPTS.events.length; i++) {
      if (OPTS.events[i].name === event) return OPTS.events[i].properties;
    }
    return [];
  }
  function fieldType(field, event) {
    if (event === undefined) return typeOf(OPTS.attrs, field);
    if (field.indexOf("item.") === 0) return typeOf(OPTS.items, field.slice(5));
    return typeOf(eventProps(event), field);
  }
  function scalar(raw, type) {
    var t = String(raw).trim();
    if (/^".*"$/.test(t)) return t.slice(1, -1);
    if (type === "string" || type === "datetime") return t;
    if (t === "true" || t === "false") return t === "true";
    if (t !== "" && !isNaN(Number(t))) return Number(t);
    return t;
  }
  function compareJson(s, type) {
    if (!s.field || !s.op) return null;
    var c = { field: s.field, op: s.op };
    var raw = String(s.value === undefined ? "" : s.value);
    if (s.op === "is set" || s.op === "is not set") return c;
    if (raw.trim() === "") return null;
    if (RELATIVE.indexOf(s.op) >= 0) {
      c.value = { amount: parseInt(raw, 10), unit: s.unit || "days" };
    } else if (s.op === "in" || s.op === "not in" || s.op === "between") {
      c.value = raw.split(",").map(function (x) { return scalar(x, type); });
    } else {
      c.value = scalar(raw, type);
    }
    return c;
  }
  function windowJson(w) {
    if (w.type === "last" && parseInt(w.amount, 10) > 0) {
      return { last: { amount: parseInt(w.amount, 10), unit: w.unit } };
    }
    if (w.type === "between" && (w.start || w.end)) {
      var out = {};
      if (w.start) out.start = w.start + "T00:00:00Z";
      if (w.end) out.end = w.end + "T00:00:00Z";
      return out;
    }
    if (w.type === "since" && w.event) return { since_event: w.event };
    return {};
  }
  function leafJson(s) {
    if (s.kind === "raw") return s.json;
    if (s.kind === "attr") {
      var a = compareJson(s, fieldType(s.field));
      if (!a) return null;
      a.kind = "attr";
      return a;
    }
    if (s.kind === "tag") {
      if (!s.tag) return null;
      var t = { kind: "tag", tag: s.tag };
      var vals = s.values.split(",").map(function (x) { return x.trim(); }).filter(Boolean);
      if (vals.length) t.values = vals;
      return t;
    }
    if (s.kind === "segment") {
      if (!s.segment) return null;
      var g = { kind: "segment", segment: s.segment };
      if (s.bucket) g.bucket = s.bucket;
      return g;
    }
    if (s.kind === "did") {
      if (!s.event || s.threshold === "" || isNaN(Number(s.threshold))) return null;
      if (s.agg !== "count" && !s.property) return null;
      var where = [];
      for (var i = 0; i < s.where.length; i++) {
        var f = compareJson(s.where[i], fieldType(s.where[i].field || "", s.event));
        if (!f) return null;
        where.push(f);
      }
      var d = { kind: "did", event: s.event, agg: s.agg, op: s.op, threshold: Number(s.threshold) };
      if (where.length) d.where = where;
      if (s.agg !== "count") d.property = s.property;
      var win = windowJson(s.win);
      if (Object.keys(win).length) d.window = win;
      return d;
    }
    if (s.kind === "sequence") {
      var steps = s.steps.filter(function (x) { return x.event; });
      var amount = parseInt(s.within.amount, 10);
      if (!(amount > 0) || !steps.length || (steps.length < 2 && !s.thenNot)) return null;
      var q = { kind: "sequence", steps: steps.map(function (x) {
        return x.where && x.where.length ? { event: x.event, where: x.where } : { event: x.event };
      }), within: { amount: amount, unit: s.within.unit } };
      var raw = s.raw || {};
      if (s.excluding) q.excluding = raw.excluding && raw.excluding.event === s.excluding ? raw.excluding : { event: s.excluding };
      if (s.thenNot) q.then_not = raw.then_not && raw.then_not.event === s.thenNot ? raw.then_not : { event: s.thenNot };
      if (raw.window && Object.keys(raw.window).length) q.window = raw.window;
      return q;
    }
    return null;
  }
  function nodeJson(s) {
    var out;
    if (s.type === "group") {
      var parts = s.items.map(nodeJson).filter(Boolean);
      if (!parts.length) return null;
      if (parts.length === 1) out = parts[0];
      else out = s.op === "and" ? { kind: "and", all: parts } : { kind: "or", any: parts };
    } else {
      out = leafJson(s);
    }
    if (out && s.not) out = { kind: "not", cond: out };
    return out;
  }

  // -- rendering --
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function kw(text) { return el("span", { class: "bld-kw", text: text }); }

  // a <select> bound to obj[key]; `structural` re-renders the tree after a change
  function pick(obj, key, choices, opts) {
    opts = opts || {};
    var s = el("select", { "data-f": opts.name || key, "aria-label": opts.label || key });
    if (opts.blank !== undefined) s.appendChild(el("option", { value: "", text: opts.blank }));
    var seen = false;
    choices.forEach(function (c) {
      var value = Array.isArray(c) ? c[0] : c;
      var label = Array.isArray(c) ? c[1] : c;
      if (value === obj[key]) seen = true;
      s.appendChild(el("option", { value: value, text: label }));
    });
    if (obj[key] && !seen) s.appendChild(el("option", { value: obj[key], text: obj[key] + " (unknown)" }));
    s.value = obj[key] || "";
    s.addEventListener("change", function () {
      obj[key] = s.value;
      if (opts.onChange) opts.onChange();
      if (opts.structural) render(); else changed();
    });
    return s;
  }
  function input(obj, key, attrs) {
    var i = el("input", Object.assign({ "data-f": key, "aria-label": key }, attrs || {}));
    i.value = obj[key] === undefined ? "" : obj[key];
    i.addEventListener("input", function () { obj[key] = i.value; changed(); });
    return i;
  }
  function button(text, cls, onClick) {
    var b = el("button", { type: "button", class: "btn btn-sm " + (cls || ""), text: text });
    b.addEventListener("click", function () { onClick(); render(); });
    return b;
  }
  function negate(obj) {
    var box = el("input", { type: "checkbox", "data-f": "not" });
    box.checked = !!obj.not;
    box.addEventListener("change", function () { obj.not = box.checked; render(); });
    return el("label", { class: "check" }, [box, document.createTextNode("not")]);
  }

  function compareRow(c, fields, withRelative, onRemove) {
    var ops = withRelative ? OPS.concat(RELATIVE) : OPS;
    var row = el("span", { class: "bld-sub bld-compare" }, [
      pick(c, "field", fields, { blank: "— field —", structural: true }),
      pick(c, "op", ops, { structural: true }),
    ]);
    if (c.op !== "is set" && c.op !== "is not set") {
      var hint = c.op === "between" ? "low, high" : (c.op === "in" || c.op === "not in") ? "a, b, c" : "value";
      row.appendChild(input(c, "value", { placeholder: hint, class: RELATIVE.indexOf(c.op) >= 0 ? "num" : "" }));
      if (RELATIVE.indexOf(c.op) >= 0) {
        if (!c.unit) c.unit = "days";
        row.appendChild(pick(c, "unit", UNITS));
      }
    }
    if (onRemove) row.appendChild(button("×", "btn-ghost", onRemove));
    return row;
  }

  function names(list) { return list.map(function (x) { return x.name; }); }
  function eventChoices() { return names(OPTS.events); }

  function renderLeaf(s, parent, index) {
    var row = el("div", { class: "bld-row cond-row" + (s.not ? " negated" : "") });
    row.appendChild(negate(s));
    if (s.kind === "raw") {
      row.appendChild(kw("trigger-only leaf: edit it in the text form"));
    } else {
      row.appendChild(pick(s, "kind", KINDS, {
        name: "kind", label: "condition kind", structural: true,
        onChange: function () { parent.items[index] = Object.assign(newLeaf(s.kind), { not: s.not }); },
      }));
    }
    if (s.kind === "attr") {
      var attrNames = names(OPTS.attrs);
      row.appendChild(compareRow(s, attrNames, true));
    } else if (s.kind === "tag") {
      var tag = null;
      OPTS.tags.forEach(function (t) { if (t.name === s.tag) tag = t; });
      row.appendChild(pick(s, "tag", names(OPTS.tags), { blank: "— tag —", structural: true }));
      var values = input(s, "values", { placeholder: "any value (or a, b)", list: "tag-values-" + index });
      row.appendChild(kw("with value in"));
      row.appendChild(values);
      if (tag && tag.values.length) {
        row.appendChild(el("datalist", { id: "tag-values-" + index },
          tag.values.map(function (v) { return el("option", { value: v }); })));
      }
    } else if (s.kind === "segment") {
      var seg = null;
      OPTS.segments.forEach(function (g) { if (g.name === s.segment) seg = g; });
      row.appendChild(pick(s, "segment", names(OPTS.segments), { blank: "— segment —", structural: true }));
      if (seg && seg.buckets.length) {
        row.appendChild(kw("bucket"));
        row.appendChild(pick(s, "bucket", seg.buckets, { blank: "any" }));
      }
    } else if (s.kind === "did") {
      renderDid(s, row);
    } else if (s.kind === "sequence") {
      renderSequence(s, row);
    }
    row.appendChild(button("Remove", "btn-ghost btn-danger remove", function () { parent.items.splice(index, 1); }));
    if (!leafJson(s)) row.className += " incomplete";
    return row;
  }

  function renderDid(s, row) {
    row.appendChild(pick(s, "event", eventChoices(), { blank: "— event —", structural: true }));
    var props = names(eventProps(s.event));
    var filterFields = props.concat(OPTS.items.map(function (p) { return "item." + p.name; }));
    var filters = el("div", { class: "bld-sub bld-where", style: "flex-basis:100%" });
    s.where.forEach(function (c, i) {
      filters.appendChild(el("span", { class: "where-row" }, [
        kw(i === 0 ? "where" : "and"),
        compareRow(c, filterFields, false, function () { s.where.splice(i, 1); }),
      ]));
    });
    filters.appendChild(button("+ filter", "add-where", function () {
      s.where.push({ field: "", op: "=", value: "" });
    }));
    row.appendChild(filters);
    var measure = el("div", { class: "bld-sub bld-measure", style: "flex-basis:100%" }, [
      kw("measure"), pick(s, "agg", AGGS, { structural: true }),
    ]);
    if (s.agg !== "count") {
      measure.appendChild(pick(s, "property", props, { blank: "— property —" }));
    }
    measure.appendChild(pick(s, "op", MEASURE_OPS, { name: "measure-op" }));
    measure.appendChild(input(s, "threshold", { class: "num", inputmode: "decimal" }));
    measure.appendChild(kw("window"));
    measure.appendChild(pick(s.win, "type", [["all", "all time"], ["last", "in the last"],
      ["between", "between dates"], ["since", "since event"]], { name: "window", structural: true }));
    if (s.win.type === "last") {
      measure.appendChild(input(s.win, "amount", { class: "num", "data-f": "window-amount" }));
      measure.appendChild(pick(s.win, "unit", UNITS, { name: "window-unit" }));
    } else if (s.win.type === "between") {
      measure.appendChild(input(s.win, "start", { type: "date" }));
      measure.appendChild(kw("and"));
      measure.appendChild(input(s.win, "end", { type: "date" }));
    } else if (s.win.type === "since") {
      measure.appendChild(pick(s.win, "event", eventChoices(), { blank: "— event —", name: "since" }));
    }
    row.appendChild(measure);
  }

  function renderSequence(s, row) {
    var steps = el("div", { class: "bld-sub", style: "flex-basis:100%" });
    s.steps.forEach(function (step, i) {
      if (i) steps.appendChild(kw("then"));
      steps.appendChild(pick(step, "event", eventChoices(), { blank: "— event —", name: "step" }));
      if (s.steps.length > 1) steps.appendChild(button("×", "btn-ghost", function () { s.steps.splice(i, 1); }));
    });
    steps.appendChild(button("+ step", "add-step", function () { s.steps.push({ event: "", where: [] }); }));
    row.appendChild(steps);
    row.appendChild(el("div", { class: "bld-sub", style: "flex-basis:100%" }, [
      kw("within"), input(s.within, "amount", { class: "num", "data-f": "within" }),
      pick(s.within, "unit", UNITS, { name: "within-unit" }),
      kw("without in between"), pick(s, "excluding", eventChoices(), { blank: "—" }),
      kw("then not"), pick(s, "thenNot", eventChoices(), { blank: "—", name: "then-not" }),
    ]));
  }

  function renderGroup(g, parent, index) {
    var box = el("div", { class: "bld-group" + (g.not ? " negated" : "") });
    var head = el("div", { class: "bld-head" }, [
      negate(g),
      pick(g, "op", [["and", "all of"], ["or", "any of"]], { name: "group-op", label: "group" }),
      kw("these conditions"),
    ]);
    head.appendChild(button("+ condition", "add-condition", function () { g.items.push(newLeaf("attr")); }));
    head.appendChild(button("+ group", "add-group", function () { g.items.push(newGroup(g.op === "and" ? "or" : "and")); }));
    if (parent) head.appendChild(button("Remove group", "btn-ghost btn-danger", function () { parent.items.splice(index, 1); }));
    box.appendChild(head);
    g.items.forEach(function (item, i) {
      box.appendChild(item.type === "group" ? renderGroup(item, g, i) : renderLeaf(item, g, i));
    });
    if (!g.items.length) box.appendChild(kw("No conditions yet: add one."));
    return box;
  }

  var state = fromCondition(JSON.parse(root.getAttribute("data-condition") || "null"));

  function render() {
    root.replaceChildren(renderGroup(state, null, 0));
    changed();
  }

  // -- talking to the server --
  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: JSON.stringify(body),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        return { ok: r.ok, status: r.status, data: data };
      });
    });
  }
  function detailText(data, status) {
    var d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map(function (x) {
        return (x.path ? x.path + ": " : (x.loc ? x.loc.slice(1).join(".") + ": " : "")) + (x.message || x.msg);
      }).join("; ");
    }
    return "error " + status;
  }

  var textBox = document.getElementById("builder-text");
  var textError = document.getElementById("builder-text-error");
  var problemsBox = document.getElementById("builder-problems");
  var sizeBox = document.getElementById("builder-size");
  var sizeNote = document.getElementById("builder-size-note");
  var sampleBox = document.getElementById("builder-sample");
  var overlapBox = document.getElementById("builder-overlap");
  var timer = null;
  var generation = 0;  // answers to an older edit are dropped

  function changed() {
    clearTimeout(timer);
    timer = setTimeout(function () { refresh(true); }, 300);
  }

  function current() { return nodeJson(state); }

  function refresh(printText) {
    var cond = current();
    var mine = ++generation;
    if (!cond) {
      sizeBox.textContent = "—";
      sizeNote.textContent = "";
      sampleBox.textContent = "Add a complete condition to see who matches.";
      if (printText && document.activeElement !== textBox) textBox.value = "";
      problemsBox.hidden = true;
      return;
    }
    if (printText) {
      post("/api/conditions/print", { condition: cond }).then(function (r) {
        if (mine !== generation || document.activeElement === textBox) return;
        textBox.value = r.ok ? r.data.text : JSON.stringify(cond);
        textBox.classList.remove("bad");
        textError.hidden = true;
      });
    }
    post("/api/conditions/validate", { condition: cond }).then(function (r) {
      if (mine !== generation) return;
      var errors = (r.ok && r.data.errors) || [];
      problemsBox.hidden = !errors.length;
      problemsBox.textContent = errors.map(function (e) { return e.path + ": " + e.message; }).join("\n");
    });
    sizeBox.classList.add("muted");
    var ask = { condition: cond };
    if (SAVED) ask.previous = SAVED;  // editing: the answer also has the overlap
    post("/api/segments/size", ask).then(function (r) {
      if (mine !== generation) return;
      sizeBox.classList.remove("muted");
      if (!r.ok) {
        sizeBox.textContent = "?";
        sizeNote.textContent = detailText(r.data, r.status);
        return;
      }
      sizeBox.textContent = Number(r.data.size).toLocaleString("en");
      sizeNote.textContent = (r.data.bitmap_only ? "from the bitmap index" : "tags, segments and behaviour queried") +
        (r.data.ms !== undefined ? " · " + Math.round(r.data.ms) + " ms" : "");
      var sample = r.data.sample || [];
      sampleBox.replaceChildren();
      if (!sample.length) sampleBox.textContent = "Nobody matches.";
      sample.slice(0, 10).forEach(function (p) {
        var id = typeof p === "object" ? (p.person_key !== undefined ? p.person_key : p.id) : p;
        sampleBox.appendChild(el("a", { href: "/persons/" + id, class: "badge sample-person", text: "#" + id }));
        sampleBox.appendChild(document.createTextNode(" "));
      });
      var o = r.data.overlap;
      if (o && overlapBox) {
        overlapBox.textContent = "Saved version: " + o.b.toLocaleString("en") + " · this edit: " +
          o.a.toLocaleString("en") + " · in both: " + o.both.toLocaleString("en");
      }
    });
  }

  // the text box: parse on change, show errors at their position
  var textTimer = null;
  function showTextError(message, where) {
    textBox.classList.add("bad");
    textError.hidden = false;
    textError.textContent = (where ? where + ": " : "") + message;
    var m = /line (\d+), column (\d+)/.exec(where || "");
    if (m) {
      var line = textBox.value.split("\n")[Number(m[1]) - 1] || "";
      textError.appendChild(el("div", { class: "bld-caret mono", text: line + "\n" + " ".repeat(Math.max(0, Number(m[2]) - 1)) + "^" }));
    }
  }
  textBox.addEventListener("input", function () {
    clearTimeout(textTimer);
    textTimer = setTimeout(function () {
      var text = textBox.value.trim();
      if (!text) { state = newGroup("and"); render(); return; }
      post("/api/conditions/parse", { text: text }).then(function (r) {
        if (!r.ok) {
          var d = r.data && r.data.detail;
          if (Array.isArray(d) && d.length && d[0].message) showTextError(d[0].message, d[0].path);
          else showTextError(detailText(r.data, r.status));
          return;
        }
        textBox.classList.remove("bad");
        textError.hidden = true;
        state = fromCondition(r.data.condition);
        root.replaceChildren(renderGroup(state, null, 0));
        clearTimeout(timer);
        timer = setTimeout(function () { refresh(false); }, 0);
      });
    }, 300);
  });

  // saving
  var form = document.getElementById("builder-save");
  var saveError = document.getElementById("builder-save-error");
  form.addEventListener("submit", function () {
    var cond = current();
    saveError.hidden = true;
    if (!cond) { saveError.hidden = false; saveError.textContent = "Add at least one complete condition."; return; }
    var body = {
      name: form.elements.name.value.trim(),
      description: form.elements.description.value,
      mode: form.elements.mode.value,
      condition: cond,
      original: EDITING || null,
    };
    post("/segments/save", body).then(function (r) {
      if (r.ok) { window.location = r.data.url; return; }
      saveError.hidden = false;
      saveError.textContent = detailText(r.data, r.status);
    });
  });

  window.rapportBuilder = { condition: current };  // for tests and the curious
  render();
})();
