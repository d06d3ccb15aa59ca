// The Curate tab's 2-D map (studio/webgl_map.py): WebGL points, pan, zoom, lasso, box, hover, click.
// Runs as gr.HTML's js_on_load: `element`, `props`, `trigger` and `watch` come from Gradio.
const host = () => element.querySelector('.wm-host') || element;
const S = { data: null, url: null, n: 0, keys: null, palette: null, mode: 'pan',
            cx: 0, cy: 0, k: 1, sel: null, selCount: 0, gl: null, prog: null, bufs: {},
            ctx2d: null, renderer: 'none', drag: null, hoverRow: -1, hoverTimer: null,
            token: null, select: null, asked: 0 };

function build() {
  const h = host();
  if (h.querySelector('.wm-stage')) return;
  h.innerHTML = `<div class="wm-root">
    <div class="wm-bar">
      <button data-mode="pan" class="on" title="drag to move, wheel to zoom">Pan</button>
      <button data-mode="lasso" title="draw around points">Lasso</button>
      <button data-mode="box" title="drag a rectangle">Box</button>
      <button data-act="reset">Reset view</button>
      <button data-act="clear">Clear selection</button>
      <span class="wm-info"></span></div>
    <div class="wm-stage"><canvas class="wm-gl"></canvas><canvas class="wm-over"></canvas>
      <div class="wm-tip"></div></div>
    <div class="wm-legend"></div>
    <div class="wm-sel"><div id="map-selection-status" class="wm-sel-status">Lasso or box points on the map to see them here.</div>
      <div id="map-selection-gallery" class="wm-sel-gallery"></div></div></div>`;
  S.gl = null; S.ctx2d = null; S.bufs = {};
  h.querySelectorAll('.wm-bar button[data-mode]').forEach(b => b.addEventListener('click', () => {
    S.mode = b.dataset.mode;
    h.querySelectorAll('.wm-bar button[data-mode]').forEach(o => o.classList.toggle('on', o === b));
  }));
  h.querySelector('[data-act=reset]').addEventListener('click', () => { S.cx = 0; S.cy = 0; S.k = 1; draw(); });
  h.querySelector('[data-act=clear]').addEventListener('click', () => { setSelection(null); sendSelection(); });
  const over = h.querySelector('.wm-over');
  over.addEventListener('wheel', onWheel, { passive: false });
  over.addEventListener('pointerdown', onDown);
  over.addEventListener('pointermove', onMove);
  over.addEventListener('pointerup', onUp);
  over.addEventListener('pointerleave', () => { tip(null); });
  new ResizeObserver(() => draw()).observe(h.querySelector('.wm-stage'));
}

function initGL(canvas) {
  const gl = canvas.getContext('webgl', { antialias: false, premultipliedAlpha: true,
                                          preserveDrawingBuffer: true });
  if (!gl) return null;
  const vs = `attribute vec2 p; attribute vec4 c; attribute float s;
    uniform vec2 scale; uniform vec2 offset; uniform float size; uniform float hasSel;
    varying vec4 vc; varying float vs_;
    void main() { gl_Position = vec4(p * scale + offset, 0.0, 1.0);
      vs_ = s; gl_PointSize = size + s * 2.0;
      vc = (hasSel > 0.5 && s < 0.5) ? vec4(c.rgb, c.a * 0.18) : c; }`;
  const fs = `precision mediump float; varying vec4 vc; varying float vs_;
    void main() { vec2 d = gl_PointCoord - 0.5; float r = dot(d, d);
      if (r > 0.25) discard;
      vec3 rgb = (vs_ > 0.5 && r > 0.12) ? vec3(0.08, 0.08, 0.15) : vc.rgb;
      float a = vs_ > 0.5 ? 1.0 : vc.a;
      gl_FragColor = vec4(rgb * a, a); }`;
  const sh = (type, src) => { const o = gl.createShader(type); gl.shaderSource(o, src);
    gl.compileShader(o); if (!gl.getShaderParameter(o, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(o)); return o; };
  const prog = gl.createProgram();
  gl.attachShader(prog, sh(gl.VERTEX_SHADER, vs)); gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  S.prog = prog;
  return gl;
}

function colours() {  // RGBA bytes per point from the keys and the palette
  const n = S.n, out = new Uint8Array(4 * n), pal = S.palette.map(h =>
    [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]);
  const kind = S.data.kind, keys = S.keys;
  for (let i = 0; i < n; i++) {
    const c = pal[keys[i]] || pal[255];
    out[4 * i] = c[0]; out[4 * i + 1] = c[1]; out[4 * i + 2] = c[2];
    out[4 * i + 3] = kind[i] ? 230 : 140;
  }
  return out;
}

function upload(what) {
  const gl = S.gl; if (!gl) return;
  const put = (name, arr) => { if (!S.bufs[name]) S.bufs[name] = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, S.bufs[name]); gl.bufferData(gl.ARRAY_BUFFER, arr, gl.STATIC_DRAW); };
  if (what.includes('p')) put('p', S.data.xy);
  if (what.includes('c')) put('c', colours());
  if (what.includes('s')) put('s', S.sel || new Uint8Array(S.n));
}

