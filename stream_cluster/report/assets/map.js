// stream-cluster report: the map of the collection. No library, no network: it reads the JSON
// data block #map-data, draws every image as a point on the canvas #map, shows a thumbnail on
// hover (and draws thumbnails when zoomed in), and a click opens the point's cluster page.
// Only integers from the data block go into URLs; no file name ever reaches this script.
(function () {
  "use strict";
  var canvas = document.getElementById("map");
  var source = document.getElementById("map-data");
  if (!canvas || !source) { return; }
  var data = JSON.parse(source.textContent);
  var n = data.n, sizes = data.sizes, colours = data.colours;

  // Positions: base64 of little-endian uint16 pairs, clusters one after the other,
  // each cluster's images nearest the centre first (so cluster and rank follow from the order).
  var bytes = Uint8Array.from(atob(data.xy), function (ch) { return ch.charCodeAt(0); });
  var view = new DataView(bytes.buffer);
  var px = new Float32Array(n), py = new Float32Array(n);
  var cl = new Uint32Array(n), rk = new Uint32Array(n), start = [];
  var i = 0;
  for (var c = 0; c < sizes.length; c++) {
    start.push(i);
    for (var r = 0; r < sizes[c]; r++, i++) {
      px[i] = view.getUint16(4 * i, true) / 65535;
      py[i] = view.getUint16(4 * i + 2, true) / 65535;
      cl[i] = c; rk[i] = r;
    }
  }

  // A grid over the unit square for finding the point under the cursor quickly.
  var G = 128, cells = new Array(G * G);
  for (i = 0; i < n; i++) {
    var g = Math.min(G - 1, Math.floor(px[i] * G)) * G + Math.min(G - 1, Math.floor(py[i] * G));
    (cells[g] || (cells[g] = [])).push(i);
  }

  // The points' bounding box, fitted to the canvas with the aspect ratio kept.
  var minX = 1, minY = 1, maxX = 0, maxY = 0;
  for (i = 0; i < n; i++) {
    minX = Math.min(minX, px[i]); maxX = Math.max(maxX, px[i]);
    minY = Math.min(minY, py[i]); maxY = Math.max(maxY, py[i]);
  }
  var spanX = Math.max(maxX - minX, 1e-6), spanY = Math.max(maxY - minY, 1e-6);

  var ctx = canvas.getContext("2d");
  var scale = 1, ox = 0, oy = 0, base = 1, width = 0, height = 0, pending = false;
  var thumbs = new Map(), hover = -1;
  var tip = document.getElementById("map-tip");
  var tipImg = null, tipText = null;

  function thumbUrl(j) { return "thumbs/" + cl[j] + "/" + rk[j] + ".jpg"; }
  function pageUrl(j) {
    var page = Math.floor(rk[j] / data.perPage);
    return "clusters/" + cl[j] + (page ? "-" + (page + 1) : "") + ".html#m" + rk[j];
  }
  function sx(j) { return ox + px[j] * base * scale; }
  function sy(j) { return oy + py[j] * base * scale; }

  function resize() {
    var ratio = window.devicePixelRatio || 1;
    width = canvas.clientWidth; height = canvas.clientHeight;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    if (base === 1 || scale === 1) {
      base = Math.min((width - 24) / spanX, (height - 24) / spanY);
      if (n === 1) { base = 1; }
      scale = 1;
      ox = (width - spanX * base) / 2 - minX * base;
      oy = (height - spanY * base) / 2 - minY * base;
    }
    draw();
  }

  function visible() {
    var out = [];
    for (var j = 0; j < n; j++) {
      var x = sx(j), y = sy(j);
      if (x >= -8 && y >= -8 && x <= width + 8 && y <= height + 8) { out.push(j); }
    }
    return out;
  }

  function draw() {
    pending = false;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    // bigger points for fewer images, and as the view zooms in
    var dot = Math.max(2, 7 - 1.2 * Math.log10(Math.max(n, 1)));
    var size = Math.min(12, dot * Math.sqrt(scale));
    // largest clusters first, so small ones stay visible on top
    var byCount = sizes.map(function (s, k) { return k; })
      .sort(function (a, b) { return sizes[b] - sizes[a] || a - b; });
    var drawn = 0;
    byCount.forEach(function (k) {
      ctx.fillStyle = colours[k];
      for (var j = start[k]; j < start[k] + sizes[k]; j++) {
        ctx.fillRect(sx(j) - size / 2, sy(j) - size / 2, size, size);
        drawn++;
      }
    });
    canvas.dataset.points = String(drawn);
    if (scale > 1.5) {
      var shown = visible();
      if (shown.length <= 250) { drawThumbs(shown); }
    }
    if (hover >= 0) {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
      ctx.strokeRect(sx(hover) - 5, sy(hover) - 5, 10, 10);
    }
  }

  function drawThumbs(shown) {
    var h = Math.min(96, 12 * Math.sqrt(scale)), w = h * data.thumb[0] / data.thumb[1];
    shown.forEach(function (j) {
      var key = cl[j] + "/" + rk[j], img = thumbs.get(key);
      if (!img) {
        img = new Image();
        img.onload = redraw;
        img.src = thumbUrl(j);
        thumbs.set(key, img);
      }
      if (img.complete && img.naturalWidth > 0) {
        ctx.drawImage(img, sx(j) - w / 2, sy(j) - h / 2, w, h);
        ctx.strokeStyle = colours[cl[j]]; ctx.lineWidth = 2;
        ctx.strokeRect(sx(j) - w / 2, sy(j) - h / 2, w, h);
      }
    });
  }

  function redraw() {
    if (!pending) { pending = true; window.requestAnimationFrame(draw); }
  }

  function nearest(x, y, radius) {
    var ux = (x - ox) / (base * scale), uy = (y - oy) / (base * scale);
    var ur = radius / (base * scale), best = -1, bestD = radius * radius;
    var g0 = Math.max(0, Math.floor((ux - ur) * G)), g1 = Math.min(G - 1, Math.floor((ux + ur) * G));
    var h0 = Math.max(0, Math.floor((uy - ur) * G)), h1 = Math.min(G - 1, Math.floor((uy + ur) * G));
    for (var a = g0; a <= g1; a++) {
      for (var b = h0; b <= h1; b++) {
        var cell = cells[a * G + b];
        if (!cell) { continue; }
        for (var t = 0; t < cell.length; t++) {
          var j = cell[t], dx = sx(j) - x, dy = sy(j) - y, d = dx * dx + dy * dy;
          if (d <= bestD) { best = j; bestD = d; }
        }
      }
    }
    return best;
  }

  function local(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  function showTip(j, x, y) {
    if (!tipImg) {
      tipImg = document.createElement("img");
      tipImg.width = data.thumb[0]; tipImg.height = data.thumb[1];
      tipImg.alt = "thumbnail";
      tipText = document.createElement("span");
      tip.appendChild(tipImg); tip.appendChild(tipText);
    }
    tipImg.src = thumbUrl(j);
    tipText.textContent = "cluster " + cl[j] + " \u2014 #" + (rk[j] + 1) + " of " +
      sizes[cl[j]] + " (nearest the centre first); click to open";
    tip.hidden = false;
    tip.style.left = Math.min(x + 16, width - 180) + "px";
    tip.style.top = Math.min(y + 16, height - data.thumb[1] - 40) + "px";
  }

  var drag = null;
  canvas.addEventListener("mousedown", function (e) {
    var p = local(e); drag = { x: p[0], y: p[1], ox: ox, oy: oy, moved: false };
  });
  window.addEventListener("mouseup", function (e) {
    if (drag && !drag.moved) {
      var p = local(e), j = nearest(p[0], p[1], 8);
      if (j >= 0) { window.location.href = pageUrl(j); }
    }
    drag = null;
  });
  canvas.addEventListener("mousemove", function (e) {
    var p = local(e);
    if (drag) {
      if (Math.abs(p[0] - drag.x) + Math.abs(p[1] - drag.y) > 3) { drag.moved = true; }
      if (drag.moved) { ox = drag.ox + p[0] - drag.x; oy = drag.oy + p[1] - drag.y; redraw(); }
      return;
    }
    var j = nearest(p[0], p[1], 8);
    if (j !== hover) { hover = j; redraw(); }
    if (j >= 0) { showTip(j, p[0], p[1]); canvas.style.cursor = "pointer"; }
    else { tip.hidden = true; canvas.style.cursor = "default"; }
  });
  canvas.addEventListener("mouseleave", function () {
    hover = -1; tip.hidden = true; redraw();
  });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var p = local(e), f = Math.exp(-e.deltaY * 0.0015);
    var next = Math.max(0.5, Math.min(400, scale * f));
    f = next / scale; scale = next;
    ox = p[0] - (p[0] - ox) * f; oy = p[1] - (p[1] - oy) * f;
    redraw();
  }, { passive: false });
  var reset = document.getElementById("map-reset");
  if (reset) { reset.addEventListener("click", function () { base = 1; resize(); }); }

  // Colour the legend's swatches (CSSOM, not a style attribute: the page's CSP allows it).
  document.querySelectorAll(".swatch[data-cluster]").forEach(function (el) {
    el.style.background = colours[Number(el.dataset.cluster)] || "#999";
  });

  // For a person's own scripting and for the tests: where image j of the data is on screen.
  window.streamClusterMap = {
    count: n,
    start: start.slice(),
    screenPosition: function (j) {
      var box = canvas.getBoundingClientRect();
      return [box.left + sx(j), box.top + sy(j)];
    },
    hovered: function () { return hover; },
    pageUrl: pageUrl
  };
  window.addEventListener("resize", resize);
  resize();
})();
