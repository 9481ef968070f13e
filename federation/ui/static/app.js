// The dashboard: log in with a token, then one view at a time (map, residency,
// services, drills, audit), each redrawn from the API every second while it is shown.
import { api, ApiError, clearToken, setToken, token } from "./api.js";
import { el, errorText, replace } from "./dom.js";
import * as audit from "./views/audit.js";
import * as drills from "./views/drills.js";
import * as map from "./views/map.js";
import * as residency from "./views/residency.js";
import * as services from "./views/services.js";

// Polling, not a stream: every view is a few small GETs, 1 s keeps each within the
// 2 s the dashboard promises, and the API's only stream is a region's own assignments.
const POLL_MS = 1000;

// role needed to see a view (the server checks again on every request)
const VIEWS = {
  map: { module: map, title: "Map", role: "viewer" },
  residency: { module: residency, title: "Residency", role: "viewer" },
  services: { module: services, title: "Services", role: "viewer" },
  drills: { module: drills, title: "Drills", role: "operator" },
  audit: { module: audit, title: "Audit", role: "admin" },
};

const $ = (id) => document.getElementById(id);
let who = null;
let current = null; // {name, params, view, busy}
let timer = null;

function status(text, kind = "") {
  const bar = $("status");
  bar.textContent = text;
  bar.className = kind;
}

function may(role) {
  return Boolean(who && who.roles.includes(role));
}

// A hash is typed by anyone: a bad escape is taken as it stands, not a blank page.
function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const view = VIEWS[name] && may(VIEWS[name].role) ? name : "map";
  return { name: view, params: rest.map(decoded) };
}

export function go(name, ...params) {
  location.hash = "#/" + [name, ...params.map((p) => encodeURIComponent(p))].join("/");
}

async function tick() {
  // one refresh at a time per view; a view just opened does not wait for the last one's
  const shown = current;
  if (!shown || shown.busy) return;
  shown.busy = true;
  try {
    await shown.view.refresh();
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      logout("your token was refused (expired or revoked): log in again");
      return;
    }
    status(`could not update: ${errorText(err)} (retrying)`, "error");
  } finally {
    shown.busy = false;
  }
}

function show() {
  const { name, params } = route();
  for (const button of document.querySelectorAll("#nav button")) {
    const here = button.dataset.view === name;
    if (here) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  const root = $("view");
  replace(root);
  const context = { who, may, go, status };
  current = { name, params, view: VIEWS[name].module.mount(root, params, context), busy: false };
  document.title = `${VIEWS[name].title} · federation`;
  tick();
}

function buildNav() {
  const nav = $("nav");
  replace(
    nav,
    Object.entries(VIEWS)
      .filter(([, v]) => may(v.role))
      .map(([name, v]) =>
        el("button", { type: "button", "data-view": name, onclick: () => go(name) }, v.title),
      ),
  );
}

async function start() {
  who = await api("GET", "/v1/whoami");
  if (!who.roles.includes("viewer")) {
    // a region's token: it may speak for its region, not read the federation
    throw new Error(`a ${who.subject} token cannot read the federation: use a viewer's, operator's or admin's`);
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `signed in as ${who.subject} (${who.role})`;
  buildNav();
  show();
  clearInterval(timer);
  timer = setInterval(tick, POLL_MS);
}

function logout(message = "") {
  clearInterval(timer);
  timer = null;
  current = null;
  who = null;
  clearToken();
  replace($("view"));
  replace($("nav"));
  $("view").hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message;
  status("");
  $("token").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("token");
  setToken(field.value.trim());
  field.value = "";
  try {
    await start();
  } catch (err) {
    logout(err instanceof ApiError && err.status === 401 ? "that token was refused" : errorText(err));
  }
});
$("logout").addEventListener("click", () => logout());
window.addEventListener("hashchange", () => {
  if (who) show();
});

if (token()) {
  start().catch((err) => logout(errorText(err)));
} else {
  logout();
}