function view(W, H) {
  const R = 0.47 * Math.min(W, H) * S.k;
  return { R, sx: 2 * R / W, sy: 2 * R / H };
}

function draw() {
  const h = host(), stage = h.querySelector('.wm-stage');
  if (!stage || !S.data) return;
  const dpr = window.devicePixelRatio || 1, W = stage.clientWidth, H = stage.clientHeight;
  for (const c of stage.querySelectorAll('canvas')) {
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
      c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
  }
  const base = S.n < 2000 ? 7 : (S.n < 50000 ? 4.5 : 2.6);
  const v = view(W, H), size = Math.min(14, base * Math.sqrt(Math.max(1, S.k))) * dpr;
  if (S.gl) {
    const gl = S.gl, p = S.prog;
    gl.viewport(0, 0, gl.drawingBufferWidth, gl.drawingBufferHeight);
    gl.clearColor(0, 0, 0, 0); gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND); gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.useProgram(p);
    const attr = (name, buf, n, type, norm) => { const loc = gl.getAttribLocation(p, name);
      gl.bindBuffer(gl.ARRAY_BUFFER, S.bufs[buf]); gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, n, type, norm, 0, 0); };
    attr('p', 'p', 2, gl.FLOAT, false); attr('c', 'c', 4, gl.UNSIGNED_BYTE, true);
    attr('s', 's', 1, gl.UNSIGNED_BYTE, false);
    gl.uniform2f(gl.getUniformLocation(p, 'scale'), v.sx, v.sy);
    gl.uniform2f(gl.getUniformLocation(p, 'offset'), -S.cx * v.sx, -S.cy * v.sy);
    gl.uniform1f(gl.getUniformLocation(p, 'size'), size);
    gl.uniform1f(gl.getUniformLocation(p, 'hasSel'), S.selCount ? 1 : 0);
    gl.drawArrays(gl.POINTS, 0, S.n);
  } else if (S.ctx2d) {
    const c = S.ctx2d, xy = S.data.xy, col = S.rgba, r = size / 2;
    c.setTransform(1, 0, 0, 1, 0, 0); c.clearRect(0, 0, W * dpr, H * dpr);
    for (let i = 0; i < S.n; i++) {
      const sel = S.sel && S.sel[i], dim = S.selCount && !sel;
      c.fillStyle = `rgba(${col[4*i]},${col[4*i+1]},${col[4*i+2]},${dim ? 0.12 : col[4*i+3] / 255})`;
      const px = (W / 2 + (xy[2*i] - S.cx) * v.R) * dpr, py = (H / 2 - (xy[2*i+1] - S.cy) * v.R) * dpr;
      c.fillRect(px - r, py - r, 2 * r, 2 * r);
    }
  }
}

function toData(px, py) {
  const stage = host().querySelector('.wm-stage'), W = stage.clientWidth, H = stage.clientHeight;
  const v = view(W, H);
  return [S.cx + (px - W / 2) / v.R, S.cy - (py - H / 2) / v.R];
}

function local(e) { const r = e.currentTarget.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }

function onWheel(e) {
  if (!S.data) return; e.preventDefault();
  const [px, py] = local(e), [x, y] = toData(px, py);
  const f = Math.exp(-e.deltaY * 0.0015);
  S.k = Math.max(0.2, Math.min(500, S.k * f));
  const [x2, y2] = toData(px, py); S.cx += x - x2; S.cy += y - y2; draw();
}

function onDown(e) {
  if (!S.data) return;
  e.preventDefault();
  e.currentTarget.setPointerCapture(e.pointerId);
  const [px, py] = local(e);
  S.drag = { mode: S.mode, x0: px, y0: py, cx: S.cx, cy: S.cy, path: [[px, py]], moved: false };
}

