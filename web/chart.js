// Holdout accuracy (points on a line, left axis) and sample count (bars, right axis) per
// training run, drawn as inline SVG: one <g class="version"> per run, oldest on the left.

const SVG = "http://www.w3.org/2000/svg";
// The drawing is as wide as its box in CSS pixels, so its text keeps its size on a phone.
const MIN_WIDTH = 320;
const DEFAULT_WIDTH = 720;
const HEIGHT = 280;
const M = { top: 34, right: 56, bottom: 46, left: 48 };

export function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function holdoutAccuracy(run) {
  const value = run && run.metrics && run.metrics.holdout ? run.metrics.holdout.accuracy : null;
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

// "v20261123T091432Z-1a2b" -> "11-23 09:14:32"
export function shortVersion(version) {
  const m = /^v(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z-([0-9a-f]{4})$/.exec(version || "");
  return m ? `${m[2]}-${m[3]} ${m[4]}:${m[5]}:${m[6]}` : String(version);
}

function niceMax(value) {
  if (!(value > 0)) return 10;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function describe(run) {
  const accuracy = holdoutAccuracy(run);
  const parts = [
    run.version,
    run.status + (run.latest ? ", latest" : ""),
    accuracy === null ? "no holdout accuracy" : `holdout accuracy ${(accuracy * 100).toFixed(1)} %`,
    `${run.sample_count ?? "?"} samples`,
  ];
  return parts.join(" · ");
}

// runs: the items of GET /models (newest first, as the API lists them).
export function renderChart(container, runs) {
  container.replaceChildren();
  const WIDTH = Math.max(MIN_WIDTH, Math.floor(container.clientWidth) || DEFAULT_WIDTH);
  const ordered = [...runs].reverse();
  if (ordered.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No training runs yet.";
    container.append(p);
    return;
  }
  const plotW = WIDTH - M.left - M.right;
  const plotH = HEIGHT - M.top - M.bottom;
  const band = plotW / ordered.length;
  const xOf = (i) => M.left + band * (i + 0.5);
  const yAcc = (a) => M.top + plotH * (1 - a);
  const maxCount = niceMax(Math.max(0, ...ordered.map((r) => Number(r.sample_count) || 0)));
  const yCount = (n) => M.top + plotH * (1 - n / maxCount);

  const latest = ordered.find((r) => r.latest);
  const rejected = ordered.filter((r) => r.status === "rejected").length;
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label":
      `${ordered.length} training runs; latest ${latest ? latest.version : "none"}; ${rejected} rejected`,
    class: "history",
  });

  // Grid and axes.
  const grid = el("g", { class: "grid" });
  for (let tick = 0; tick <= 4; tick += 1) {
    const a = tick / 4;
    const y = yAcc(a);
    grid.append(el("line", { x1: M.left, x2: WIDTH - M.right, y1: y, y2: y }));
    grid.append(el("text", { x: M.left - 6, y: y + 4, "text-anchor": "end", class: "axis acc" },
      `${Math.round(a * 100)} %`));
    grid.append(el("text", { x: WIDTH - M.right + 6, y: y + 4, class: "axis count" },
      String(Math.round(maxCount * a))));
  }
  grid.append(el("text", { x: 4, y: 14, class: "axis-title acc" }, "holdout accuracy"));
  grid.append(el("text", { x: WIDTH - 4, y: 14, "text-anchor": "end", class: "axis-title count" },
    "training samples"));
  svg.append(grid);

  // Bars first so the accuracy line is drawn over them.
  const barW = Math.min(36, band * 0.5);
  const bars = el("g", { class: "bars" });
  ordered.forEach((run, i) => {
    const n = Number(run.sample_count) || 0;
    bars.append(el("rect", {
      x: xOf(i) - barW / 2, y: yCount(n), width: barW, height: Math.max(0, M.top + plotH - yCount(n)),
      class: `bar ${run.status}`,
    }));
  });
  svg.append(bars);

  // The line joins the models that were published (served at some time); rejected candidates
  // and unfinished runs stand apart as their own marks.
  const withAccuracy = ordered
    .map((run, i) => [i, run.status === "published" ? holdoutAccuracy(run) : null])
    .filter(([, a]) => a !== null);
  if (withAccuracy.length > 1) {
    svg.append(el("polyline", {
      class: "acc-line",
      points: withAccuracy.map(([i, a]) => `${xOf(i)},${yAcc(a)}`).join(" "),
    }));
  }

  const labelEvery = Math.ceil(ordered.length / Math.max(2, Math.floor(plotW / 90)));
  ordered.forEach((run, i) => {
    const accuracy = holdoutAccuracy(run);
    const classes = ["version", run.status];
    if (run.latest) classes.push("latest");
    const g = el("g", {
      class: classes.join(" "),
      "data-version": run.version,
      "data-status": run.status,
      "data-latest": run.latest ? "true" : "false",
      "data-accuracy": accuracy ?? "",
      "data-samples": run.sample_count ?? "",
    });
    g.append(el("title", {}, describe(run)));
    const x = xOf(i);
    if (accuracy !== null) {
      const y = yAcc(accuracy);
      if (run.latest) g.append(el("circle", { cx: x, cy: y, r: 10, class: "latest-ring" }));
      g.append(el("circle", { cx: x, cy: y, r: 5, class: "point" }));
      if (run.status === "rejected") {
        g.append(el("path", { d: `M${x - 4},${y - 4}L${x + 4},${y + 4}M${x - 4},${y + 4}L${x + 4},${y - 4}`,
          class: "reject-cross" }));
      }
      if (run.latest) g.append(el("text", { x, y: y - 15, "text-anchor": "middle", class: "tag" }, "latest"));
    }
    if (i % labelEvery === 0 || run.latest) {
      g.append(el("text", { x, y: HEIGHT - M.bottom + 16, "text-anchor": "middle", class: "axis" },
        shortVersion(run.version).slice(6)));
      g.append(el("text", { x, y: HEIGHT - M.bottom + 30, "text-anchor": "middle", class: "axis faint" },
        run.status));
    }
    svg.append(g);
  });
  container.append(svg);

  const legend = document.createElement("ul");
  legend.className = "legend";
  legend.innerHTML =
    '<li><span class="key point"></span>published</li>' +
    '<li><span class="key latest"></span>latest</li>' +
    '<li><span class="key rejected"></span>rejected by the gate</li>' +
    '<li><span class="key bar"></span>training samples</li>';
  container.append(legend);
}
