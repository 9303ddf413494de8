// Two small charts drawn on <canvas>: a live line chart (power over a
// sliding time window) and a bar chart (energy per hour of a day).

// A y axis for values up to vmax: n steps of a round size (1, 2, 2.5, 5 x 10^k).
function niceScale(vmax, n = 4) {
  const raw = vmax > 0 ? vmax / n : 1 / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = 10 * mag;
  for (const m of [1, 2, 2.5, 5]) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  return { max: step * n, step };
}

function css(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// Fits the canvas backing store to its CSS size and the pixel ratio; returns
// the 2D context scaled to CSS pixels and the size in CSS pixels.
function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(50, canvas.clientWidth);
  const hgt = Math.max(50, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(hgt * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  return { ctx, w, h: hgt };
}

const pad2 = (n) => String(n).padStart(2, "0");

// Decimals that show a multiple of step exactly (step 2.5 -> 1, step 0.05 -> 2).
function decimalsFor(step) {
  let d = 0;
  while (d < 6 && Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) > 1e-6) d += 1;
  return d;
}

function fmtAxis(v, scale, unit) {
  if (scale.max >= 2000) return `${(v / 1000).toFixed(decimalsFor(scale.step / 1000))} k${unit}`;
  return `${v.toFixed(decimalsFor(scale.step))} ${unit}`;
}

// The y axis: a grid line at each step of scale from x0 to x1, labelled left of x0.
function yGrid(ctx, scale, y, x0, x1, unit) {
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const v = scale.step * i;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x0, yy);
    ctx.lineTo(x1, yy);
    ctx.stroke();
    ctx.fillText(fmtAxis(v, scale, unit), x0 - 6, yy);
  }
}

const TIME_STEPS = [5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000];

// new LineChart(canvas, {windowMs, limit, label}); chart.add(ts, v); chart.destroy()
// canvas.dataset.points counts the points received (the browser test reads it).
export class LineChart {
  constructor(canvas, { windowMs = 5 * 60000, limit = null, maxPoints = 20000 } = {}) {
    this.canvas = canvas;
    this.windowMs = windowMs;
    this.limit = limit;
    this.maxPoints = maxPoints;
    this.ts = [];
    this.vs = [];
    this.received = 0;
    this.pending = false;
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(canvas);
    this.schedule();
  }

  destroy() {
    this.resize.disconnect();
    this.ts = [];
    this.vs = [];
  }

  // Points in any order; kept sorted by time, duplicates of a time dropped.
  add(points) {
    for (const [t, v] of points) {
      if (!Number.isFinite(t) || !Number.isFinite(v)) continue;
      const n = this.ts.length;
      if (n === 0 || t > this.ts[n - 1]) {
        this.ts.push(t);
        this.vs.push(v);
      } else {
        let lo = 0;
        let hi = n;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (this.ts[mid] < t) lo = mid + 1;
          else hi = mid;
        }
        if (this.ts[lo] === t) continue;
        this.ts.splice(lo, 0, t);
        this.vs.splice(lo, 0, v);
      }
      this.received += 1;
    }
    const extra = this.ts.length - this.maxPoints;
    if (extra > 0) {
      this.ts.splice(0, extra);
      this.vs.splice(0, extra);
    }
    this.canvas.dataset.points = String(this.received);
    this.schedule();
  }

  last() {
    const n = this.ts.length;
    return n ? [this.ts[n - 1], this.vs[n - 1]] : null;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const { ctx, w, h } = fit(this.canvas);
    const left = 56;
    const right = 10;
    const top = 10;
    const bottom = 24;
    const pw = w - left - right;
    const ph = h - top - bottom;
    const n = this.ts.length;
    // The window ends at the newest reading (device time), so a device whose
    // clock differs from this browser's still shows its data.
    const end = n ? this.ts[n - 1] : Date.now();
    // A young series fills the plot: the window grows from a minute to its size.
    const span = n ? end - this.ts[0] : 0;
    const windowMs = Math.min(this.windowMs, Math.max(60000, span * 1.05));
    const start = end - windowMs;
    let first = 0;
    while (first < n && this.ts[first] < start) first += 1;
    let vmax = this.limit || 0;
    for (let i = first; i < n; i += 1) if (this.vs[i] > vmax) vmax = this.vs[i];
    const scale = niceScale(vmax * 1.05);
    const ymax = scale.max;
    const x = (t) => left + ((t - start) / windowMs) * pw;
    const y = (v) => top + ph - (Math.max(0, v) / ymax) * ph;

    const grid = css("--grid", "#e3e7ee");
    const text = css("--muted", "#667085");
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = text;
    yGrid(ctx, scale, y, left, w - right, "W");
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const stepMs = TIME_STEPS.find((st) => windowMs / st <= Math.max(3, pw / 110)) || 600000;
    for (let t = Math.ceil(start / stepMs) * stepMs; t <= end; t += stepMs) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(xx, top);
      ctx.lineTo(xx, top + ph);
      ctx.stroke();
      if (xx < left + 24 || xx > w - right - 24) continue; // no label cut at an edge
      const d = new Date(t);
      const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
      ctx.fillText(stepMs < 60000 ? `${hm}:${pad2(d.getSeconds())}` : hm, xx, top + ph + 6);
    }

    if (this.limit) {
      ctx.save();
      ctx.strokeStyle = css("--bad", "#d92d20");
      ctx.setLineDash([6, 4]);
      const yy = Math.round(y(this.limit)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(w - right, yy);
      ctx.stroke();
      ctx.fillStyle = css("--bad", "#d92d20");
      ctx.textAlign = "left";
      ctx.textBaseline = "bottom";
      const lim = this.limit >= 1000 ? `${+(this.limit / 1000).toFixed(2)} kW` : `${+this.limit.toFixed(1)} W`;
      ctx.fillText(`limit ${lim}`, left + 4, yy - 2);
      ctx.restore();
    }

    if (first >= n) {
      ctx.fillStyle = text;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for readings…", left + pw / 2, top + ph / 2);
      return;
    }
    // One vertical min-max stroke per pixel column when points outnumber
    // pixels; a plain polyline otherwise.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, pw, ph);
    ctx.clip();
    ctx.strokeStyle = css("--accent", "#2563eb");
    ctx.lineWidth = 1.5;
    ctx.lineJoin = "round";
    ctx.beginPath();
    if (n - first > pw * 2) {
      let col = -1;
      let lo = 0;
      let hi = 0;
      const flush = () => {
        if (col < 0) return;
        ctx.lineTo(col, y(lo));
        ctx.lineTo(col, y(hi));
      };
      for (let i = first; i < n; i += 1) {
        const c = Math.round(x(this.ts[i]));
        if (c !== col) {
          flush();
          if (col < 0) ctx.moveTo(c, y(this.vs[i]));
          col = c;
          lo = hi = this.vs[i];
        } else {
          if (this.vs[i] < lo) lo = this.vs[i];
          if (this.vs[i] > hi) hi = this.vs[i];
        }
      }
      flush();
    } else {
      for (let i = first; i < n; i += 1) {
        if (i === first) ctx.moveTo(x(this.ts[i]), y(this.vs[i]));
        else ctx.lineTo(x(this.ts[i]), y(this.vs[i]));
      }
    }
    ctx.stroke();
    ctx.restore();
  }
}