function overlay(path, box) {
  const over = host().querySelector('.wm-over'), c = over.getContext('2d'), dpr = window.devicePixelRatio || 1;
  c.setTransform(dpr, 0, 0, dpr, 0, 0); c.clearRect(0, 0, over.width, over.height);
  if (!path) return;
  c.strokeStyle = '#4f46e5'; c.fillStyle = 'rgba(79,70,229,0.08)'; c.lineWidth = 1.5; c.setLineDash([5, 3]);
  c.beginPath();
  if (box) { c.rect(box[0], box[1], box[2] - box[0], box[3] - box[1]); }
  else { c.moveTo(path[0][0], path[0][1]); for (const q of path) c.lineTo(q[0], q[1]); c.closePath(); }
  c.fill(); c.stroke();
}

function onMove(e) {
  const [px, py] = local(e), d = S.drag;
  if (d) {
    if (Math.abs(px - d.x0) + Math.abs(py - d.y0) > 3) d.moved = true;
    if (d.mode === 'pan') {
      const v = view(host().querySelector('.wm-stage').clientWidth, host().querySelector('.wm-stage').clientHeight);
      S.cx = d.cx - (px - d.x0) / v.R; S.cy = d.cy + (py - d.y0) / v.R; draw();
    } else if (d.mode === 'lasso') { d.path.push([px, py]); overlay(d.path); }
    else { d.path = [[d.x0, d.y0], [px, py]]; overlay(d.path, [Math.min(d.x0, px), Math.min(d.y0, py), Math.max(d.x0, px), Math.max(d.y0, py)]); }
    return;
  }
  const row = nearest(px, py);
  tip(row >= 0 ? [px, py, row] : null);
  if (row !== S.hoverRow) {
    S.hoverRow = row; clearTimeout(S.hoverTimer);
    if (row >= 0) S.hoverTimer = setTimeout(() => trigger('input', { row }), 120);
  }
}

function nearest(px, py) {
  if (!S.data) return -1;
  const [x, y] = toData(px, py), stage = host().querySelector('.wm-stage');
  const v = view(stage.clientWidth, stage.clientHeight), r = 6 / v.R, xy = S.data.xy;
  let best = -1, bd = r * r;
  for (let i = 0; i < S.n; i++) {
    const dx = xy[2*i] - x, dy = xy[2*i+1] - y, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = i; }
  }
  return best;
}

function tip(at) {
  const t = host().querySelector('.wm-tip'); if (!t) return;
  if (!at) { t.style.display = 'none'; return; }
  const [px, py, row] = at, lab = S.data.label[row], kind = S.data.kind[row] ? 'generated' : 'real';
  t.textContent = `${S.classes[lab] ?? lab} · ${kind} · point ${row}`;
  t.style.left = (px + 12) + 'px'; t.style.top = (py + 12) + 'px'; t.style.display = 'block';
}

function inside(poly, x, y) {
  let c = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if (((yi > y) !== (yj > y)) && (x < (xj - xi) * (y - yi) / (yj - yi) + xi)) c = !c;
  }
  return c;
}

function onUp(e) {
  const d = S.drag; S.drag = null; if (!d) return;
  const [px, py] = local(e);
  if (!d.moved) { overlay(null); const row = nearest(px, py); if (row >= 0) trigger('click', { row }); return; }
  if (d.mode === 'pan') return;
  const xy = S.data.xy, sel = new Uint8Array(S.n);
  let count = 0;
  S.lassoAt = performance.now();
  if (d.mode === 'box') {
    const [ax, ay] = toData(Math.min(d.x0, px), Math.max(d.y0, py)), [bx, by] = toData(Math.max(d.x0, px), Math.min(d.y0, py));
    for (let i = 0; i < S.n; i++) { const x = xy[2*i], y = xy[2*i+1];
      if (x >= ax && x <= bx && y >= ay && y <= by) { sel[i] = 1; count++; } }
  } else {
    const poly = d.path.map(q => toData(q[0], q[1]));
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [x, y] of poly) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    for (let i = 0; i < S.n; i++) { const x = xy[2*i], y = xy[2*i+1];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && inside(poly, x, y)) { sel[i] = 1; count++; } }
  }
  // the server's round trip first, the redraw (software WebGL: tens of ms at 200k points)
  // on the next frame, so it does not hold the request back
  S.sel = sel; S.selCount = count;
  sendSelection();
  requestAnimationFrame(() => { overlay(null); setSelection(sel, count); });
}

function setSelection(sel, count) {
  S.sel = sel; S.selCount = sel ? count : 0;
  upload('s'); draw(); info();
}

