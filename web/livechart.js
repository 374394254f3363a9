// Live accuracy over time for the serving version (GET /models?live=latest, its "timeline"):
// one point per time bucket with its 95 % Wilson interval as a band, the version's holdout
// accuracy as a dashed reference, and the changes of latest (retrains, promotions, rollbacks)
// as vertical markers on the same time axis. Inline SVG, like chart.js.
import { el } from "./chart.js";

const MIN_WIDTH = 320;
const DEFAULT_WIDTH = 720;
const HEIGHT = 252;
// The markers' labels sit in the top margin, on two alternating rows, clear of the points.
const M = { top: 50, right: 20, bottom: 34, left: 48 };
// The changes that move latest to another version; pin and unpin do not.
const MARKED = { auto: "retrain", promote: "promote", rollback: "rollback" };

const pct = (x) => `${(x * 100).toFixed(1)} %`;

function clock(ms, span) {
  const iso = new Date(ms).toISOString();
  return span > 86_400_000 ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 19);
}

function message(container, text) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = text;
  container.append(p);
}

// Consecutive buckets; a bucket with no samples breaks the line rather than bridge the gap.
function segments(points) {
  const out = [];
  for (const p of points) {
    const last = out.at(-1)?.at(-1);
    if (last && p.start_ms - last.start_ms > last.bucket_s * 1000) out.push([p]);
    else if (last) out.at(-1).push(p);
    else out.push([p]);
  }
  return out;
}

