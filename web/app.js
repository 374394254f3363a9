// The page: predict in the browser with the latest model, show its record, collect feedback.
import { API, ApiError, apiKey, keyFromAddress, listModels, modelUrl, setApiKey, upload } from "./api.js";
import { holdoutAccuracy, renderChart, shortVersion } from "./chart.js";
import { renderLiveChart } from "./livechart.js";

// The model's input order and output order (lambdas/core/schema.py).
const FEATURES = ["temp", "rh", "wind", "clo"];
const LABELS = ["cold", "ok", "warm"];
const UNITS = { temp: "°F", rh: "%", wind: "m/s", clo: "clo" };
const POLL_MS = 10_000;
const NO_MODEL = "No model has been published yet. Say how you feel below: once enough samples " +
  "have arrived a model is trained, and it appears here by itself.";

const $ = (id) => document.getElementById(id);
const state = { model: null, version: null, runs: [], latest: null, timeline: null, loading: null, checking: null };

function setStatus(node, text, kind = "info") {
  node.textContent = text;
  node.dataset.kind = kind;
}

// --- inputs and prediction ---------------------------------------------------------------

function decimals(input) {
  const step = input.getAttribute("step") || "1";
  return step.includes(".") ? step.split(".")[1].length : 0;
}

export function currentInputs() {
  const out = {};
  for (const name of FEATURES) {
    const input = $(name);
    // Round to the slider's step: a range input can report 0.15000000000000002.
    out[name] = Number(Number(input.value).toFixed(decimals(input)));
    $(`${name}-value`).textContent = out[name].toFixed(decimals(input));
  }
  return out;
}

