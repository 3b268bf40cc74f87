// Journey editor: the journey's definition JSON is the state; the canvas draws it top to bottom
// (row = longest path from the entry, exits side by side, SVG arrows labelled with the exit),
// a side panel edits the selected step, and Save sends the JSON to /api/journeys, whose
// errors (each names a node) are shown on that node. No framework.
(function () {
  "use strict";

  var root = document.getElementById("journey-editor");
  if (!root) return;
  var CFG = JSON.parse(root.getAttribute("data-editor"));
  var CSRF = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
  var EDIT = !!CFG.can_edit;
  var W = 224, H = 74, ERR_H = 34, DUMMY = 24, GAP_X = 32, GAP_Y = 70, PAD = 28;
  var KINDS = {
    wait: "Wait", branch: "Branch", split: "A/B split", send: "Send", tag: "Tag",
    lead: "Lead", webhook: "Webhook", exit: "Exit"
  };
  var UNITS = ["minutes", "hours", "days"];
  var ENTRY_KEYS = { entry: 1, goal: 1, entry_rule: 1 };

  var state = {
    def: JSON.parse(JSON.stringify(CFG.definition)),
    selected: null,   // a node id, "entry", or null
    errors: {},       // node id (or entry, goal, entry_rule, journey...) -> [messages]
    dirty: false,
    printed: {},      // JSON conditions printed as text by /api/conditions/print, by key
    menu: null        // the open "+" menu: {node, label}
  };
  if (!Array.isArray(state.def.nodes)) state.def.nodes = [];

  // ---------------------------------------------------------------- small helpers
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else if (k === "value") e.value = v;
      else e.setAttribute(k, v === true ? "" : v);
    });
    (kids || []).forEach(function (c) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function toast(message, level) { if (window.rapportToast) window.rapportToast(message, level); }
  function nodes() { return state.def.nodes; }
  function byId(id) {
    for (var i = 0; i < nodes().length; i++) if (nodes()[i].id === id) return nodes()[i];
    return null;
  }
  function params(n) { return n.params || (n.params = {}); }
  function api(method, url, body) {
    return fetch(url, {
      method: method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = { detail: t }; }
        return { ok: r.ok, status: r.status, data: data };
      });
    });
  }
  function changed(full) {
    state.dirty = true;
    render(full);
  }

  // ---------------------------------------------------------------- the graph's exits
  /** The exit labels a node's kind has ("" is the only exit of a plain node). */
  function labels(n) {
    var p = n.params || {};
    if (n.kind === "exit") return [];
    if (n.kind === "branch") return ["yes", "no"];
    if (n.kind === "split") return Object.keys(p.shares || {});
    if (n.kind === "wait" && p.until !== undefined && p.cycle === undefined) return ["event", "timeout"];
    return [""];
  }
  function nextMap(n) {
    if (n.next === undefined || n.next === null || n.next === "") return {};
    if (typeof n.next === "string") return { "": n.next };
    var out = {};
    Object.keys(n.next).forEach(function (k) { out[k] = n.next[k]; });
    return out;
  }
  /** Write a label -> id mapping back in the definition's form (a plain id or a mapping). */
  function setNextMap(n, m) {
    var ls = labels(n), out = {};
    if (ls.length === 1 && ls[0] === "") {
      var only = m[""] || m[Object.keys(m)[0]];
      if (only) n.next = only; else delete n.next;
      return;
    }
    ls.forEach(function (l) { if (m[l]) out[l] = m[l]; });
    if (Object.keys(out).length) n.next = out; else delete n.next;
  }
  /** After a node's kind or mode changed: keep its targets on the labels it now has. */
  function reshapeNext(n) {
    var m = nextMap(n), ls = labels(n), targets = Object.keys(m).map(function (k) { return m[k]; });
    var keep = {};
    ls.forEach(function (l, i) { keep[l] = m[l] !== undefined ? m[l] : undefined; });
    var free = targets.filter(function (t) { return ls.every(function (l) { return keep[l] !== t; }); });
    ls.forEach(function (l) { if (!keep[l] && free.length) keep[l] = free.shift(); });
    setNextMap(n, keep);
  }
  function exits(n) {
    var m = nextMap(n), ls = labels(n), out = [];
    ls.forEach(function (l, i) { out.push({ label: l, to: m[l] || null, index: i }); });
    Object.keys(m).forEach(function (k) {
      if (ls.indexOf(k) < 0) out.push({ label: k, to: m[k], index: out.length });
    });
    return out;
  }

  // ---------------------------------------------------------------- one-line summaries
  function durationText(d) {
    if (d === undefined || d === null || d === "") return "?";
    if (typeof d === "object") return (d.amount || "?") + " " + (d.unit || "days");
    return String(d);
  }
  function splitDuration(d) {
    if (d && typeof d === "object") return { amount: String(d.amount || ""), unit: d.unit || "days" };
    var parts = String(d || "").trim().split(/\s+/);
    return { amount: parts[0] || "", unit: parts[1] || "days" };
  }
  function whereText(where) {
    return (where || []).map(function (w) {
      var v = Array.isArray(w.value) ? "(" + w.value.map(JSON.stringify).join(", ") + ")"
        : JSON.stringify(w.value);
      return w.field + " " + w.op + (w.value === undefined ? "" : " " + v);
    }).join(" and ");
  }
  /** The text of an event field (entry, goal, until): a bare name, or the text form. */
  function eventText(v, key) {
    if (!v) return "";
    if (typeof v === "string") return v;
    if (v.schedule !== undefined) return v.schedule + ": " + (v.audience || "?");
    if (!v.where || !v.where.length) return v.event || "";
    return state.printed[key] || ("event " + v.event + " where " + whereText(v.where));
  }
  function fromEventText(t) {
    t = (t || "").trim();
    if (!t) return null;
    if (/^[A-Za-z_][\w.\-]*$/.test(t)) return { event: t };
    return t;
  }
  function conditionText(n) {
    var c = params(n).condition;
    if (!c) return "";
    if (typeof c === "string") return c;
    return state.printed["cond:" + n.id] || JSON.stringify(c);
  }
  function summary(n) {
    var p = n.params || {};
    switch (n.kind) {
      case "wait":
        if (p.cycle !== undefined) return "wait their own " + p.cycle + " cycle (else " + (p.fallback_days || "?") + " days)";
        if (p.until !== undefined) return "until " + eventText(p.until, "until:" + n.id) + ", at most " + durationText(p.timeout);
        return "wait " + durationText(p.duration);
      case "branch": return "if " + (conditionText(n) || "?");
      case "split":
        return "split " + Object.keys(p.shares || {}).map(function (k) { return k + " " + p.shares[k] + "%"; }).join(" · ");
      case "send":
        var c = p.content || {}, first = c.text || c[Object.keys(c)[0]] || "";
        return "send " + (p.channel || "?") + ": " + first;
      case "tag": return "tag " + (p.tag || "?") + " = " + (p.value || "?");
      case "lead": return "lead: " + (p.rule || "?");
      case "webhook": return "webhook " + (p.channel || "?");
      case "exit": return "leave the journey";
    }
    return n.kind;
  }
  function entrySummary() {
    var d = state.def, rule = d.entry_rule || "once";
    if (rule && typeof rule === "object") rule = "once per " + durationText(rule.once_per);
    return {
      what: eventText(d.entry, "entry") || "(no entry yet)",
      rule: String(rule).replace("_", " "),
      goal: d.goal ? eventText(d.goal, "goal") : ""
    };
  }

  /** Fetch the text form of conditions stored as JSON (summaries and the panel's inputs). */
  function printAll() {
    var jobs = [];
    function want(key, cond) {
      if (!cond || typeof cond !== "object" || state.printed[key]) return;
      jobs.push(api("POST", "/api/conditions/print", { condition: cond }).then(function (r) {
        if (r.ok && r.data && r.data.text) state.printed[key] = r.data.text;
      }));
    }
    function asEvent(v) {
      return v && typeof v === "object" && v.event && v.where && v.where.length
        ? Object.assign({ kind: "event" }, v) : null;
    }
    want("entry", asEvent(state.def.entry));
    want("goal", asEvent(state.def.goal));
    nodes().forEach(function (n) {
      var p = n.params || {};
      if (n.kind === "branch") want("cond:" + n.id, p.condition);
      if (n.kind === "wait") want("until:" + n.id, asEvent(p.until));
    });
    if (jobs.length) Promise.all(jobs).then(function () { render(true); });
  }

  // ---------------------------------------------------------------- layout
  /** Rows by longest path from the first node (loops broken at their back edge), edges over
   * more than one row routed through narrow placeholders, x by a tidy tree over each item's
   * first parent: exits side by side, and no two boxes or arrows on top of each other. */
  function layout() {
    var list = nodes(), ids = list.map(function (n) { return n.id; }), known = {};
    ids.forEach(function (id) { known[id] = true; });
    var outs = {}, pre = {}, mark = {}, post = [], counter = 0;
    list.forEach(function (n) {
      outs[n.id] = exits(n).filter(function (e) { return e.to && known[e.to]; })
        .map(function (e) { return { from: n.id, to: e.to, label: e.label, index: e.index, n: labels(n).length }; });
    });
    function dfs(id) {
      mark[id] = 1; pre[id] = counter++;
      outs[id].forEach(function (e) {
        if (mark[e.to] === 1) e.back = true;
        else if (!mark[e.to]) dfs(e.to);
      });
      mark[id] = 2; post.push(id);
    }
    ids.forEach(function (id) { if (!mark[id]) dfs(id); });
    var layer = {};
    ids.forEach(function (id) { layer[id] = 0; });
    post.slice().reverse().forEach(function (id) {
      outs[id].forEach(function (e) { if (!e.back) layer[e.to] = Math.max(layer[e.to], layer[id] + 1); });
    });
    var items = {}, rows = [], hops = [], edges = [];
    function add(item) {
      items[item.key] = item;
      (rows[item.layer] = rows[item.layer] || []).push(item);
    }
    list.forEach(function (n) {
      var h = H + (state.errors[n.id] ? ERR_H : 0);
      add({ key: n.id, node: n, layer: layer[n.id], w: W, h: h, pre: pre[n.id] });
    });
    ids.forEach(function (id) {
      outs[id].forEach(function (e) {
        var edge = { e: e, chain: [id] };
        if (!e.back) {
          var prev = id;
          for (var L = layer[id] + 1; L < layer[e.to]; L++) {
            var key = "~" + id + ":" + e.label + ":" + L;
            add({ key: key, dummy: true, layer: L, w: DUMMY, h: 0, pre: pre[id] + 0.5 });
            hops.push({ from: prev, to: key, index: prev === id ? e.index : 0 });
            edge.chain.push(key); prev = key;
          }
          hops.push({ from: prev, to: e.to, index: prev === id ? e.index : 0 });
        }
        edge.chain.push(e.to);
        edges.push(edge);
      });
    });
    // order each row by its items' best parent, then lay out the tree of first parents
    var pos = {}, parent = {}, kids = {};
    rows.forEach(function (row, L) {
      row = rows[L] = (row || []);
      row.forEach(function (it) {
        it.sort = 1e9 + it.pre;
        hops.forEach(function (hp) {
          if (hp.to !== it.key || items[hp.from].layer !== L - 1) return;
          var k = pos[hp.from] * 1000 + hp.index * 10 + (it.dummy ? 1 : 0);
          if (k < it.sort) { it.sort = k; parent[it.key] = hp.from; }
        });
      });
      row.sort(function (a, b) { return a.sort - b.sort || a.pre - b.pre; });
      row.forEach(function (it, i) { pos[it.key] = i; });
    });
    Object.keys(parent).forEach(function (k) { (kids[parent[k]] = kids[parent[k]] || []).push(items[k]); });
    Object.keys(kids).forEach(function (k) { kids[k].sort(function (a, b) { return a.sort - b.sort; }); });
    var span = {};
    for (var L = rows.length - 1; L >= 0; L--) {
      rows[L].forEach(function (it) {
        var ks = kids[it.key] || [], sum = 0;
        ks.forEach(function (c, i) { sum += span[c.key] + (i ? GAP_X : 0); });
        span[it.key] = Math.max(it.w, sum);
      });
    }
    function place(it, left) {
      it.cx = left + span[it.key] / 2;
      var ks = kids[it.key] || [], total = 0;
      ks.forEach(function (c, i) { total += span[c.key] + (i ? GAP_X : 0); });
      var start = it.cx - total / 2;
      ks.forEach(function (c) { place(c, start); start += span[c.key] + GAP_X; });
    }
    var cursor = 0;
    rows.forEach(function (row) {
      row.forEach(function (it) {
        if (parent[it.key] === undefined) { place(it, cursor); cursor += span[it.key] + GAP_X; }
      });
    });
    var width = Math.max(W, cursor - GAP_X);
    var top = PAD + H + GAP_Y, rowY = [], rowH = [];
    rows.forEach(function (row, L) {
      rowY[L] = top;
      rowH[L] = Math.max.apply(null, [H].concat(row.map(function (it) { return it.h; })));
      top += rowH[L] + GAP_Y;
    });
    Object.keys(items).forEach(function (k) {
      var it = items[k];
      it.y = rowY[it.layer];
      if (it.dummy) it.h = rowH[it.layer];
    });
    var backs = edges.filter(function (e) { return e.e.back; }).length;
    return {
      items: items, edges: edges, rowY: rowY, rowH: rowH, width: width + (backs ? 60 : 0),
      height: top - GAP_Y + (list.length ? 40 : 0) + PAD,
      first: list.length ? items[list[0].id] : null
    };
  }

  // ---------------------------------------------------------------- drawing
  function curve(a, b) {
    var dy = (b.y - a.y) / 2;
    return " C " + a.x + " " + (a.y + dy) + " " + b.x + " " + (b.y - dy) + " " + b.x + " " + b.y;
  }
  function exitX(it, index, count) {
    if (count < 2) return it.cx;
    var step = Math.min(70, (W - 40) / (count - 1));
    return it.cx + (index - (count - 1) / 2) * step;
  }
  function badge(id) {
    var n = (CFG.counts || {})[id] || 0;
    return el("span", { "class": "badge node-count" + (n ? " je-live" : ""), title: "persons at this step now", text: n.toLocaleString("en-US") });
  }
  function errorBox(key) {
    var list = state.errors[key];
    if (!list) return null;
    return el("div", { "class": "je-node-error", title: list.join("\n"), text: list.join("; ") });
  }

  function drawCanvas() {
    var g = layout(), canvas = el("div", { "class": "je-canvas" });
    var avail = Math.max(scroller.clientWidth - 2, 300);
    var offset = Math.max(PAD, (avail - g.width) / 2);
    var width = g.width + offset + PAD, height = g.height;
    var entryKeys = Object.keys(ENTRY_KEYS).filter(function (k) { return state.errors[k]; });
    var entryH = H + (entryKeys.length ? ERR_H : 0);
    var firstCx = g.first ? g.first.cx : g.width / 2;
    canvas.style.width = width + "px";
    canvas.style.height = height + entryH - H + "px";
    var shift = entryH - H;
    var art = svg("svg", { "class": "je-edges", width: width, height: height + shift });
    var defs = svg("defs", {});
    var marker = svg("marker", { id: "je-arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
    marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", "class": "je-arrow-head" }));
    defs.appendChild(marker);
    art.appendChild(defs);
    canvas.appendChild(art);
    function X(x) { return x + offset; }
    function Y(y) { return y + shift; }

    // the entry box, and its arrow to the first step
    var es = entrySummary();
    var entry = el("div", {
      "class": "je-node je-entry" + (state.selected === "entry" ? " je-selected" : "") + (entryKeys.length ? " je-has-error" : ""),
      id: "je-entry", "data-node": "entry", tabindex: "0",
      style: "left:" + (X(firstCx) - W / 2) + "px;top:" + PAD + "px;width:" + W + "px;height:" + entryH + "px"
    }, [
      el("div", { "class": "je-node-top" }, [el("span", { "class": "je-kind", text: "Entry" }), el("span", { "class": "je-id", text: es.rule })]),
      el("div", { "class": "je-summary", title: es.what, text: es.what }),
      el("div", { "class": "je-summary je-goal", text: es.goal ? "goal: " + es.goal : "no goal" }),
      entryKeys.length ? el("div", { "class": "je-node-error", text: entryKeys.map(function (k) { return k + ": " + state.errors[k].join("; "); }).join("; ") }) : null
    ]);
    canvas.appendChild(entry);
    if (g.first) {
      art.appendChild(svg("path", { d: "M " + X(firstCx) + " " + (PAD + entryH) + curve({ x: X(firstCx), y: PAD + entryH }, { x: X(firstCx), y: Y(g.first.y) }), "class": "je-edge", "marker-end": "url(#je-arrow)" }));
    } else if (EDIT) {
      canvas.appendChild(plusButton(null, "", X(firstCx), PAD + entryH + 34, "Add the first step"));
    }

    // arrows
    g.edges.forEach(function (edge) {
      var a = g.items[edge.chain[0]], b = g.items[edge.chain[edge.chain.length - 1]], e = edge.e;
      var sx = X(exitX(a, e.index, e.n)), sy = Y(a.y + a.h), d;
      if (e.back) {
        var ax = X(a.cx + W / 2), bx = X(b.cx + W / 2), ay = Y(a.y + a.h / 2), by = Y(b.y + b.h / 2);
        var out = Math.max(ax, bx) + 48;
        d = "M " + ax + " " + ay + " C " + out + " " + ay + " " + out + " " + by + " " + bx + " " + by;
      } else {
        var p = { x: sx, y: sy };
        d = "M " + sx + " " + sy;
        edge.chain.slice(1, -1).forEach(function (k) {
          var it = g.items[k], top = { x: X(it.cx), y: Y(it.y) }, bottom = { x: X(it.cx), y: Y(it.y + it.h) };
          d += curve(p, top) + " L " + bottom.x + " " + bottom.y;
          p = bottom;
        });
        d += curve(p, { x: X(b.cx), y: Y(b.y) });
      }
      art.appendChild(svg("path", { d: d, "class": "je-edge" + (e.back ? " je-back" : ""), "marker-end": "url(#je-arrow)", "data-from": e.from, "data-to": e.to }));
      if (e.label) {
        var lx = e.back ? X(a.cx + W / 2) + 24 : sx, ly = e.back ? Y(a.y + a.h / 2) - 10 : sy + 16;
        canvas.appendChild(el("span", { "class": "je-edge-label", "data-edge": e.from + ":" + e.label, style: "left:" + lx + "px;top:" + ly + "px", text: e.label }));
      }
    });

    // the steps, and a "+" under every exit that leads nowhere yet
    nodes().forEach(function (n) {
      var it = g.items[n.id];
      var box = el("div", {
        "class": "je-node je-k-" + n.kind + (state.selected === n.id ? " je-selected" : "") + (state.errors[n.id] ? " je-has-error" : ""),
        id: "node-" + n.id, "data-node": n.id, tabindex: "0",
        style: "left:" + X(it.cx - W / 2) + "px;top:" + Y(it.y) + "px;width:" + W + "px;height:" + it.h + "px"
      }, [
        el("div", { "class": "je-node-top" }, [
          el("span", { "class": "je-kind", text: KINDS[n.kind] || n.kind }),
          el("span", { "class": "je-id", text: n.id }), badge(n.id)
        ]),
        el("div", { "class": "je-summary je-two", title: summary(n), text: summary(n) }),
        errorBox(n.id)
      ]);
      canvas.appendChild(box);
      if (!EDIT) return;
      var ex = exits(n), count = labels(n).length;
      ex.forEach(function (e) {
        if (e.to || e.index >= count) return;
        var x = X(exitX(it, e.index, count)), y = Y(it.y + it.h);
        art.appendChild(svg("path", { d: "M " + x + " " + y + " L " + x + " " + (y + 22), "class": "je-edge je-open" }));
        if (e.label) canvas.appendChild(el("span", { "class": "je-edge-label", style: "left:" + x + "px;top:" + (y + 12) + "px", text: e.label }));
        canvas.appendChild(plusButton(n.id, e.label, x, y + 34, "Add a step after " + n.id + (e.label ? " (" + e.label + ")" : "")));
      });
    });
    if (state.menu) {  // room for the kind menu below its "+"
      canvas.appendChild(kindMenu());
      canvas.style.height = Math.max(parseFloat(canvas.style.height), state.menu.y + 170) + "px";
    }
    return canvas;
  }

  function plusButton(nodeId, label, x, y, title) {
    return el("button", {
      type: "button", "class": "je-plus", title: title, "aria-label": title,
      "data-after": nodeId === null ? "" : nodeId + (label ? ":" + label : ""),
      style: "left:" + x + "px;top:" + y + "px",
      onclick: function (ev) {
        ev.stopPropagation();
        state.menu = { node: nodeId, label: label, x: x, y: y };
        render(false);
      }
    }, ["+"]);
  }
  function kindMenu() {
    var m = state.menu;
    return el("div", { "class": "je-menu", style: "left:" + m.x + "px;top:" + (m.y + 18) + "px" },
      Object.keys(KINDS).map(function (k) {
        return el("button", {
          type: "button", "class": "btn btn-sm", "data-kind": k, text: KINDS[k],
          onclick: function (ev) {
            ev.stopPropagation();
            state.menu = null;
            addAfter(m.node, m.label, k);
          }
        });
      }));
  }

  // ---------------------------------------------------------------- edits
  function freshId(kind) {
    for (var i = 1; ; i++) if (!byId(kind + i)) return kind + i;
  }
  function blank(kind) {
    var first = function (wantKind) {
      var c = (CFG.channels || []).filter(function (ch) { return !wantKind || ch.kind === wantKind; })[0];
      return c ? c.name : "";
    };
    switch (kind) {
      case "wait": return { duration: "1 days" };
      case "branch": return { condition: "" };
      case "split": return { shares: { a: 50, b: 50 } };
      case "send": return { channel: first(null), content: { text: "" } };
      case "tag": return { tag: "", value: "" };
      case "lead": return { rule: (CFG.lead_rules || [])[0] || "" };
      case "webhook": return { channel: first("webhook") };
    }
    return {};
  }
  /** Insert a step of ``kind`` on ``label``'s exit of ``after`` (or first when null); what
   * the exit led to now follows the new step. */
  function addAfter(after, label, kind) {
    var id = freshId(kind), node = { id: id, kind: kind, params: blank(kind) };
    if (kind === "exit") delete node.params;
    var list = nodes();
    if (after === null) {
      if (list.length && kind !== "exit") setNextMap(node, { "": list[0].id, yes: list[0].id, a: list[0].id });
      list.unshift(node);
    } else {
      var parent = byId(after), m = nextMap(parent), old = m[label];
      if (old && kind !== "exit") {
        var ls = labels(node), nm = {};
        nm[ls[0]] = old;
        setNextMap(node, nm);
      }
      m[label] = id;
      setNextMap(parent, m);
      list.splice(list.indexOf(parent) + 1, 0, node);
    }
    state.selected = id;
    changed(true);
  }
  /** Delete a step; whoever led to it now leads to its only next step (or ends there). */
  function removeNode(id) {
    var list = nodes(), n = byId(id), wasFirst = list[0] === n;
    var targets = exits(n).map(function (e) { return e.to; })
      .filter(function (t, i, all) { return t && t !== id && byId(t) && all.indexOf(t) === i; });
    var heir = targets.length === 1 ? byId(targets[0]) : null;
    if (wasFirst && list.length > 1 && !heir) {
      toast("The first step leads to several steps: delete those first, or reorder in Advanced (JSON).", "error");
      return;
    }
    list.forEach(function (p) {
      var m = nextMap(p), hit = false;
      Object.keys(m).forEach(function (k) {
        if (m[k] !== id) return;
        hit = true;
        if (heir && p !== n) m[k] = heir.id; else delete m[k];
      });
      if (hit) setNextMap(p, m);
    });
    list.splice(list.indexOf(n), 1);
    if (wasFirst && heir) list.unshift(list.splice(list.indexOf(heir), 1)[0]);  // persons start there
    delete state.errors[id];
    state.selected = null;
    changed(true);
  }
  function rename(oldId, newId) {
    newId = newId.trim();
    if (!newId || newId === oldId) return;
    if (byId(newId)) { toast("There is already a step " + newId + ".", "error"); render(true); return; }
    byId(oldId).id = newId;
    nodes().forEach(function (p) {
      var m = nextMap(p), hit = false;
      Object.keys(m).forEach(function (k) { if (m[k] === oldId) { m[k] = newId; hit = true; } });
      if (hit) setNextMap(p, m);
    });
    if (CFG.counts && CFG.counts[oldId] !== undefined) { CFG.counts[newId] = CFG.counts[oldId]; delete CFG.counts[oldId]; }
    ["cond:", "until:"].forEach(function (pre) { state.printed[pre + newId] = state.printed[pre + oldId]; });
    state.errors[newId] = state.errors[oldId]; delete state.errors[oldId];
    state.selected = newId;
    changed(true);
  }

  // ---------------------------------------------------------------- the side panel
  function field(label, input, hint) {
    return el("label", {}, [label, input, hint ? el("span", { "class": "je-hint", text: hint }) : null]);
  }
  function input(name, value, onchange, attrs) {
    var a = Object.assign({ name: name, value: value === undefined || value === null ? "" : String(value) }, attrs || {});
    // typing redraws the canvas; ``done`` (the change event, on leaving the field) is only
    // for edits that restructure (renames): a redraw then would eat the click that left it
    a.oninput = function (e) { if (!(attrs && attrs.onDone)) onchange(e.target.value, false); };
    if (attrs && attrs.onDone) a.onchange = function (e) { onchange(e.target.value, true); };
    delete a.onDone;
    return el(attrs && attrs.rows ? "textarea" : "input", a);
  }
  function select(name, value, options, onchange) {
    var s = el("select", { name: name, onchange: function (e) { onchange(e.target.value); } },
      options.map(function (o) {
        var v = Array.isArray(o) ? o[0] : o, t = Array.isArray(o) ? o[1] : o;
        return el("option", { value: v, selected: String(v) === String(value), text: t });
      }));
    s.value = value === undefined || value === null ? "" : String(value);
    return s;
  }
  function durationFields(prefix, value, set) {
    var d = splitDuration(value);
    function write(amount, unit) { set(amount + " " + unit); }
    return el("div", { "class": "form-row" }, [
      field(prefix === "duration" ? "Wait for" : "At most", input(prefix + "-amount", d.amount, function (v) { d.amount = v; write(d.amount, d.unit); }, { type: "number", min: "1" })),
      field("Unit", select(prefix + "-unit", d.unit, UNITS, function (v) { d.unit = v; write(d.amount, d.unit); }))
    ]);
  }
  function soft(full) { changed(!!full); }

  function nodeForm(n) {
    var p = params(n), out = [];
    if (n.kind === "wait") {
      var mode = p.cycle !== undefined ? "cycle" : p.until !== undefined ? "until" : "duration";
      out.push(field("Wait", select("wait-mode", mode, [["duration", "a fixed time"], ["until", "until an event (with a timeout)"], ["cycle", "the person's own purchase cycle"]], function (v) {
        n.params = v === "duration" ? { duration: "1 days" } : v === "until" ? { until: { event: "" }, timeout: "7 days" }
          : { cycle: "order_paid", fallback_days: 30, min_orders: 2 };
        reshapeNext(n); changed(true);
      })));
      if (mode === "duration") out.push(durationFields("duration", p.duration, function (v) { p.duration = v; soft(); }));
      if (mode === "until") {
        out.push(field("Until", input("until", eventText(p.until, "until:" + n.id), function (v) { p.until = fromEventText(v) || { event: "" }; soft(); }, { placeholder: "add_to_cart, or: event order_paid where amount > 100" })));
        out.push(durationFields("timeout", p.timeout, function (v) { p.timeout = v; soft(); }));
      }
      if (mode === "cycle") {
        out.push(field("Event", input("cycle", p.cycle, function (v) { p.cycle = v.trim(); soft(); })));
        out.push(el("div", { "class": "form-row" }, [
          field("Fallback days", input("fallback_days", p.fallback_days, function (v) { p.fallback_days = parseInt(v, 10) || 0; soft(); }, { type: "number", min: "1" })),
          field("Min. events", input("min_orders", p.min_orders === undefined ? 2 : p.min_orders, function (v) { p.min_orders = parseInt(v, 10) || 0; soft(); }, { type: "number", min: "2" }))
        ]));
      }
    } else if (n.kind === "branch") {
      var check = el("div", { "class": "je-check", id: "je-condition-check" });
      var timer = null;
      var ta = input("condition", conditionText(n), function (v) {
        p.condition = v; soft();
        clearTimeout(timer);
        timer = setTimeout(function () { checkCondition(v, check); }, 400);
      }, { rows: "3", "class": "mono", spellcheck: "false", placeholder: "did order_paid at least 3 times in last 90 days" });
      out.push(field("Condition (yes when it holds)", ta, "the condition language: docs/conditions.md"));
      out.push(check);
    } else if (n.kind === "split") {
      var shares = p.shares || (p.shares = {});
      var arms = Object.keys(shares);
      arms.forEach(function (arm) {
        out.push(el("div", { "class": "form-row je-arm" }, [
          field("Arm", input("arm-name", arm, function (v) {
            v = v.trim();
            if (!v || v === arm || shares[v] !== undefined) { render(true); return; }
            var rebuilt = {}, m = nextMap(n);
            Object.keys(shares).forEach(function (k) { rebuilt[k === arm ? v : k] = shares[k]; });
            p.shares = rebuilt;
            if (m[arm]) { m[v] = m[arm]; delete m[arm]; }
            setNextMap(n, m); changed(true);
          }, { onDone: true })),
          field("Share %", input("arm-share", shares[arm], function (v) { shares[arm] = parseInt(v, 10) || 0; soft(); }, { type: "number", min: "1", max: "100" })),
          el("button", { type: "button", "class": "btn btn-sm btn-ghost", title: "Remove arm " + arm, text: "✕", onclick: function () {
            var m = nextMap(n);
            delete shares[arm]; delete m[arm]; setNextMap(n, m); changed(true);
          } })
        ]));
      });
      out.push(el("button", { type: "button", "class": "btn btn-sm", text: "+ Arm", onclick: function () {
        var name = "abcdefghijklmnopqrstuvwxyz".split("").filter(function (c) { return shares[c] === undefined; })[0] || "arm" + arms.length;
        shares[name] = 10; changed(true);
      } }));
      var total = arms.reduce(function (s, a) { return s + (shares[a] || 0); }, 0);
      out.push(el("p", { "class": "je-hint", text: "Shares add up to " + total + "%" + (total === 100 ? "." : " (the rest of the persons leave at the split).") }));
    } else if (n.kind === "send" || n.kind === "webhook") {
      var chans = (CFG.channels || []).filter(function (c) { return n.kind === "send" || c.kind === "webhook"; });
      var opts = chans.map(function (c) { return [c.name, c.name + " (" + c.kind + ")"]; });
      if (p.channel && !chans.some(function (c) { return c.name === p.channel; })) opts.unshift([p.channel, p.channel + " (unknown)"]);
      if (!opts.length) opts = [["", "no channels yet: create one under Delivery"]];
      out.push(field("Channel", select("channel", p.channel || "", opts, function (v) { p.channel = v; soft(); })));
      if (n.kind === "send") {
        var content = p.content && typeof p.content === "object" ? p.content : (p.content = { text: "" });
        Object.keys(content).forEach(function (k) {
          out.push(field("Content: " + k, input("content-" + k, content[k], function (v) { content[k] = v; soft(); }, { rows: "3" })));
        });
        var extra = el("input", { name: "content-field", placeholder: "title, url, template_id…" });
        out.push(el("div", { "class": "form-row" }, [field("Another field", extra), el("button", { type: "button", "class": "btn btn-sm", text: "Add field", onclick: function () {
          var k = extra.value.trim();
          if (k && content[k] === undefined) { content[k] = ""; changed(true); }
        } })]));
        out.push(el("p", { "class": "je-hint", text: "Templates use the person's attributes: Hi {{ nickname }}" }));
      } else {
        out.push(field("Extra payload (JSON, optional)", input("payload", p.payload ? JSON.stringify(p.payload) : "", function (v) {
          try { if (v.trim()) p.payload = JSON.parse(v); else delete p.payload; soft(); } catch (e) { toast("payload: " + e.message, "error"); }
        }, { rows: "2", "class": "mono", onDone: true })));
      }
    } else if (n.kind === "tag") {
      var manual = CFG.manual_tags || [], tagDef = manual.filter(function (t) { return t.name === p.tag; })[0];
      var options = function (id, values) {
        return el("datalist", { id: id }, values.map(function (v) { return el("option", { value: String(v) }); }));
      };
      out.push(options("je-tags", manual.map(function (t) { return t.name; })));
      out.push(options("je-tag-values", tagDef ? tagDef.values : []));
      out.push(el("div", { "class": "form-row" }, [
        field("Manual tag", input("tag", p.tag, function (v) { p.tag = v.trim(); soft(); }, { list: "je-tags" })),
        field("Value", input("value", p.value, function (v) { p.value = v; soft(); }, { list: "je-tag-values" }))
      ]));
    } else if (n.kind === "lead") {
      var rules = (CFG.lead_rules || []).slice();
      if (p.rule && rules.indexOf(p.rule) < 0) rules.unshift(p.rule);
      out.push(field("Lead rule", rules.length ? select("rule", p.rule || "", rules, function (v) { p.rule = v; soft(); })
        : el("span", { "class": "muted", text: "No lead rules yet: create one under Leads." })));
    } else if (n.kind === "exit") {
      out.push(el("p", { "class": "muted", text: "The person leaves the journey here (status done)." }));
    }
    return out;
  }

  function checkCondition(text, box) {
    if (!text.trim()) { box.textContent = ""; return; }
    api("POST", "/api/conditions/validate", { text: text }).then(function (r) {
      box.innerHTML = "";
      if (!r.ok) { box.className = "je-check je-bad"; box.textContent = "could not check: " + r.status; return; }
      box.className = "je-check " + (r.data.valid ? "je-good" : "je-bad");
      box.textContent = r.data.valid ? "✓ valid condition" : r.data.errors.map(function (e) { return e.path + ": " + e.message; }).join("; ");
    });
  }

  function nextForm(n) {
    var others = nodes().filter(function (o) { return o !== n; }).map(function (o) { return [o.id, o.id + " (" + (KINDS[o.kind] || o.kind) + ")"]; });
    var rows = exits(n).map(function (e) {
      return field((e.label ? e.label : "Next") + " →", select("next-" + (e.label || "step"), e.to || "", [["", "(end of the journey)"]].concat(others), function (v) {
        var m = nextMap(n);
        if (v) m[e.label] = v; else delete m[e.label];
        setNextMap(n, m); changed(true);
      }));
    });
    return rows.length ? el("div", { "class": "je-next" }, [el("h3", { text: "Then" })].concat(rows)) : null;
  }

  function addForm(n) {
    var ls = labels(n);
    if (!ls.length) return null;
    var exitSel = ls.length > 1 ? select("add-exit", ls[0], ls, function () {}) : null;
    var kindSel = select("add-kind", "wait", Object.keys(KINDS).map(function (k) { return [k, KINDS[k]]; }), function () {});
    return el("div", { "class": "je-add" }, [
      el("h3", { text: "Add a step after" }),
      el("div", { "class": "form-row" }, [
        exitSel ? field("Exit", exitSel) : null,
        field("Kind", kindSel),
        el("button", { type: "button", "class": "btn btn-sm", id: "je-add-step", text: "Add step", onclick: function () {
          addAfter(n.id, exitSel ? exitSel.value : ls[0], kindSel.value);
        } })
      ])
    ]);
  }

  function entryForm() {
    var d = state.def, out = [];
    var scheduled = d.entry && typeof d.entry === "object" && d.entry.schedule !== undefined;
    out.push(field("Persons enter", select("entry-mode", scheduled ? "schedule" : "event", [["event", "when an event happens"], ["schedule", "on a schedule, the members of an audience"]], function (v) {
      d.entry = v === "schedule" ? { schedule: "daily at 09:00", audience: "" } : { event: "" };
      changed(true);
    })));
    if (scheduled) {
      out.push(el("div", { "class": "form-row" }, [
        field("Schedule", input("schedule", d.entry.schedule, function (v) { d.entry.schedule = v; soft(); }, { placeholder: "daily at 09:00" })),
        field("Audience", input("audience", d.entry.audience, function (v) { d.entry.audience = v.trim(); soft(); }))
      ]));
    } else {
      out.push(field("Entry event", input("entry", eventText(d.entry, "entry"), function (v) { d.entry = fromEventText(v) || { event: "" }; soft(); }, { placeholder: "register, or: event register where channel = \"app\"" })));
    }
    var rule = d.entry_rule || "once", per = rule && typeof rule === "object" ? rule.once_per : null;
    out.push(field("Entry rule", select("entry_rule", per ? "once_per" : rule, [["once", "once per person, ever"], ["every_time", "every time (when not in it)"], ["once_per", "at most once per…"]], function (v) {
      d.entry_rule = v === "once_per" ? { once_per: "30 days" } : v;
      changed(true);
    })));
    if (per) out.push(durationFields("once_per", per, function (v) { d.entry_rule = { once_per: v }; soft(); }));
    out.push(field("Goal (optional)", input("goal", d.goal ? eventText(d.goal, "goal") : "", function (v) {
      var g = fromEventText(v);
      if (g) d.goal = g; else delete d.goal;
      soft();
    }, { placeholder: "order_paid: persons leave when it happens" })));
    out.push(field("Description", input("description", CFG.description, function (v) { CFG.description = v; state.dirty = true; renderToolbar(); })));
    return out;
  }

  function drawPanel() {
    var panel = el("aside", { "class": "je-panel", id: "je-panel" });
    var sel = state.selected, n = sel && sel !== "entry" ? byId(sel) : null;
    if (sel === "entry") {
      panel.appendChild(el("div", { "class": "je-panel-head" }, [el("h3", { text: "Entry and goal" }), closeButton()]));
      (EDIT ? entryForm() : [el("p", { text: entrySummary().what })]).forEach(function (x) { panel.appendChild(x); });
    } else if (n) {
      panel.appendChild(el("div", { "class": "je-panel-head" }, [
        el("h3", {}, [el("span", { "class": "je-kind je-k-" + n.kind, text: KINDS[n.kind] || n.kind }), " " + n.id]), closeButton()
      ]));
      (state.errors[n.id] || []).forEach(function (m) { panel.appendChild(el("div", { "class": "alert alert-error", text: m })); });
      if (!EDIT) {
        panel.appendChild(el("pre", { text: JSON.stringify(n, null, 2) }));
        return panel;
      }
      panel.appendChild(field("Step id", input("node-id", n.id, function (v) { rename(n.id, v); }, { pattern: "[A-Za-z0-9_.\\-]+", onDone: true })));
      nodeForm(n).forEach(function (x) { panel.appendChild(x); });
      var nf = nextForm(n);
      if (nf) panel.appendChild(nf);
      var af = addForm(n);
      if (af) panel.appendChild(af);
      panel.appendChild(el("div", { "class": "actions je-danger" }, [el("button", {
        type: "button", "class": "btn btn-sm btn-danger", id: "je-delete", text: "Delete step",
        onclick: function () { removeNode(n.id); }
      })]));
    } else {
      panel.appendChild(el("h3", { text: EDIT ? "Edit the journey" : "The journey" }));
      panel.appendChild(el("p", { "class": "muted", text: EDIT
        ? "Click a step to edit it, the entry box for the entry event, rule and goal; + adds a step on an open exit. Save checks the journey against the tracking plan, channels and lead rules."
        : "Click a step to see its parameters." }));
      panel.appendChild(el("p", { "class": "muted", text: "The badge on each step is the number of persons waiting there now." }));
    }
    return panel;
  }
  function closeButton() {
    return el("button", { type: "button", "class": "btn btn-sm btn-ghost", title: "Close", text: "✕", onclick: function () { state.selected = null; render(true); } });
  }

  // ---------------------------------------------------------------- toolbar, JSON, save
  var toolbar = document.getElementById("je-toolbar");
  var nameInput = CFG.id === null ? el("input", { name: "journey-name", id: "je-name", placeholder: "journey name, e.g. welcome", pattern: "[A-Za-z0-9_.\\-]+", maxlength: "100", oninput: function () { state.dirty = true; renderToolbar(); } }) : null;
  function renderToolbar() {
    if (!toolbar) return;
    toolbar.innerHTML = "";
    if (state.dirty) toolbar.appendChild(el("span", { "class": "je-dirty", text: "unsaved changes" }));
    if (!EDIT) return;
    if (nameInput) toolbar.appendChild(nameInput);
    toolbar.appendChild(el("button", { type: "button", "class": "btn btn-primary", id: "je-save", text: CFG.id === null ? "Create journey (draft)" : "Save", onclick: save }));
    if (CFG.id !== null) {
      toolbar.appendChild(el("button", { type: "button", "class": "btn btn-ghost", id: "je-revert", text: "Discard changes", disabled: !state.dirty, onclick: function () {
        state.def = JSON.parse(JSON.stringify(CFG.definition)); state.errors = {}; state.selected = null; state.dirty = false; render(true);
      } }));
    }
  }
  function errorList() {
    var keys = Object.keys(state.errors);
    if (!keys.length) return null;
    return el("div", { "class": "alert alert-error je-errors", id: "je-errors" }, [
      el("strong", { text: "The journey was not saved:" }),
      el("ul", {}, keys.map(function (k) {
        return el("li", {}, [el("a", { href: "#", text: k, onclick: function (e) {
          e.preventDefault();
          if (byId(k)) state.selected = k; else if (ENTRY_KEYS[k]) state.selected = "entry";
          render(true);
        } }), ": " + state.errors[k].join("; ")]);
      }))
    ]);
  }
  var jsonBox = el("details", { "class": "je-json", id: "je-json", ontoggle: function () { if (jsonBox.open) jsonArea.value = JSON.stringify(state.def, null, 2); } });
  var jsonArea = el("textarea", { name: "definition", rows: "18", "class": "mono", spellcheck: "false", readonly: !EDIT });
  jsonBox.appendChild(el("summary", { "class": "muted", text: "Advanced (JSON)" }));
  jsonBox.appendChild(jsonArea);
  if (EDIT) {
    jsonBox.appendChild(el("div", { "class": "actions" }, [el("button", { type: "button", "class": "btn btn-sm", id: "je-apply-json", text: "Apply to the canvas", onclick: function () {
      try {
        var d = JSON.parse(jsonArea.value);
        if (!d || typeof d !== "object" || Array.isArray(d)) throw new Error("the definition is a JSON object");
        if (!Array.isArray(d.nodes)) d.nodes = [];
        state.def = d; state.selected = null; changed(true); printAll();
        toast("Applied: Save to keep it.");
      } catch (e) { toast("definition: " + e.message, "error"); }
    } })]));
  }

  function save() {
    state.menu = null;
    var body = { description: CFG.description || "", definition: state.def }, req;
    if (CFG.id === null) {
      body.name = nameInput.value.trim();
      if (!body.name) { state.errors = { journey: ["a name is required (letters, digits, _ . -)"] }; render(true); nameInput.focus(); return; }
      req = api("POST", "/api/journeys", body);
    } else {
      req = api("PUT", "/api/journeys/" + CFG.id, body);
    }
    req.then(function (r) {
      if (r.ok) {
        state.errors = {};
        if (CFG.id === null) { state.dirty = false; window.location = "/journeys/" + r.data.id; return; }
        CFG.definition = JSON.parse(JSON.stringify(state.def));
        state.dirty = false;
        toast("Journey " + r.data.name + " saved.");
        render(true);
        return;
      }
      state.errors = apiErrors(r);
      var keys = Object.keys(state.errors), firstNode = keys.filter(function (k) { return byId(k); })[0];
      if (firstNode) state.selected = firstNode;
      else if (keys.some(function (k) { return ENTRY_KEYS[k]; })) state.selected = "entry";
      toast("Not saved: " + keys.length + " problem" + (keys.length > 1 ? "s" : "") + ", shown on the steps.", "error");
      render(true);
    }).catch(function () { toast("The server did not answer; check that rapport serve is running.", "error"); });
  }
  /** The API's 422 answer by what it names: a node, entry / goal / entry_rule, or a field. */
  function apiErrors(r) {
    var out = {}, detail = r.data && r.data.detail;
    function put(k, m) { (out[k] = out[k] || []).push(m); }
    if (Array.isArray(detail)) {
      detail.forEach(function (d) {
        if (d.node !== undefined) put(d.node, d.message);
        else put((d.loc || []).slice(1).join(".") || "journey", d.msg || JSON.stringify(d));
      });
    } else {
      put("journey", typeof detail === "string" ? detail : r.status + " error");
    }
    return out;
  }

  // ---------------------------------------------------------------- render
  var layoutBox = el("div", { "class": "je-layout" });
  var scroller = el("div", { "class": "je-scroll", id: "je-canvas" });
  var side = el("div", { "class": "je-side" });
  var errorsSlot = el("div", {});
  layoutBox.appendChild(scroller);
  layoutBox.appendChild(side);
  root.innerHTML = "";
  root.appendChild(errorsSlot);
  root.appendChild(layoutBox);
  root.appendChild(jsonBox);

  function render(full) {
    var keep = scroller.scrollLeft, keepTop = scroller.scrollTop;
    scroller.innerHTML = "";
    scroller.appendChild(drawCanvas());
    scroller.scrollLeft = keep; scroller.scrollTop = keepTop;
    errorsSlot.innerHTML = "";
    var errs = errorList();
    if (errs) errorsSlot.appendChild(errs);
    if (full) { side.innerHTML = ""; side.appendChild(drawPanel()); }
    if (jsonBox.open && full) jsonArea.value = JSON.stringify(state.def, null, 2);
    renderToolbar();
  }

  scroller.addEventListener("click", function (e) {
    var box = e.target.closest && e.target.closest("[data-node]");
    if (state.menu && !(e.target.closest && e.target.closest(".je-menu"))) { state.menu = null; render(false); }
    if (!box) return;
    state.selected = box.getAttribute("data-node");
    render(true);
  });
  scroller.addEventListener("keydown", function (e) {
    var box = e.target.closest && e.target.closest("[data-node]");
    if (box && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); box.click(); }
  });
  window.addEventListener("beforeunload", function (e) {
    if (state.dirty && EDIT) { e.preventDefault(); e.returnValue = ""; }
  });
  window.addEventListener("resize", function () { render(false); });
  if (CFG.id === null) state.selected = "entry";
  render(true);
  printAll();
})();
