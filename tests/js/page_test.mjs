// Drives the web page in headless Chromium and reports what it saw, as JSON.
//
//   node tests/js/page_test.mjs <page URL> <spec.json>
//
// spec.json: {
//   "inputs": [[temp, rh, wind, clo], ...],   // slider settings whose predictions are reported
//   "feel": "warm",                           // the button pressed to send a real sample
//   "screenshots": {"wide": [paths], "narrow": [paths]},
//   "pauseForSwitch": true                    // optional, see below
// }
// With pauseForSwitch the script prints {"event": "ready", ...} on a line of its own and waits
// for one line on stdin (the caller moves the latest pointer meanwhile), then presses
// "Check for a newer model" and reports the version the page loads.
// The last stdout line is the report; Chromium chatter goes to stderr. Exit 0 when the page
// could be driven to the end (the caller judges the report), 1 otherwise.
// Uses Debian's /usr/bin/chromium through playwright-core: no browser is ever downloaded.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const WAIT_MS = 30_000;

function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

async function readLine() {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return null;
}

async function setInputs(page, row) {
  await page.evaluate((values) => {
    ["temp", "rh", "wind", "clo"].forEach((name, i) => {
      const input = document.getElementById(name);
      input.value = String(values[i]);
      input.dispatchEvent(new Event("input", { bubbles: true }));
    });
  }, row);
  // The page rounds to each slider's step; wait until the prediction is for exactly these values.
  await page.waitForFunction(
    (expected) => document.getElementById("predicted-label").dataset.inputs === expected,
    JSON.stringify(row),
    { timeout: WAIT_MS },
  );
}

async function shownPrediction(page) {
  return page.evaluate(() => {
    const out = document.getElementById("predicted-label");
    return {
      inputs: JSON.parse(out.dataset.inputs || "null"),
      label: out.dataset.label,
      text: out.textContent,
      version: out.dataset.version,
      probabilities: Object.fromEntries(
        [...document.querySelectorAll("#probabilities li")].map((li) => [li.dataset.label, Number(li.dataset.probability)]),
      ),
      bars: [...document.querySelectorAll("#probabilities li")].map((li) => li.textContent),
    };
  });
}

async function chart(page) {
  return page.evaluate(() => ({
    points: [...document.querySelectorAll("#chart g.version")].map((g) => ({
      version: g.dataset.version,
      status: g.dataset.status,
      latest: g.dataset.latest === "true",
      accuracy: g.dataset.accuracy === "" ? null : Number(g.dataset.accuracy),
      samples: g.dataset.samples === "" ? null : Number(g.dataset.samples),
      marked: {
        ring: g.querySelector(".latest-ring") !== null,
        cross: g.querySelector(".reject-cross") !== null,
      },
    })),
    label: document.querySelector("#chart svg")?.getAttribute("aria-label") ?? null,
    tableRows: document.querySelectorAll("#history-table tbody tr").length,
  }));
}

// The live accuracy chart: its points (oldest first), the holdout of each version's span, the
// changes of latest and the unpublished runs it marks, with where they were drawn, so the caller
// can check that a marker falls inside the plot.
async function liveChart(page) {
  return page.evaluate(() => {
    const svg = document.querySelector("#live-chart svg");
    const number = (text) => (text === "" || text === undefined ? null : Number(text));
    return {
      version: svg ? svg.dataset.version : null,
      width: svg ? Number(svg.getAttribute("viewBox").split(" ")[2]) : null,
      points: [...document.querySelectorAll("#live-chart g.bucket")].map((g) => ({
        start: g.dataset.start,
        accuracy: number(g.dataset.accuracy),
        seen: number(g.dataset.seen),
        ciLow: number(g.dataset.ciLow),
        ciHigh: number(g.dataset.ciHigh),
        x: Number(g.querySelector("circle").getAttribute("cx")),
      })),
      markers: [...document.querySelectorAll("#live-chart g.change")].map((g) => ({
        action: g.dataset.action,
        version: g.dataset.version,
        at: g.dataset.at,
        x: Number(g.querySelector("line").getAttribute("x1")),
      })),
      runs: [...document.querySelectorAll("#live-chart g.run")].map((g) => ({
        status: g.dataset.status,
        rule: g.dataset.rule,
        version: g.dataset.version,
        at: g.dataset.at,
        x: Number(g.querySelector("line").getAttribute("x1")),
      })),
      band: document.querySelector("#live-chart .ci-band") !== null,
      holdouts: [...document.querySelectorAll("#live-chart g.holdout")].map((g) => ({
        version: g.dataset.version,
        accuracy: number(g.dataset.accuracy),
      })),
      label: svg ? svg.getAttribute("aria-label") : null,
      text: document.getElementById("live-chart").textContent,
    };
  });
}

