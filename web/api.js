// The HTTP API as the page sees it: a base URL and errors a person can read.

// Same origin unless config.js names another API (a static copy of the page hosted elsewhere).
export const API = String(window.AUTORETRAIN_API || window.location.origin).replace(/\/+$/, "");

export class ApiError extends Error {
  constructor(message, { status = 0, code = "", field = null, index = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.index = index;
  }
}

// The API answers errors as JSON {error, message, index, field}; API Gateway's own as {message}.
async function errorFrom(response, what) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const message = body && typeof body.message === "string" && body.message
    ? body.message
    : `${what} failed with HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(message, {
    status: response.status,
    code: (body && body.error) || "",
    field: body ? body.field ?? null : null,
    index: body ? body.index ?? null : null,
  });
}

export async function request(path, { method = "GET", body } = {}) {
  const what = `${method} ${path}`;
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(`Could not reach the API at ${API} (${err.message}).`);
  }
  if (!response.ok) throw await errorFrom(response, what);
  return response.json();
}

// With the serving model's live accuracy over time, whichever version served ("timeline": time
// buckets, changes of latest, runs).
export const listModels = (limit = 50) => request(`/models?limit=${limit}&live=serving`);

export const upload = (samples) => request("/upload", { method: "POST", body: samples });

export const modelUrl = (version = "latest") => `${API}/s3proxy/${version}/model.json`;
