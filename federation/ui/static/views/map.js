// Map: every region as a marker in its country, its state in text and colour, its
// free capacity and the services placed there; a click (or Enter) opens the region.
import { api, poller, seg } from "../api.js";
import { el, errorText, replace, svg, table, when } from "../dom.js";
import { anchor, countryName, drawCountries, loadWorld, mapFrame } from "../world.js";

// What a person calls each state: the API's `unreachable` is a lost region, and a
// cordoned region still holding replicas is draining them.
export function shownState(region) {
  if (region.state === "unreachable") return "lost";
  if (region.state === "cordoned" && region.allocated && region.allocated.cpu > 0) {
    return "draining";
  }
  return region.state;
}

function free(region) {
  const gib = (region.free.memory_mb / 1024).toFixed(1);
  return `${Number(region.free.cpu.toFixed(2))} cpu, ${gib} GiB free`;
}

// service -> {desired, ready} per region, from the services' placements
function placedIn(services) {
  const byRegion = new Map();
  for (const s of services) {
    for (const [region, p] of Object.entries(s.status.placements || {})) {
      if (p.draining) continue;
      if (!byRegion.has(region)) byRegion.set(region, []);
      byRegion.get(region).push({ service: s.name, desired: p.desired, ready: p.ready, version: p.version });
    }
  }
  return byRegion;
}

function placedText(list) {
  if (!list || list.length === 0) return "none";
  return list.map((p) => `${p.service} ${p.ready}/${p.desired}`).join(", ");
}