// The charts are redrawn at their box's width after a resize.
async function chartFits(page) {
  await page.waitForFunction(() => ["chart", "live-chart"].every((id) => {
    const box = document.getElementById(id);
    const svg = box.querySelector("svg");
    if (!svg) return true;
    return Number(svg.getAttribute("viewBox").split(" ")[2]) === Math.max(320, Math.floor(box.clientWidth));
  }), null, { timeout: WAIT_MS });
}

// A focused slider moves by its step with the arrow keys, and the prediction follows.
async function keyboard(page, report) {
  await page.focus("#temp");
  const before = await page.inputValue("#temp");
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction(
    (b) => JSON.parse(document.getElementById("predicted-label").dataset.inputs)[0] !== Number(b),
    before,
    { timeout: WAIT_MS },
  );
  const after = Number(await page.inputValue("#temp"));
  report.keyboard = { before: Number(before), after, prediction: await shownPrediction(page) };
}

async function feel(page, label) {
  await page.evaluate(() => {
    const box = document.getElementById("feedback");
    box.dataset.kind = "";
  });
  await page.getByRole("button", { name: label === "ok" ? "OK" : label[0].toUpperCase() + label.slice(1) }).click();
  await page.waitForFunction(
    () => ["ok", "error"].includes(document.getElementById("feedback").dataset.kind),
    null,
    { timeout: WAIT_MS },
  );
  return page.evaluate(() => {
    const box = document.getElementById("feedback");
    return { kind: box.dataset.kind, text: box.textContent, id: box.dataset.sampleId || null };
  });
}

async function main() {
  const [url, specPath] = process.argv.slice(2);
  if (!url || !specPath) throw new Error("usage: node page_test.mjs <page URL> <spec.json>");
  const spec = JSON.parse(readFileSync(specPath, "utf8"));
  const report = { requests: [], responses: [], console: [], pageErrors: [] };
  const profile = mkdtempSync(join(tmpdir(), "autoretrain-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("request", (r) => report.requests.push(r.url()));
    page.on("response", (r) => report.responses.push({ url: r.url(), status: r.status() }));
    page.on("console", (m) => report.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => report.pageErrors.push(String(e)));

    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => document.body.dataset.ready === "true", null, { timeout: WAIT_MS });
    report.title = await page.title();
    report.version = await page.getAttribute("#model-version", "data-version");
    report.status = await page.textContent("#model-status");
    report.backend = await page.evaluate(() => window.tf.getBackend());

    report.predictions = [];
    for (const row of spec.inputs) {
      await setInputs(page, row);
      report.predictions.push(await shownPrediction(page));
    }

    if (report.version) await keyboard(page, report);
    if (spec.feel) {
      if (spec.inputs.length) await setInputs(page, spec.inputs[0]);
      // The real API's answer to an invalid sample: the request leaves the page with rh = 120.
      await page.route("**/upload", async (route) => {
        const body = JSON.parse(route.request().postData());
        body[0].rh = 120;
        await route.continue({ postData: JSON.stringify(body) });
      });
      report.rejected = await feel(page, "cold");
      await page.unroute("**/upload");
      // A real sample, through the real API.
      report.feedback = await feel(page, spec.feel);
    }

    report.metrics = await page.evaluate(() =>
      Object.fromEntries([...document.querySelectorAll("#metrics dd[data-field]")].map((dd) => [dd.dataset.field, dd.textContent])),
    );
    report.perClassRows = await page.locator("#metrics table.per-class tbody tr").count();
    report.chart = await chart(page);
    report.live = await liveChart(page);

    for (const path of spec.screenshots?.wide ?? []) await page.screenshot({ path, fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await chartFits(page);
    report.narrow = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    }));
    for (const path of spec.screenshots?.narrow ?? []) await page.screenshot({ path, fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });

    if (spec.pauseForSwitch) {
      emit({ event: "ready", version: report.version, predictions: report.predictions });
      await readLine();
      await page.getByRole("button", { name: "Check for a newer model" }).click();
      await page.waitForFunction(
        (old) => {
          const v = document.getElementById("model-version").dataset.version;
          return v && v !== old;
        },
        report.version,
        { timeout: WAIT_MS },
      );
      await setInputs(page, spec.inputs[0]);
      report.afterSwitch = {
        version: await page.getAttribute("#model-version", "data-version"),
        prediction: await shownPrediction(page),
        chart: await chart(page),
        live: await liveChart(page),
      };
    }
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  emit(report);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
