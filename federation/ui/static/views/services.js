// Services: a table of every service (phase, ready/desired, placements, conditions);
// a service's page adds its explain table (every region, chosen or rejected, and why)
// and its rollout progress.
import { api, BIG_LIST, poller, seg } from "../api.js";
import { el, replace, table, when } from "../dom.js";

function placements(status) {
  const list = Object.entries(status.placements || {});
  if (list.length === 0) return "none";
  return list
    .map(([r, p]) => `${r} ${p.ready}/${p.desired}${p.draining ? " (draining)" : ""}`)
    .join(", ");
}

function conditions(status) {
  const list = status.conditions || [];
  if (list.length === 0) return "none";
  return el(
    "ul",
    { class: "conditions" },
    list.map((c) => el("li", {}, `${c.type}: ${c.reason}${c.message ? ` (${c.message})` : ""}`)),
  );
}

function phase(status) {
  return el("span", { class: `phase phase-${status.phase}` }, status.phase);
}

function listView(root, ctx) {
  const box = el("div", { id: "service-list" });
  root.append(el("h2", {}, "Services"), box);
  let last = "";
  const services = poller("/v1/services");
  async function refresh() {
    const found = await services();
    const key = JSON.stringify(found.items.map((s) => [s.name, s.status]));
    if (key === last) return;
    last = key;
    replace(
      box,
      found.items.length > BIG_LIST &&
        el("p", {}, `${found.items.length} services: this list is read every 10 s`),
      found.items.length === 0
        ? el("p", {}, "No service is deployed (federation deploy FILE).")
        : table(
            ["service", "phase", "ready / desired", "placements", "data classes", "conditions"],
            found.items.map((s) => ({
              attrs: { "data-service": s.name },
              cells: [
                el("button", { type: "button", "data-focus": `svc-${s.name}`, onclick: () => ctx.go("services", s.name) }, s.name),
                phase(s.status),
                `${s.status.replicas.ready}/${s.status.replicas.desired}`,
                placements(s.status),
                (s.data_classes || []).join(", ") || "none",
                conditions(s.status),
              ],
            })),
            { class: "services" },
          ),
    );
  }
  return { refresh };
}

function rollout(service) {
  const steps = Object.entries(service.status.placements || {});
  const versions = new Set(steps.map(([, p]) => p.version));
  const cond = (service.status.conditions || []).find((c) => c.type === "Rollout");
  const desired = steps.reduce((n, [, p]) => n + (p.draining ? 0 : p.desired), 0);
  const ready = steps.reduce((n, [, p]) => n + (p.draining ? 0 : p.ready), 0);
  return [
    el("p", {}, cond ? `${cond.reason}: ${cond.message}` : `version ${service.version || "(none)"}: no rollout under way`),
    el("progress", { max: String(Math.max(desired, 1)), value: String(ready), "aria-label": "replicas ready" }),
    el("span", {}, ` ${ready} of ${desired} replicas ready`),
    versions.size > 1 ? el("p", {}, `versions running: ${[...versions].join(", ")}`) : null,
    steps.length
      ? table(
          ["region", "desired", "ready", "version", "draining"],
          steps.map(([r, p]) => [r, String(p.desired), String(p.ready), p.version, p.draining ? "yes" : "no"]),
          { class: "placements" },
        )
      : null,
  ];
}

function pageView(root, name, ctx) {
  const head = el("div");
  const box = el("div", { id: "service-page" });
  root.append(
    el("p", {}, el("button", { type: "button", onclick: () => ctx.go("services") }, "All services")),
    el("h2", {}, `Service ${name}`),
    head,
    box,
  );
  let last = "";
  async function refresh() {
    const [service, explain] = await Promise.all([
      api("GET", `/v1/services/${seg(name)}`),
      api("GET", `/v1/services/${seg(name)}/explain`),
    ]);
    const key = JSON.stringify([service.status, explain.regions, explain.decision]);
    if (key === last) return;
    last = key;
    replace(
      head,
      el(
        "dl",
        {},
        el("dt", {}, "phase"),
        el("dd", {}, phase(service.status)),
        el("dt", {}, "replicas"),
        el("dd", {}, `${service.status.replicas.ready}/${service.status.replicas.desired} ready`),
        el("dt", {}, "data classes"),
        el("dd", {}, (service.data_classes || []).join(", ") || "none"),
        el("dt", {}, "residency"),
        el("dd", {}, service.status.residency.compliant ? "compliant" : "NOT compliant"),
        el("dt", {}, "decided"),
        el("dd", {}, when(service.status.decided_at)),
        el("dt", {}, "conditions"),
        el("dd", {}, conditions(service.status)),
      ),
    );
    replace(
      box,
      el("h3", {}, "Rollout"),
      rollout(service),
      el("h3", {}, "Explain: every region, chosen or rejected"),
      el("p", {}, `${explain.decision.reason}: ${explain.decision.message || ""}`),
      table(
        ["region", "country", "outcome", "replicas", "residency", "reasons"],
        explain.regions.map((r) => ({
          attrs: { "data-region": r.region },
          cells: [
            r.region,
            r.country || "",
            r.outcome,
            String(r.replicas),
            [
              el("span", { class: `verdict verdict-${r.allowed ? "allowed" : "rejected"}` }, r.allowed ? "allowed" : "rejected"),
              el("ul", { class: "reasons" }, r.residency.map((x) => el("li", {}, x))),
            ],
            // the scheduler repeats residency's reasons after "residency: "
            el("ul", { class: "reasons" }, r.reasons.filter((x) => !x.startsWith("residency: ")).map((x) => el("li", {}, x))),
          ],
        })),
        { class: "explain" },
      ),
    );
  }
  return { refresh };
}

export function mount(root, params, ctx) {
  return params[0] ? pageView(root, params[0], ctx) : listView(root, ctx);
}