export function mount(root, params, ctx) {
  const mapBox = el("div", { class: "map-box" });
  const listBox = el("div", { id: "region-list" });
  const panel = el("aside", { id: "region-panel", class: "panel", hidden: true, "aria-live": "polite" });
  root.append(
    el("h2", {}, "Regions"),
    el("div", { class: "map-and-panel" }, mapBox, panel),
    el("h3", {}, "All regions"),
    listBox,
  );
  let open = params[0] || null;
  let last = "";
  let data = { regions: [], byRegion: new Map() };
  const services = poller("/v1/services");
  const openRegion = (name) => {
    open = name;
    last = "";
    return refresh().then(() => panel.querySelector("h3")?.focus());
  };

  async function drawPanel() {
    if (!open) {
      panel.hidden = true;
      return;
    }
    let region;
    try {
      region = await api("GET", `/v1/regions/${seg(open)}`);
    } catch (err) {
      replace(panel, el("p", { class: "error" }, `region ${open}: ${errorText(err)}`));
      panel.hidden = false;
      return;
    }
    const state = shownState(region);
    const labels = Object.entries(region.labels || {});
    const placed = data.byRegion.get(region.name) || [];
    const actions = [];
    if (ctx.may("operator")) {
      const cordoned = region.cordoned;
      actions.push(
        el(
          "button",
          {
            type: "button",
            class: "action",
            "data-focus": "cordon",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                const verb = cordoned ? "uncordon" : "cordon";
                const body = cordoned ? {} : { reason: `cordoned from the dashboard by ${ctx.who.subject}` };
                await api("POST", `/v1/regions/${seg(region.name)}/${verb}`, body);
                ctx.status(`${region.name} ${verb}ed`);
              } catch (err) {
                ctx.status(`${region.name}: ${errorText(err)}`, "error");
              }
              last = "";
              await refresh();
            },
          },
          cordoned ? "Uncordon" : "Cordon",
        ),
      );
    }
    replace(
      panel,
      el("h3", { tabindex: "-1" }, `Region ${region.name}`),
      el(
        "dl",
        {},
        el("dt", {}, "country"),
        el("dd", {}, `${region.country}`),
        el("dt", {}, "state"),
        el("dd", { class: `state state-${state}`, "data-state": state }, state),
        region.cordon && [
          el("dt", {}, "cordoned by"),
          el("dd", {}, `${region.cordon.by}: ${region.cordon.reason || "no reason given"}`),
        ],
        el("dt", {}, "last heartbeat"),
        el("dd", {}, when(region.last_heartbeat)),
        el("dt", {}, "capacity"),
        el("dd", {}, `${region.capacity.cpu} cpu, ${region.capacity.memory_mb} MiB`),
        el("dt", {}, "allocated"),
        el("dd", {}, `${region.allocated.cpu} cpu, ${region.allocated.memory_mb} MiB`),
        el("dt", {}, "free"),
        el("dd", {}, free(region)),
        el("dt", {}, "labels"),
        el(
          "dd",
          {},
          labels.length
            ? el("ul", { class: "labels" }, labels.map(([k, v]) => el("li", {}, `${k}: ${v}`)))
            : "none",
        ),
      ),
      el("h4", {}, "Services placed here"),
      placed.length
        ? table(
            ["service", "ready / desired", "version"],
            placed.map((p) => [p.service, `${p.ready}/${p.desired}`, p.version]),
            { class: "placed" },
          )
        : el("p", {}, "none"),
      el(
        "div",
        { class: "actions" },
        actions,
        el(
          "button",
          {
            type: "button",
            "data-focus": "close",
            onclick: () => {
              open = null;
              panel.hidden = true;
            },
          },
          "Close",
        ),
      ),
    );
    panel.hidden = false;
  }

  async function refresh() {
    const [world, regions, found] = await Promise.all([
      loadWorld(),
      api("GET", "/v1/regions"),
      services(),
    ]);
    const byRegion = placedIn(found.items);
    data = { regions: regions.items, byRegion };
    const key = JSON.stringify([regions.items.map((r) => [r.name, r.state, r.free, r.allocated, r.cordoned]), [...byRegion]]);
    if (key !== last) {
      last = key;
      draw(world, regions.items, byRegion);
    }
    await drawPanel();
  }

  function draw(world, regions, byRegion) {
    const hosts = new Set(regions.map((r) => r.country));
    const perCountry = new Map();
    const markers = [];
    for (const region of regions) {
      const at = anchor(world, region.country);
      if (!at) continue;
      const nth = perCountry.get(region.country) || 0;
      perCountry.set(region.country, nth + 1);
      const [x, y] = [at[0], at[1] + nth * 16];
      const state = shownState(region);
      const placed = byRegion.get(region.name) || [];
      const replicas = placed.reduce((n, p) => n + p.desired, 0);
      const label = `${region.name} (${countryName(world, region.country)}): ${state}, ${free(region)}, ${replicas} replicas`;
      markers.push(
        svg(
          "g",
          {
            class: `marker state-${state}`,
            "data-region": region.name,
            "data-state": state,
            "data-focus": `marker-${region.name}`,
            transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
            tabindex: "0",
            role: "button",
            "aria-label": label,
            onclick: () => openRegion(region.name),
            onkeydown: (event) => {
              if (event.key === "Enter" || event.key === " ") {
                event.preventDefault();
                openRegion(region.name);
              }
            },
          },
          svg("title", {}, label),
          svg("circle", { r: "6" }),
          svg("text", { x: "10", y: "4", class: "marker-label" }, `${region.name} · ${state}`),
        ),
      );
    }
    replace(
      mapBox,
      mapFrame(
        "world map of the regions",
        drawCountries(world, (a2) => (hosts.has(a2) ? "hosts-region" : "")),
        svg("g", { class: "markers" }, markers),
      ),
    );
    replace(
      listBox,
      table(
        ["region", "country", "state", "free", "services (ready/desired)"],
        regions.map((r) => {
          const state = shownState(r);
          return {
            attrs: { "data-region": r.name },
            cells: [
              el("button", { type: "button", "data-focus": `row-${r.name}`, onclick: () => openRegion(r.name) }, r.name),
              `${r.country} ${countryName(world, r.country)}`,
              el("span", { class: `state state-${state}`, "data-state": state }, state),
              free(r),
              el("span", { class: "placed" }, placedText(byRegion.get(r.name))),
            ],
          };
        }),
        { class: "regions" },
      ),
    );
  }

  return { refresh };
}
