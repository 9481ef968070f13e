// The one way the dashboard talks to the server: the public /v1 API, with the token
// kept in sessionStorage (gone when the tab closes) and sent only as a bearer header.

const KEY = "federation.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

// A path segment from data (a service or region name): never spliced in raw, and never
// "." or "..", which the browser resolves (escaping leaves dots as they are), moving
// the request up the path.
export function seg(value) {
  const text = String(value);
  if (text === "." || text === "..") {
    throw new Error(`not a name: ${text}`);
  }
  return encodeURIComponent(text);
}

async function send(method, path, body, accept) {
  const headers = { Authorization: `Bearer ${token() || ""}`, Accept: accept };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let code = "error";
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const data = await resp.json();
      code = data.error.code;
      message = data.error.message;
    } catch {
      // not the API's error shape: the status line says enough
    }
    throw new ApiError(resp.status, code, message);
  }
  return resp;
}

export async function api(method, path, body) {
  const resp = await send(method, path, body, "application/json");
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export async function apiText(path) {
  return (await send("GET", path, undefined, "text/markdown")).text();
}

// A GET to poll: asked again only when its last answer is older than its period,
// 1 s, or 10 s once a list holds more than 1,000 items (a big federation's service
// list is megabytes; a dashboard left open must not cost the server more than that).
export const BIG_LIST = 1000;
export function poller(path) {
  let last = null;
  let at = 0;
  return async () => {
    const big = last && Array.isArray(last.items) && last.items.length > BIG_LIST;
    if (!last || Date.now() - at >= (big ? 10000 : 0)) {
      last = await api("GET", path);
      at = Date.now();
    }
    return last;
  };
}
