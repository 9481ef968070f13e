// Drills (operator and above): the list, a form to plan or start one, and a drill's
// page: its live timeline, recovery p50/p95/max, an abort button, and the report
// rendered and downloadable as Markdown and JSON.
import { api, apiText, seg } from "../api.js";
import { el, errorText, replace, table, when } from "../dom.js";

function seconds(value) {
  return value === null || value === undefined ? "-" : `${Number(value).toFixed(2)} s`;
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The runner's timeline, with each service's recovery placed in it (recovery times
// count from the cordon).
function events(report) {
  const list = report.timeline.map((e) => ({ t_s: e.t_s, event: e.event }));
  if (report.cordoned_at) {
    const cordon = (Date.parse(report.cordoned_at) - Date.parse(report.started_at)) / 1000;
    for (const [service, took] of Object.entries(report.recovery.per_service_s)) {
      list.push({ t_s: cordon + took, event: `${service} recovered (${seconds(took)} after the cordon)` });
    }
  }
  return list.sort((a, b) => a.t_s - b.t_s);
}

function listView(root, ctx) {
  const form = el("form", { id: "drill-form", class: "panel" });
  const planBox = el("div", { id: "drill-plan" });
  const box = el("div", { id: "drill-list" });
  root.append(el("h2", {}, "Drills"), form, planBox, el("h3", {}, "Drills so far"), box);
  let regionNames = [];
  let last = "";

  function chosen() {
    return [...form.querySelectorAll("input[name=region]:checked")].map((i) => i.value);
  }

  async function submit(mode) {
    const regions = chosen();
    if (regions.length === 0) {
      ctx.status("pick at least one region to drill", "error");
      return;
    }
    const seconds = Number(form.querySelector("#drill-max").value) || 300;
    try {
      const drill = await api("POST", "/v1/drills", { regions, mode, max_duration_s: seconds });
      if (mode === "live") {
        ctx.go("drills", drill.id);
        return;
      }
      replace(
        planBox,
        el("h3", {}, `Plan: cordoning ${regions.join(", ")}`),
        el("p", {}, `${drill.summary.recoverable} recoverable, ${drill.summary.degraded} degraded, ${drill.summary.unrecoverable} unrecoverable, ${drill.summary.unaffected} unaffected`),
        table(
          ["service", "outcome", "to", "reason"],
          drill.plan.services.map((s) => [
            s.service,
            s.outcome,
            Object.entries(s.to).map(([r, n]) => `${r} ${n}`).join(", ") || "nowhere",
            `${s.reason}: ${s.message}`,
          ]),
        ),
      );
    } catch (err) {
      replace(planBox, el("p", { class: "error", role: "alert" }, errorText(err)));
    }
  }

  function drawForm() {
    replace(
      form,
      el(
        "fieldset",
        {},
        el("legend", {}, "Regions to drill"),
        regionNames.map((name) =>
          el("label", { class: "class-choice" }, el("input", { type: "checkbox", name: "region", value: name, "data-focus": `drill-${name}` }), ` ${name}`),
        ),
      ),
      el("label", { for: "drill-max" }, "max duration (s) "),
      el("input", { id: "drill-max", type: "number", min: "1", max: "86400", value: "300" }),
      el("button", { type: "button", id: "drill-plan-button", onclick: () => submit("plan") }, "Plan"),
      el("button", { type: "button", id: "drill-start", class: "action", onclick: () => submit("live") }, "Start live drill"),
    );
  }

  async function refresh() {
    const [drills, regions] = await Promise.all([api("GET", "/v1/drills"), api("GET", "/v1/regions")]);
    const names = regions.items.map((r) => r.name);
    if (JSON.stringify(names) !== JSON.stringify(regionNames)) {
      regionNames = names;
      drawForm();
    }
    const key = JSON.stringify(drills.items.map((d) => [d.id, d.state, d.progress]));
    if (key === last) return;
    last = key;
    const items = [...drills.items].reverse(); // newest first
    replace(
      box,
      items.length === 0
        ? el("p", {}, "No drill yet.")
        : table(
            ["drill", "regions", "state", "phase", "recovered / affected", "elapsed", "started"],
            items.map((d) => ({
              attrs: { "data-drill": d.id },
              cells: [
                el("button", { type: "button", "data-focus": `drill-${d.id}`, onclick: () => ctx.go("drills", d.id) }, d.id),
                d.regions.join(", "),
                el("span", { class: `drill-state drill-${d.state}` }, d.state),
                d.progress.phase,
                `${d.progress.recovered}/${d.progress.affected}`,
                seconds(d.progress.elapsed_s),
                when(d.created_at),
              ],
            })),
            { class: "drills" },
          ),
    );
  }
  return { refresh };
}

function pageView(root, id, ctx) {
  const head = el("div", { id: "drill-head" });
  const timeline = el("ol", { id: "drill-timeline", class: "timeline" });
  const report = el("div", { id: "drill-report" });
  root.append(
    el("p", {}, el("button", { type: "button", onclick: () => ctx.go("drills") }, "All drills")),
    el("h2", {}, `Drill ${id}`),
    head,
    el("h3", {}, "Timeline"),
    timeline,
    el("h3", {}, "Report"),
    report,
  );
  let last = "";
  let drill = null;

  async function refresh() {
    drill = await api("GET", `/v1/drills/${seg(id)}`);
    const key = JSON.stringify([drill.state, drill.progress, drill.report]);
    if (key === last) return;
    last = key;
    const r = drill.report;
    const running = !r.final;
    replace(
      head,
      el(
        "dl",
        {},
        el("dt", {}, "regions"),
        el("dd", {}, drill.regions.join(", ")),
        el("dt", {}, "state"),
        el("dd", { class: `drill-state drill-${drill.state}`, id: "drill-state" }, drill.state),
        el("dt", {}, "phase"),
        el("dd", {}, drill.progress.phase),
        el("dt", {}, "recovered"),
        el("dd", {}, `${drill.progress.recovered} of ${drill.progress.affected} services`),
        el("dt", {}, "recovery p50 / p95 / max"),
        el("dd", { id: "drill-recovery" }, `${seconds(r.recovery.p50_s)} / ${seconds(r.recovery.p95_s)} / ${seconds(r.recovery.max_s)}`),
        el("dt", {}, "residency violations"),
        el("dd", {}, String(r.summary.violations)),
        drill.progress.message && [el("dt", {}, "outcome"), el("dd", {}, drill.progress.message)],
      ),
      el(
        "div",
        { class: "actions" },
        running &&
          el(
            "button",
            {
              type: "button",
              class: "action danger",
              id: "drill-abort",
              onclick: async () => {
                try {
                  await api("POST", `/v1/drills/${seg(id)}/abort`, { reason: `aborted from the dashboard by ${ctx.who.subject}` });
                } catch (err) {
                  ctx.status(errorText(err), "error");
                }
                last = "";
              },
            },
            "Abort drill",
          ),
        el("button", { type: "button", id: "drill-md", onclick: () => apiText(`/v1/drills/${seg(id)}/report.md`).then((t) => download(`drill-${id}.md`, "text/markdown", t)) }, "Download report (Markdown)"),
        el("button", { type: "button", id: "drill-json", onclick: () => download(`drill-${id}.json`, "application/json", JSON.stringify(drill.report, null, 2)) }, "Download report (JSON)"),
      ),
    );
    replace(
      timeline,
      events(r).map((e) => el("li", {}, el("span", { class: "t" }, `+${seconds(e.t_s)}`), " ", e.event)),
    );
    const per = Object.entries(r.recovery.per_service_s);
    replace(
      report,
      el("p", {}, `${r.summary.affected} affected, ${r.summary.recovered} recovered, ${r.summary.degraded} degraded, ${r.summary.unrecoverable} unrecoverable, ${r.summary.waiting} waiting`),
      per.length ? table(["service", "time to recover"], per.map(([s, t]) => [s, seconds(t)]), { class: "recovery" }) : null,
      [...r.degraded, ...r.unrecoverable].length
        ? table(["service", "reason", "message"], [...r.degraded, ...r.unrecoverable].map((s) => [s.service, s.reason, s.message]))
        : null,
      el("p", {}, `failback: ${r.failback.requested ? (r.failback.restored ? `restored in ${seconds(r.failback.restore_s)}` : "pending") : "not requested"}`),
    );
  }
  return { refresh };
}

export function mount(root, params, ctx) {
  return params[0] ? pageView(root, params[0], ctx) : listView(root, ctx);
}
