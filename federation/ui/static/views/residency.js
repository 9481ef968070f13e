// Residency: pick data classes; every country with a region is shaded allowed or
// rejected by POST /v1/residency/evaluate, with its reasons on hover and focus, and
// the policies (and their exemptions) that decided.
import { api } from "../api.js";
import { el, errorText, replace, svg, table } from "../dom.js";
import { countryName, drawCountries, loadWorld, mapFrame } from "../world.js";

// A country holding several regions is allowed, rejected, or mixed.
function verdictOf(list) {
  const allowed = list.filter((v) => v.allowed).length;
  if (allowed === list.length) return "allowed";
  return allowed === 0 ? "rejected" : "mixed";
}

export function mount(root, params, ctx) {
  const picker = el("fieldset", { class: "classes" }, el("legend", {}, "Data classes"));
  const mapBox = el("div", { class: "map-box" });
  const detail = el("p", { id: "country-detail", class: "detail", "aria-live": "polite" }, "Hover over or focus a shaded country to read why.");
  const results = el("div", { id: "verdicts" });
  const policiesBox = el("div", { id: "deciding-policies" });
  root.append(
    el("h2", {}, "Residency"),
    picker,
    mapBox,
    detail,
    el("h3", {}, "Regions"),
    results,
    el("h3", {}, "Policies that decided"),
    policiesBox,
  );
  const chosen = new Set(params[0] ? params[0].split(",") : []);
  let classes = [];
  let last = "";

  function drawPicker() {
    replace(
      picker,
      el("legend", {}, "Data classes"),
      classes.map((name) =>
        el(
          "label",
          { class: "class-choice" },
          el("input", {
            type: "checkbox",
            value: name,
            "data-focus": `class-${name}`,
            checked: chosen.has(name),
            onchange: (event) => {
              if (event.target.checked) chosen.add(name);
              else chosen.delete(name);
              last = "";
              refresh().catch((err) => ctx.status(errorText(err), "error"));
            },
          }),
          ` ${name}`,
        ),
      ),
    );
  }

  async function refresh() {
    const [world, policies] = await Promise.all([loadWorld(), api("GET", "/v1/policies")]);
    const names = new Set(["public"]);
    for (const p of policies.items) for (const c of p.data_classes || []) names.add(c);
    const sorted = [...names].sort();
    if (JSON.stringify(sorted) !== JSON.stringify(classes)) {
      classes = sorted;
      drawPicker();
    }
    if (chosen.size === 0) {
      if (last !== "none") {
        last = "none";
        replace(mapBox, mapFrame("world map", drawCountries(world)));
        replace(results, el("p", {}, "Pick one or more data classes."));
        replace(policiesBox);
      }
      return;
    }
    let result;
    try {
      result = await api("POST", "/v1/residency/evaluate", { data_classes: [...chosen].sort() });
    } catch (err) {
      if (err.status === 422) {
        replace(results, el("p", { class: "error" }, errorText(err)));
        return;
      }
      throw err;
    }
    const key = JSON.stringify([result.regions, result.bound_policies, result.warnings, policies.revision]);
    if (key === last) return;
    last = key;
    draw(world, result, policies.items);
  }

  function draw(world, result, policies) {
    const byCountry = new Map();
    for (const v of result.regions) {
      if (!v.country) continue;
      if (!byCountry.has(v.country)) byCountry.set(v.country, []);
      byCountry.get(v.country).push(v);
    }
    const explain = (a2) => {
      const list = byCountry.get(a2);
      return list
        .map((v) => `${v.region}: ${v.allowed ? "allowed" : "rejected"}: ${v.reasons.join("; ")}`)
        .join(" | ");
    };
    const countries = drawCountries(world, (a2) =>
      byCountry.has(a2) ? `verdict-${verdictOf(byCountry.get(a2))}` : "",
    );
    for (const path of countries.querySelectorAll("path")) {
      const a2 = path.getAttribute("data-country");
      if (!byCountry.has(a2)) continue;
      const text = `${countryName(world, a2)}: ${verdictOf(byCountry.get(a2))}. ${explain(a2)}`;
      path.setAttribute("tabindex", "0");
      path.setAttribute("aria-label", text);
      path.setAttribute("data-focus", `country-${a2}`);
      path.append(svg("title", {}, text));
      const say = () => {
        detail.textContent = text;
      };
      path.addEventListener("mouseenter", say);
      path.addEventListener("focus", say);
    }
    replace(mapBox, mapFrame(`where ${result.data_classes.join(", ")} may be`, countries));
    replace(
      results,
      result.warnings.map((w) => el("p", { class: "warning" }, w)),
      table(
        ["region", "country", "verdict", "reasons"],
        result.regions.map((v) => ({
          attrs: { "data-region": v.region, "data-country": v.country || "" },
          cells: [
            v.region,
            v.country ? `${v.country} ${countryName(world, v.country)}` : "unknown",
            el("span", { class: `verdict verdict-${v.allowed ? "allowed" : "rejected"}` }, v.allowed ? "allowed" : "rejected"),
            el("ul", { class: "reasons" }, v.reasons.map((r) => el("li", {}, r))),
          ],
        })),
        { class: "verdicts" },
      ),
    );
    const bound = new Set(result.bound_policies);
    const deciding = policies.filter((p) => bound.has(p.name));
    replace(
      policiesBox,
      deciding.length
        ? table(
            ["policy", "mode", "data classes", "allow", "deny", "exemptions"],
            deciding.map((p) => [
              p.name,
              p.mode || "enforce",
              (p.data_classes || []).join(", "),
              (p.allow || []).join(", ") || "anywhere",
              (p.deny || []).join(", ") || "none",
              (p.exemptions || []).length
                ? el(
                    "ul",
                    {},
                    p.exemptions.map((x) =>
                      el("li", {}, `${x.service}: ${(x.allow || []).join(", ")} until ${x.expires} (${x.reason || "no reason"})`),
                    ),
                  )
                : "none",
            ]),
            { class: "policies" },
          )
        : el("p", {}, "No policy binds these data classes: they may go anywhere."),
    );
  }

  return { refresh };
}
