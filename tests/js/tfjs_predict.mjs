// Loads a TensorFlow.js Layers model from a URL with real TensorFlow.js and predicts.
//
//   node tests/js/tfjs_predict.mjs <model.json URL>  < rows.json  > outputs.json
//
// stdin:  a JSON array of input rows, each an array of numbers (one model input row);
// stdout: a JSON array of output rows (each an array of numbers), in the same order.
// Only the JSON goes to stdout; TensorFlow.js chatter goes to stderr. Weight URLs are resolved
// by TensorFlow.js itself against the model.json URL, exactly as a browser client would.
// Exit codes: 0 success, 1 any failure (message on stderr).
// Uses @tensorflow/tfjs (pure JS, CPU backend) from the repository's node_modules.

// TensorFlow.js greets Node users on stdout; keep stdout for the JSON answer.
console.log = (...args) => console.error(...args);

const tf = await import("@tensorflow/tfjs");

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  const url = process.argv[2];
  if (!url) throw new Error("usage: node tfjs_predict.mjs <model.json URL> < rows.json");
  const rows = JSON.parse(await readStdin());
  if (!Array.isArray(rows) || !rows.every((r) => Array.isArray(r))) {
    throw new Error("stdin must be a JSON array of arrays of numbers");
  }
  await tf.setBackend("cpu");
  const model = await tf.loadLayersModel(url);
  if (rows.length === 0) {
    process.stdout.write("[]\n");
    return;
  }
  const input = tf.tensor2d(rows, undefined, "float32");
  const output = model.predict(input);
  const values = await output.array();
  process.stdout.write(JSON.stringify(values) + "\n");
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
