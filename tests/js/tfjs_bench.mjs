// Times TensorFlow.js predictions in Node on a model loaded once from a URL.
//
//   node tests/js/tfjs_bench.mjs <model.json URL> <repeats>  < batches.json  > timings.json
//
// stdin:  a JSON object {"name": [[row], ...], ...}: named input batches (rows of numbers);
// stdout: {"load_ms": n, "backend": "cpu", "name": {"p50_us": n, "p99_us": n, "n": repeats}, ...}.
// Each timing covers tensor creation, predict and reading the values back (dataSync), which is
// what a caller needs to get an answer. A few untimed warm-up runs come first.
console.log = (...args) => console.error(...args);

const tf = await import("@tensorflow/tfjs");

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function main() {
  const [url, repeatsArg] = process.argv.slice(2);
  const repeats = Number(repeatsArg || 200);
  if (!url) throw new Error("usage: node tfjs_bench.mjs <model.json URL> <repeats> < batches.json");
  const batches = JSON.parse(await readStdin());
  await tf.setBackend("cpu");
  const t0 = process.hrtime.bigint();
  const model = await tf.loadLayersModel(url);
  const out = { load_ms: Number(process.hrtime.bigint() - t0) / 1e6, backend: tf.getBackend() };
  for (const [name, rows] of Object.entries(batches)) {
    const once = () => {
      const x = tf.tensor2d(rows, undefined, "float32");
      const y = model.predict(x);
      y.dataSync();
      x.dispose();
      y.dispose();
    };
    for (let i = 0; i < 10; i++) once();
    const times = [];
    for (let i = 0; i < repeats; i++) {
      const start = process.hrtime.bigint();
      once();
      times.push(Number(process.hrtime.bigint() - start) / 1e3);
    }
    times.sort((a, b) => a - b);
    out[name] = { p50_us: percentile(times, 0.5), p99_us: percentile(times, 0.99), n: repeats };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
