// Live accuracy over time of the serving model, whichever version served (GET /models?live=serving,
// its "timeline"): one point per time bucket with its 95 % Wilson interval as a band, the holdout
// accuracy of the version that served each span as a dashed reference, the changes of latest
// (retrains, promotions, rollbacks) and the runs that did not publish (a rule's retrain the gate
// rejected) as vertical markers on the same time axis. Inline SVG, like chart.js.
import { el } from "./chart.js";

const MIN_WIDTH = 320;
const DEFAULT_WIDTH = 720;
const HEIGHT = 252;
// The markers' labels sit in the top margin, on two alternating rows, clear of the points.
const M = { top: 50, right: 20, bottom: 34, left: 48 };
// The changes that move latest to another version; pin and unpin do not.
const MARKED = { auto: "retrain", promote: "promote", rollback: "rollback" };
// Runs that ended without changing latest; a published run is marked by its change.
const UNPUBLISHED = new Set(["rejected", "failed", "interrupted"]);

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

// Consecutive points scored mostly by one version: [{version, points}], oldest first.
function spans(points, fallback) {
  const out = [];
  for (const p of points) {
    const version = p.version ?? fallback;
    if (out.at(-1)?.version === version) out.at(-1).points.push(p);
    else out.push({ version, points: [p] });
  }
  return out;
}

// timeline: {version (serving now), buckets (newest first, each with the version that scored
// most of it), more, changes (newest first), runs (newest first)}; holdoutOf(version): that
// version's holdout accuracy or null.
export function renderLiveChart(container, timeline, holdoutOf = () => null) {
  container.replaceChildren();
  if (!timeline || !timeline.version) {
    message(container, "No model is serving yet.");
    return;
  }
  const points = [...(timeline.buckets || [])]
    .filter((b) => typeof b.accuracy === "number")
    .reverse();
  if (points.length === 0) {
    message(container, `No labelled samples have been scored since ${timeline.version} was serving.`);
    return;
  }
  const changes = (timeline.changes || [])
    .filter((c) => MARKED[c.action])
    .map((c) => ({ ...c, ms: Date.parse(c.at) }))
    .filter((c) => Number.isFinite(c.ms))
    .reverse();
  const failed = (timeline.runs || [])
    .filter((r) => UNPUBLISHED.has(r.status))
    .map((r) => ({ ...r, ms: Date.parse(r.started_at) }))
    .filter((r) => Number.isFinite(r.ms))
    .reverse();
  const marks = [...changes, ...failed].map((m) => m.ms);

  const WIDTH = Math.max(MIN_WIDTH, Math.floor(container.clientWidth) || DEFAULT_WIDTH);
  const plotW = WIDTH - M.left - M.right;
  const plotH = HEIGHT - M.top - M.bottom;
  const ends = points.map((p) => p.start_ms + p.bucket_s * 1000);
  const x0 = Math.min(points[0].start_ms, ...marks);
  const x1 = Math.max(...ends, ...marks);
  const span = Math.max(1, x1 - x0);
  const xOf = (ms) => M.left + (plotW * (ms - x0)) / span;
  const yOf = (a) => M.top + plotH * (1 - a);
  const centre = (p) => xOf(p.start_ms + (p.bucket_s * 1000) / 2);

  const newest = points.at(-1);
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `Live accuracy of the serving model, now ${timeline.version}: ${points.length} time ` +
      `buckets, latest ${pct(newest.accuracy)} of ${newest.seen}; ${changes.length} ` +
      `change${changes.length === 1 ? "" : "s"} of the serving model and ${failed.length} unpublished ` +
      `run${failed.length === 1 ? "" : "s"} marked`,
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

  // The holdout of the version serving each span, under it: a step where a retrain changed it.
  const holdouts = spans(points, timeline.version)
    .map((span) => ({ ...span, accuracy: holdoutOf(span.version) }))
    .filter((span) => typeof span.accuracy === "number");
  holdouts.forEach((span, i) => {
    const y = yOf(span.accuracy);
    const last = span.points.at(-1);
    const left = i === 0 ? M.left : xOf(span.points[0].start_ms);
    const right = i === holdouts.length - 1 ? WIDTH - M.right : xOf(last.start_ms + last.bucket_s * 1000);
    const ref = el("g", { class: "holdout", "data-accuracy": span.accuracy, "data-version": span.version });
    ref.append(el("line", { x1: left, x2: right, y1: y, y2: y }));
    if (right - left > 90) {
      ref.append(el("text", { x: right - 4, y: y - 5, "text-anchor": "end", class: "axis" },
        `holdout ${pct(span.accuracy)}`));
    }
    svg.append(ref);
  });

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

  // Labels alternate between two rows in time order, changes and runs alike.
  const rows = new Map([...changes, ...failed]
    .sort((a, b) => a.ms - b.ms)
    .map((m, i) => [m, M.top - 22 + (i % 2) * 12]));
  const marker = (g, m, label) => {
    const x = xOf(m.ms);
    const row = rows.get(m);
    g.append(el("line", { x1: x, x2: x, y1: row + 3, y2: M.top + plotH }));
    const anchor = x > WIDTH - M.right - 80 ? "end" : "start";
    g.append(el("text", { x: anchor === "end" ? x - 3 : x + 3, y: row,
      "text-anchor": anchor, class: "change-label" }, label));
    svg.append(g);
  };
  for (const c of changes) {
    const g = el("g", {
      class: `change ${c.action}`,
      "data-action": c.action,
      "data-version": c.version,
      "data-at": c.at,
    });
    g.append(el("title", {}, `${c.at}: ${MARKED[c.action]} to ${c.version}` +
      (c.previous ? ` (was ${c.previous})` : "")));
    // The version's suffix, as the page's header shows it: a time here would read as the axis's.
    marker(g, c, `${MARKED[c.action]} → ${String(c.version).slice(-4)}`);
  }
  for (const r of failed) {
    const g = el("g", {
      class: `run ${r.status}`,
      "data-status": r.status,
      "data-rule": r.rule ?? "",
      "data-version": r.version,
      "data-at": r.started_at,
    });
    g.append(el("title", {}, `${r.started_at}: run ${r.version}, started by the ${r.rule ?? "?"} rule, ` +
      `${r.status}${r.decision ? ` (gate: ${r.decision})` : ""}`));
    marker(g, r, `${r.rule ?? "run"} ✗ ${String(r.version).slice(-4)}`);
  }

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
    (holdouts.length ? '<li><span class="key holdout"></span>holdout accuracy of the version serving</li>' : "") +
    '<li><span class="key change"></span>retrain, promotion or rollback</li>' +
    (failed.length ? '<li><span class="key run"></span>run not published</li>' : "");
  container.append(legend);
  if (timeline.more) message(container, "Older time buckets are not shown.");
}