// new BarChart(canvas).set([{label, value, title}], {unit: "Wh"})
export class BarChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.bars = [];
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
    canvas.addEventListener("mousemove", (ev) => this.hover(ev));
  }

  destroy() {
    this.resize.disconnect();
  }

  set(bars) {
    this.bars = bars;
    this.canvas.dataset.bars = String(bars.length);
    this.draw();
  }

  geometry(w, h) {
    const left = 56;
    const right = 10;
    const top = 10;
    const bottom = 24;
    const pw = w - left - right;
    const slot = this.bars.length ? pw / this.bars.length : pw;
    return { left, right, top, bottom, pw, ph: h - top - bottom, slot };
  }

  hover(ev) {
    const rect = this.canvas.getBoundingClientRect();
    const g = this.geometry(rect.width, rect.height);
    const i = Math.floor((ev.clientX - rect.left - g.left) / g.slot);
    const b = this.bars[i];
    this.canvas.title = b ? b.title || `${b.label}: ${b.value}` : "";
  }

  draw() {
    const { ctx, w, h } = fit(this.canvas);
    const g = this.geometry(w, h);
    const vmax = Math.max(0, ...this.bars.map((b) => b.value));
    const scale = niceScale(vmax * 1.05);
    const ymax = scale.max;
    const y = (v) => g.top + g.ph - (v / ymax) * g.ph;
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = css("--grid", "#e3e7ee");
    ctx.fillStyle = css("--muted", "#667085");
    yGrid(ctx, scale, y, g.left, w - g.right, "Wh");
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = g.slot < 18 ? 3 : 1;
    this.bars.forEach((b, i) => {
      const x0 = g.left + i * g.slot;
      const bw = Math.max(1, g.slot * 0.72);
      if (b.value > 0) {
        ctx.fillStyle = css("--accent", "#2563eb");
        ctx.fillRect(x0 + (g.slot - bw) / 2, y(b.value), bw, g.top + g.ph - y(b.value));
      }
      if (i % every === 0) {
        ctx.fillStyle = css("--muted", "#667085");
        ctx.fillText(b.label, x0 + g.slot / 2, g.top + g.ph + 6);
      }
    });
    if (!this.bars.length || vmax === 0) {
      ctx.fillStyle = css("--muted", "#667085");
      ctx.textBaseline = "middle";
      ctx.fillText("no energy recorded on this day", g.left + g.pw / 2, g.top + g.ph / 2);
    }
  }
}