// A selection goes straight to the studio's selection route (studio/map_select.py), not
// through a Gradio event: the answer (status line and thumbnails) is drawn here.
function sendSelection() {
  const bytes = new Uint8Array(S.selCount ? Math.ceil(S.n / 8) : 0);
  if (S.sel) for (let i = 0; i < S.n; i++) if (S.sel[i]) bytes[i >> 3] |= 1 << (i & 7);
  let bin = ''; const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  element.dataset.selected = String(S.selCount);
  element.dataset.lassoAt = String(S.lassoAt || performance.now());
  if (!S.select || !S.token) return;
  const asked = ++S.asked;
  status('selecting …');
  element.dataset.sentAt = String(performance.now());
  fetch(S.select, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                    credentials: 'same-origin', body: JSON.stringify({ token: S.token, mask: btoa(bin) }) })
    .then(r => { element.dataset.answeredAt = String(performance.now()); return r.json().then(j => [r.ok, j]); })
    .then(([ok, j]) => { if (asked === S.asked) showSelection(ok ? j : { error: j.error || 'the selection failed' }); })
    .catch(err => { if (asked === S.asked) showSelection({ error: 'the studio did not answer: ' + err }); });
}

function status(text, error) {
  const el = host().querySelector('.wm-sel-status'); if (!el) return;
  el.textContent = text; el.classList.toggle('wm-error', !!error);
}

function showSelection(j) {
  const g = host().querySelector('.wm-sel-gallery'); if (!g) return;
  g.replaceChildren();
  if (j.error) { status('⚠ ' + j.error, true); return; }
  status(j.text);
  for (const it of j.items || []) {
    const b = document.createElement('button'), img = document.createElement('img'), cap = document.createElement('span');
    b.className = 'thumbnail-item'; b.type = 'button'; b.title = it.caption;
    img.src = it.src; img.alt = it.caption; img.loading = 'lazy'; cap.textContent = it.caption;
    b.append(img, cap);
    b.addEventListener('click', () => {
      g.querySelectorAll('.thumbnail-item.on').forEach(o => o.classList.remove('on'));
      b.classList.add('on'); trigger('click', { sample: it.i }); });
    g.append(b);
  }
}

function info() {
  const el = host().querySelector('.wm-info'); if (!el) return;
  el.textContent = `${S.title} · ${S.n.toLocaleString()} points (${S.renderer})` +
    (S.selCount ? ` · ${S.selCount.toLocaleString()} selected` : '') +
    ' · drag: pan / lasso / box, wheel: zoom, click: details';
}

function legend(items) {
  const el = host().querySelector('.wm-legend'); if (!el) return;
  el.innerHTML = '';
  for (const [c, t] of items) { const s = document.createElement('span');
    s.innerHTML = `<span class="sw" style="background:${c}"></span>`; s.append(t); el.append(s); }
}

async function load() {
  const v = props.value;
  build();
  const h = host();
  if (!v || !v.url) {
    h.querySelector('.wm-info').textContent = (v && v.message) || 'Choose a projection and click "Draw map".';
    return;
  }
  if (v.token === S.token) return;
  S.token = v.token;
  const t0 = performance.now();
  if (v.url !== S.url || !S.data) {
    const buf = await (await fetch(v.url)).arrayBuffer(), n = v.n;
    element.dataset.fetchMs = String(performance.now() - t0);
    S.data = { xy: new Float32Array(buf, 0, 2 * n), label: new Uint16Array(buf, 8 * n, n),
               kind: new Uint8Array(buf, 10 * n, n) };
    S.url = v.url; S.n = n; S.sel = null; S.selCount = 0; S.cx = 0; S.cy = 0; S.k = 1;
    S.bufs = {}; S.asked++; showSelection({ text: 'Lasso or box points on the map to see them here.' });
  }
  S.map = v.map; S.title = v.title; S.classes = v.classes || []; S.select = v.select;
  const raw = atob(v.colour); S.keys = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) S.keys[i] = raw.charCodeAt(i);
  S.palette = v.palette;
  const glc = h.querySelector('.wm-gl');
  if (!S.gl && !S.ctx2d) {
    try { S.gl = initGL(glc); } catch (err) { console.warn('map: WebGL failed', err); S.gl = null; }
    if (!S.gl) S.ctx2d = glc.getContext('2d');
    S.renderer = S.gl ? 'WebGL' : '2-D canvas';
  }
  if (S.ctx2d) S.rgba = colours();
  const t1 = performance.now();
  upload('pcs');
  draw(); info(); legend(v.legend || []);
  element.dataset.drawMs = String(performance.now() - t1);
  requestAnimationFrame(() => {
    element.dataset.paintedAt = String(performance.now());
    element.dataset.paintMs = String(performance.now() - t0);
    element.dataset.points = String(S.n);
    element.dataset.renderer = S.renderer;
  });
}

build();
watch('value', () => { load().catch(err => { console.error('map', err);
  const i = host().querySelector('.wm-info'); if (i) i.textContent = 'map: ' + err; }); });
if (props.value) load();