// timeline: {version, buckets (newest first), more, changes (newest first)}; holdout: the
// version's holdout accuracy or null.
export function renderLiveChart(container, timeline, holdout = null) {
  container.replaceChildren();
  if (!timeline || !timeline.version) {
    message(container, "No model is serving yet.");
    return;
  }
  const points = [...(timeline.buckets || [])]
    .filter((b) => typeof b.accuracy === "number")
    .reverse();
  if (points.length === 0) {
    message(container, `No labelled samples have been scored for ${timeline.version} yet.`);
    return;
  }
  const changes = (timeline.changes || [])
    .filter((c) => MARKED[c.action])
    .map((c) => ({ ...c, ms: Date.parse(c.at) }))
    .filter((c) => Number.isFinite(c.ms))
    .reverse();

  const WIDTH = Math.max(MIN_WIDTH, Math.floor(container.clientWidth) || DEFAULT_WIDTH);
  const plotW = WIDTH - M.left - M.right;
  const plotH = HEIGHT - M.top - M.bottom;
  const ends = points.map((p) => p.start_ms + p.bucket_s * 1000);
  const x0 = Math.min(points[0].start_ms, ...changes.map((c) => c.ms));
  const x1 = Math.max(...ends, ...changes.map((c) => c.ms));
  const span = Math.max(1, x1 - x0);
  const xOf = (ms) => M.left + (plotW * (ms - x0)) / span;
  const yOf = (a) => M.top + plotH * (1 - a);
  const centre = (p) => xOf(p.start_ms + (p.bucket_s * 1000) / 2);

  const newest = points.at(-1);
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `Live accuracy of ${timeline.version}: ${points.length} time buckets, latest ` +
      `${pct(newest.accuracy)} of ${newest.seen}; ${changes.length} change${changes.length === 1 ? "" : "s"} ` +
      "of the serving model marked",
    class: "live",
    "data-version": timeline.version,
  });

  const grid = el("g", { class: "grid" });
  for (let tick = 0; tick <= 4; tick += 1) {
    const y = yOf(tick / 4);
    grid.append(el("line", { x1: M.left, x2: WIDTH - M.right, y1: y, y2: y }));
    grid.append(el("text", { x: M.left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, `${tick * 25} %`));
  }
  const ticks = Math.max(2, Math.min(5, Math.floor(plotW / 110)));
  for (let tick = 0; tick <= ticks; tick += 1) {
    const ms = x0 + (span * tick) / ticks;
    const anchor = tick === 0 ? "start" : tick === ticks ? "end" : "middle";
    grid.append(el("text", { x: xOf(ms), y: HEIGHT - M.bottom + 16, "text-anchor": anchor, class: "axis" },
      clock(ms, span)));
  }
  grid.append(el("text", { x: 4, y: 14, class: "axis-title acc" }, "live accuracy"));
  grid.append(el("text", { x: WIDTH - 4, y: 14, "text-anchor": "end", class: "axis-title" }, "time (UTC)"));
  svg.append(grid);

  if (typeof holdout === "number") {
    const y = yOf(holdout);
    const ref = el("g", { class: "holdout", "data-accuracy": holdout });
    ref.append(el("line", { x1: M.left, x2: WIDTH - M.right, y1: y, y2: y }));
    ref.append(el("text", { x: WIDTH - M.right - 4, y: y - 5, "text-anchor": "end", class: "axis" },
      `holdout ${pct(holdout)}`));
    svg.append(ref);
  }

  // The interval under the line; the line under the points.
  for (const run of segments(points)) {
    const withInterval = run.filter((p) => typeof p.ci_low === "number" && typeof p.ci_high === "number");
    if (withInterval.length > 1) {
      const upper = withInterval.map((p) => `${centre(p)},${yOf(p.ci_high)}`);
      const lower = withInterval.map((p) => `${centre(p)},${yOf(p.ci_low)}`).reverse();
      svg.append(el("polygon", { class: "ci-band", points: [...upper, ...lower].join(" ") }));
    }
    if (run.length > 1) {
      svg.append(el("polyline", { class: "live-line", points: run.map((p) => `${centre(p)},${yOf(p.accuracy)}`).join(" ") }));
    }
  }

  changes.forEach((c, i) => {
    const x = xOf(c.ms);
    const g = el("g", {
      class: `change ${c.action}`,
      "data-action": c.action,
      "data-version": c.version,
      "data-at": c.at,
    });
    g.append(el("title", {}, `${c.at}: ${MARKED[c.action]} to ${c.version}` +
      (c.previous ? ` (was ${c.previous})` : "")));
    const row = M.top - 22 + (i % 2) * 12;
    g.append(el("line", { x1: x, x2: x, y1: row + 3, y2: M.top + plotH }));
    // The version's suffix, as the page's header shows it: a time here would read as the axis's.
    const label = `${MARKED[c.action]} → ${String(c.version).slice(-4)}`;
    const anchor = x > WIDTH - M.right - 80 ? "end" : "start";
    g.append(el("text", { x: anchor === "end" ? x - 3 : x + 3, y: row,
      "text-anchor": anchor, class: "change-label" }, label));
    svg.append(g);
  });

  for (const p of points) {
    const g = el("g", {
      class: "bucket",
      "data-start": p.start,
      "data-accuracy": p.accuracy,
      "data-seen": p.seen,
      "data-ci-low": p.ci_low ?? "",
      "data-ci-high": p.ci_high ?? "",
    });
    const interval = typeof p.ci_low === "number" ? ` (95 % interval ${pct(p.ci_low)} to ${pct(p.ci_high)})` : "";
    g.append(el("title", {}, `${p.start}, ${p.bucket_s} s: ${pct(p.accuracy)} of ${p.seen} samples${interval}`));
    g.append(el("circle", { cx: centre(p), cy: yOf(p.accuracy), r: 3.5, class: "live-point" }));
    svg.append(g);
  }
  container.append(svg);

  const legend = document.createElement("ul");
  legend.className = "legend";
  legend.innerHTML =
    '<li><span class="key live"></span>live accuracy per time bucket</li>' +
    '<li><span class="key band"></span>95 % interval</li>' +
    (typeof holdout === "number" ? '<li><span class="key holdout"></span>holdout accuracy</li>' : "") +
    '<li><span class="key change"></span>retrain, promotion or rollback</li>';
  container.append(legend);
  if (timeline.more) message(container, "Older time buckets are not shown.");
}
