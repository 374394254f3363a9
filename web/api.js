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

// The API key of private routes (POST /upload): API Gateway answers 403 without a valid one in
// the x-api-key header ("Test usage plans for REST APIs in API Gateway", AWS docs). The page
// takes it from ?key= in its URL or from the key field, and keeps it in this browser only.
const KEY_STORE = "autoretrain.apiKey";

export function apiKey() {
  try {
    return window.localStorage.getItem(KEY_STORE) || "";
  } catch {
    return ""; // storage refused (a privacy setting): the page works without it, feedback needs a key
  }
}

export function setApiKey(key) {
  const value = String(key || "").trim();
  try {
    if (value) window.localStorage.setItem(KEY_STORE, value);
    else window.localStorage.removeItem(KEY_STORE);
  } catch {
    // not kept: asked again on the next visit
  }
  return value;
}

// ?key=... in the page's address: kept, then taken out of the address bar so it is not bookmarked,
// shared, or kept in the history.
export function keyFromAddress() {
  const url = new URL(window.location.href);
  const key = url.searchParams.get("key");
  if (key === null) return null;
  url.searchParams.delete("key");
  window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  return setApiKey(key);
}

export async function request(path, { method = "GET", body, key = false } = {}) {
  const what = `${method} ${path}`;
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  if (key) {
    const value = apiKey();
    if (!value) {
      throw new ApiError(`${what} needs an API key: enter it under "API key" (or open the page with ?key=...).`, {
        code: "no_api_key",
      });
    }
    headers["x-api-key"] = value;
  }
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers,
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

export const upload = (samples) => request("/upload", { method: "POST", body: samples, key: true });

export const modelUrl = (version = "latest") => `${API}/s3proxy/${version}/model.json`;