function renderBars(probabilities) {
  const list = $("probabilities");
  list.replaceChildren();
  LABELS.forEach((label, i) => {
    const p = probabilities ? probabilities[i] : null;
    const item = document.createElement("li");
    item.className = `bar-row ${label}`;
    item.dataset.label = label;
    item.dataset.probability = p === null ? "" : String(p);
    const name = document.createElement("span");
    name.className = "bar-name";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = p === null ? "0" : `${(p * 100).toFixed(2)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = p === null ? "–" : `${(p * 100).toFixed(1)} %`;
    item.append(name, track, value);
    item.setAttribute("aria-label", p === null ? `${label}: no prediction` : `${label}: ${value.textContent}`);
    list.append(item);
  });
}

function predict() {
  const inputs = currentInputs();
  const out = $("predicted-label");
  if (!state.model) {
    out.textContent = "–";
    out.dataset.label = "";
    renderBars(null);
    return;
  }
  const row = FEATURES.map((name) => inputs[name]);
  const probabilities = Array.from(
    tf.tidy(() => state.model.predict(tf.tensor2d([row], [1, FEATURES.length], "float32")).dataSync()),
  );
  const best = probabilities.indexOf(Math.max(...probabilities));
  out.textContent = LABELS[best];
  out.dataset.label = LABELS[best];
  out.dataset.version = state.version;
  out.dataset.inputs = JSON.stringify(row);
  renderBars(probabilities);
}

// --- the model -------------------------------------------------------------------------

// Loads latest/model.json through the proxy. Its weight paths pin the version
// ("../<version>/group1-shard1of1.bin"), so the shard URL TensorFlow.js fetches names the
// version actually loaded, even if latest moves during the load.
async function loadLatestModel() {
  const fetched = [];
  const fetchFunc = async (url, init) => {
    const response = await fetch(url, { ...init, cache: "no-store" });
    fetched.push({ url: new URL(url, window.location.href), status: response.status, response });
    return response;
  };
  let model;
  try {
    model = await tf.loadLayersModel(modelUrl("latest"), { fetchFunc });
  } catch (err) {
    const first = fetched[0];
    if (first && first.status === 404) return { missing: true };
    let detail = err.message;
    if (first && !first.response.ok) detail = (await readError(first.response)) || detail;
    throw new Error(`The model could not be loaded: ${detail}`);
  }
  const shard = fetched.map((f) => f.url.pathname.split("/")).find((parts) => parts.at(-1).endsWith(".bin"));
  return { model, version: shard ? shard.at(-2) : "unknown" };
}

async function readError(response) {
  try {
    const body = await response.clone().json();
    return body && body.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function reloadModel() {
  if (state.loading) return state.loading;
  const status = $("model-status");
  setStatus(status, "Loading the latest model…", "busy");
  state.loading = (async () => {
    try {
      const loaded = await loadLatestModel();
      if (loaded.missing) {
        if (state.model) state.model.dispose();
        state.model = null;
        state.version = null;
        showVersion();
        setStatus(status, NO_MODEL, "warn");
      } else {
        if (state.model) state.model.dispose();
        state.model = loaded.model;
        state.version = loaded.version;
        showVersion();
        setStatus(status, `Model ${loaded.version} loaded; predictions run in your browser.`, "ok");
      }
    } catch (err) {
      setStatus(status, err.message, "error");
    } finally {
      state.loading = null;
    }
    predict();
    renderMetrics();
  })();
  return state.loading;
}

function showVersion() {
  const node = $("model-version");
  node.textContent = state.version || "none loaded";
  node.dataset.version = state.version || "";
}

// --- model record: metrics, lineage, history --------------------------------------------

const percent = (x) => (typeof x === "number" ? `${(x * 100).toFixed(1)} %` : "–");
const fixed3 = (x) => (typeof x === "number" ? x.toFixed(3) : "–");

function when(value) {
  if (value === null || value === undefined || value === "") return "–";
  const date = typeof value === "number" ? new Date(value) : new Date(String(value));
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace(".000Z", "Z");
}

function definitionList(rows) {
  const dl = document.createElement("dl");
  for (const [term, value, key] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value === undefined || value === null || value === "" ? "–" : String(value);
    if (key) dd.dataset.field = key;
    dl.append(dt, dd);
  }
  return dl;
}

function table(headers, rows, caption) {
  const t = document.createElement("table");
  if (caption) t.createCaption().textContent = caption;
  const head = t.createTHead().insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    head.append(th);
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    row.cells.forEach((cell, i) => {
      const td = i === 0 ? document.createElement("th") : document.createElement("td");
      if (i === 0) td.scope = "row";
      td.textContent = cell;
      tr.append(td);
    });
    if (row.className) tr.className = row.className;
  }
  return t;
}

async function recordOf(version) {
  const run = state.runs.find((r) => r.version === version);
  if (run) return run;
  // Older than the listed page: metadata.json beside the model carries the same record.
  const response = await fetch(`${API}/s3proxy/${version}/metadata.json`, { cache: "no-store" });
  return response.ok ? response.json() : null;
}

async function renderMetrics() {
  const box = $("metrics");
  if (!state.version) {
    box.replaceChildren(Object.assign(document.createElement("p"), {
      className: "muted", textContent: "No model loaded.",
    }));
    return;
  }
  let run = null;
  try {
    run = await recordOf(state.version);
  } catch {
    run = null;
  }
  if (!run) {
    box.replaceChildren(Object.assign(document.createElement("p"), {
      className: "muted", textContent: `No record found for ${state.version}.`,
    }));
    return;
  }
  const metrics = run.metrics || {};
  const holdout = metrics.holdout || {};
  const gate = run.gate || {};
  const gateText = [gate.decision, gate.reason].filter(Boolean).join(": ");
  const summary = definitionList([
    ["Version", run.version, "version"],
    ["Status", run.status ? run.status + (run.latest ? " (latest)" : "") : "published", "status"],
    ["Holdout accuracy", `${percent(holdoutAccuracy(run))} on ${holdout.count ?? "?"} samples`, "accuracy"],
    ["Validation accuracy", percent(metrics.validation && metrics.validation.accuracy), "validation"],
    ["Trained on", `${run.sample_count ?? "?"} samples (train ${run.train_count ?? "?"}, validation ` +
      `${run.validation_count ?? "?"}, holdout ${run.holdout_count ?? "?"})`, "samples"],
    ["Data watermark", when(run.watermark), "watermark"],
    ["Trained at", when(run.ended_at || run.trained_at), "trained_at"],
    ["Instance", run.instance_id, "instance"],
    ["Gate", gateText, "gate"],
  ]);
  const perClass = holdout.per_class || {};
  const classes = table(
    ["class", "precision", "recall", "support"],
    LABELS.map((label) => {
      const c = perClass[label] || {};
      return { cells: [label, fixed3(c.precision), fixed3(c.recall), String(c.support ?? "–")] };
    }),
    "Holdout, per class",
  );
  classes.className = "per-class";
  box.replaceChildren(summary, classes);
}

function renderLive() {
  const holdout = (version) => {
    const run = state.runs.find((r) => r.version === version);
    return run ? holdoutAccuracy(run) : null;
  };
  renderLiveChart($("live-chart"), state.timeline, holdout);
}

function renderHistory() {
  renderChart($("chart"), state.runs);
  renderLive();
  const rows = state.runs.map((run) => ({
    className: run.status + (run.latest ? " latest" : ""),
    cells: [
      run.version,
      run.status + (run.latest ? " · latest" : ""),
      percent(holdoutAccuracy(run)),
      String(run.sample_count ?? "–"),
      shortVersion(run.version),
    ],
  }));
  $("history-table").replaceChildren(
    table(["version", "status", "holdout accuracy", "samples", "when (UTC)"], rows),
  );
}

// Reads GET /models; reloads the model when latest has moved.
async function checkForModel() {
  if (state.checking) return state.checking;
  state.checking = (async () => {
    try {
      const page = await listModels();
      state.runs = page.items || [];
      state.latest = page.latest || null;
      state.timeline = page.timeline || null;
      renderHistory();
      if (!state.latest && !state.model) {
        setStatus($("model-status"), NO_MODEL, "warn");
      } else if (state.latest && (state.latest !== state.version || !state.model)) {
        await reloadModel();
      } else {
        renderMetrics();
      }
    } catch (err) {
      setStatus($("model-status"), `Could not read the model list: ${err.message}`, "error");
    } finally {
      state.checking = null;
    }
  })();
  return state.checking;
}

// --- feedback ------------------------------------------------------------------------------

function sampleId() {
  const random = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  return `web-${random}`;
}

async function sendFeeling(label, button) {
  const feedback = $("feedback");
  const inputs = currentInputs();
  const sample = { ...inputs, label, created: Date.now(), id: sampleId() };
  for (const b of document.querySelectorAll(".feel-button")) b.disabled = true;
  setStatus(feedback, "Sending…", "busy");
  try {
    const result = await upload([sample]);
    const id = (result.ids || [])[0] || "";
    feedback.dataset.sampleId = id;
    const shown = FEATURES.map((name) => `${$(`${name}-value`).textContent} ${UNITS[name]}`).join(", ");
    setStatus(feedback, `Thank you: recorded "${label}" at ${shown}. It will count in the next ` +
      "training run.", "ok");
  } catch (err) {
    feedback.dataset.sampleId = "";
    const where = err instanceof ApiError && err.field ? ` (field "${err.field}")` : "";
    const status = err instanceof ApiError && err.status ? `HTTP ${err.status}: ` : "";
    // API Gateway's 403 on a private route: no key, or one it does not know (or disabled).
    const hint = err instanceof ApiError && err.status === 403 ? " Check the API key." : "";
    setStatus(feedback, `Not recorded. ${status}${err.message}${where}${hint}`, "error");
  } finally {
    for (const b of document.querySelectorAll(".feel-button")) b.disabled = false;
    button.focus();
  }
}

// --- start ---------------------------------------------------------------------------------

function setUpKey() {
  keyFromAddress();
  const field = $("api-key");
  field.value = apiKey();
  field.addEventListener("change", () => {
    field.value = setApiKey(field.value);
  });
}

async function main() {
  $("api-origin").textContent = `API: ${API}`;
  setUpKey();
  renderBars(null);
  currentInputs();
  $("inputs").addEventListener("input", predict);
  $("inputs").addEventListener("submit", (event) => event.preventDefault());
  $("refresh").addEventListener("click", () => checkForModel());
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      renderChart($("chart"), state.runs);
      renderLive();
    }, 100);
  });
  for (const button of document.querySelectorAll(".feel-button")) {
    button.addEventListener("click", () => sendFeeling(button.dataset.label, button));
  }
  if (typeof tf === "undefined") {
    setStatus($("model-status"), "TensorFlow.js did not load (vendor/tf.min.js is missing), so the page " +
      "cannot predict. Feedback still works.", "error");
    return;
  }
  // The model is tiny: the CPU backend is fast enough and computes in exact float32, whatever
  // the device's GPU supports.
  await tf.setBackend("cpu");
  await checkForModel();
  setInterval(checkForModel, POLL_MS);
  document.body.dataset.ready = "true";
}

main();
