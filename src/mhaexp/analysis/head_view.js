// mhaexp head view (see head_view.py): renders the JSON in #hv-data into #hv-root. No dependencies.
(function () {
  "use strict";
  var ROW = 18, WIDTH = 260;
  var TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var SVGNS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("hv-data").textContent);
  var root = document.getElementById("hv-root");
  var state = { layer: 0, on: [], hover: null };

  function color(h, n) { return n <= TAB10.length ? TAB10[h] : "hsl(" + Math.round((360 * h) / n) + ",70%,45%)"; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  var title = el("h1", null, data.title);
  var meta = el("div", "hv-meta",
    (data.causal ? "causal: each query sees itself and earlier tokens" : "bidirectional: each query sees every token") +
    " \u00b7 " + data.tokens.length + " tokens \u00b7 lines for weights \u2265 " + data.threshold +
    " \u00b7 left: query (from), right: key (to); hover a token, click a head to show or hide it");
  var controls = el("div", "hv-controls");
  var layerLabel = el("label", null, "Layer ");
  var select = el("select");
  select.id = "hv-layer";
  data.layers.forEach(function (_, i) {
    var o = el("option", null, String(i));
    o.value = String(i);
    select.appendChild(o);
  });
  layerLabel.appendChild(select);
  controls.appendChild(layerLabel);
  var heads = el("div", "hv-controls");
  heads.id = "hv-heads";
  controls.appendChild(heads);
  var info = el("div", "hv-info");
  info.id = "hv-info";
  var scroll = el("div", "hv-scroll");
  var view = el("div", "hv-view");
  var left = el("div", "hv-col hv-left");
  var right = el("div", "hv-col hv-right");
  var svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("class", "hv-lines");
  svg.setAttribute("width", WIDTH);
  svg.setAttribute("height", data.tokens.length * ROW);
  [left, right].forEach(function (col, side) {
    data.tokens.forEach(function (t, i) {
      var d = el("div", "hv-tok");
      d.dataset.pos = String(i);
      d.dataset.side = side ? "key" : "query";
      var pos = el("span", "hv-pos", String(i));
      var word = el("span", null, t);
      if (side) { d.appendChild(pos); d.appendChild(word); } else { d.appendChild(word); d.appendChild(pos); }
      d.addEventListener("mouseenter", function () { state.hover = { side: d.dataset.side, pos: i }; draw(); });
      d.addEventListener("mouseleave", function () { state.hover = null; draw(); });
      col.appendChild(d);
    });
  });
  view.appendChild(left);
  view.appendChild(svg);
  view.appendChild(right);
  scroll.appendChild(view);
  [title, meta, controls, info, scroll].forEach(function (e) { root.appendChild(e); });

  function layerHeads() { return data.layers[state.layer].heads; }

  function buildHeads() {
    heads.textContent = "";
    var hs = layerHeads(), n = hs.length, groups = {};
    var grouped = data.layers[state.layer].n_kv_heads < n;
    hs.forEach(function (h, i) {
      if (!groups[h.kv]) {
        groups[h.kv] = el("div", "hv-group");
        groups[h.kv].appendChild(el("div", "hv-group-label", grouped ? "KV head " + h.kv : "heads"));
        if (grouped || i === 0) heads.appendChild(groups[h.kv]);
      }
      var b = el("button", "hv-head", h.label + (grouped ? " \u00b7 kv" + h.kv : ""));
      b.dataset.head = String(i);
      b.style.borderColor = color(i, n);
      b.addEventListener("click", function () { state.on[i] = !state.on[i]; draw(); });
      (grouped ? groups[h.kv] : groups[hs[0].kv]).appendChild(b);
    });
  }

  function draw() {
    var hs = layerHeads(), n = hs.length, hv = state.hover, scale = data.scale;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var frag = document.createDocumentFragment(), seen = [];
    hs.forEach(function (h, i) {
      var b = heads.querySelector('button[data-head="' + i + '"]');
      b.classList.toggle("off", !state.on[i]);
      b.style.background = state.on[i] ? color(i, n) + "22" : "";
      if (!state.on[i]) return;
      var c = color(i, n), L = h.links;
      for (var j = 0; j < L.length; j += 3) {
        var q = L[j], k = L[j + 1], w = L[j + 2] / scale;
        if (hv && ((hv.side === "query" && q !== hv.pos) || (hv.side === "key" && k !== hv.pos))) continue;
        if (hv) seen.push([i, hv.side === "query" ? k : q, w]);
        var line = document.createElementNS(SVGNS, "line");
        line.setAttribute("class", "attn");
        line.setAttribute("x1", 2);
        line.setAttribute("y1", q * ROW + ROW / 2);
        line.setAttribute("x2", WIDTH - 2);
        line.setAttribute("y2", k * ROW + ROW / 2);
        line.setAttribute("stroke", c);
        line.setAttribute("stroke-opacity", w.toFixed(3));
        line.setAttribute("stroke-width", (1 + 2 * w).toFixed(2));
        line.dataset.head = String(i);
        line.dataset.q = String(q);
        line.dataset.k = String(k);
        frag.appendChild(line);
      }
    });
    svg.appendChild(frag);
    document.querySelectorAll(".hv-tok.hot").forEach(function (e) { e.classList.remove("hot"); });
    document.querySelectorAll(".hv-tok.lit").forEach(function (e) { e.classList.remove("lit"); e.style.background = ""; });
    if (!hv) { info.textContent = "Hover a token: left, where it looks; right, who looks at it."; return; }
    var col = hv.side === "query" ? left : right, other = hv.side === "query" ? right : left;
    col.children[hv.pos].classList.add("hot");
    // The other column's tokens shaded by their largest weight over the shown heads.
    var most = {};
    seen.forEach(function (s) { most[s[1]] = Math.max(most[s[1]] || 0, s[2]); });
    Object.keys(most).forEach(function (p) {
      var t = other.children[+p];
      t.classList.add("lit");
      t.style.background = "rgba(255, 170, 0, " + (0.15 + 0.85 * most[p]).toFixed(3) + ")";
    });
    seen.sort(function (a, b) { return b[2] - a[2]; });
    var word = data.tokens[hv.pos];
    var head = hv.side === "query" ? '"' + word + '" (' + hv.pos + ") attends to: " : '"' + word + '" (' + hv.pos + ") is attended from: ";
    info.textContent = head + (seen.length ? seen.slice(0, 8).map(function (s) {
      return "H" + s[0] + " " + data.tokens[s[1]] + "(" + s[1] + ") " + s[2].toFixed(2);
    }).join(", ") : "nothing above the threshold");
  }

  function setLayer(l) {
    state.layer = l;
    state.on = layerHeads().map(function () { return true; });
    buildHeads();
    draw();
  }
  select.addEventListener("change", function () { setLayer(parseInt(select.value, 10)); });
  setLayer(0);
  document.body.dataset.ready = "1";
})();
