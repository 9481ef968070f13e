// The world map: Natural Earth countries (world-atlas, TopoJSON) drawn as SVG through
// a d3-geo projection. Countries are keyed by ISO 3166-1 alpha-2, as regions are.
import { geoArea, geoCentroid, geoNaturalEarth1, geoPath } from "./vendor/d3-geo.min.mjs";
import { svg } from "./dom.js";

export const WIDTH = 960;
export const HEIGHT = 480;

let loaded = null;

async function fetchJson(path) {
  const resp = await fetch(path, { cache: "no-cache", credentials: "omit" });
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  return resp.json();
}

// The countries (GeoJSON features with `alpha2` and `name`) and the projection, loaded once.
export function loadWorld() {
  if (!loaded) {
    loaded = (async () => {
      const [topology, codes] = await Promise.all([
        fetchJson("vendor/countries-110m.json"),
        fetchJson("countries.json"),
      ]);
      const byNumeric = new Map(Object.entries(codes).map(([a2, c]) => [c.numeric, a2]));
      // topojson-client is a classic script (vendor/topojson-client.min.js) that sets `topojson`.
      const collection = globalThis.topojson.feature(topology, topology.objects.countries);
      const features = collection.features
        .filter((f) => f.id !== "010") // Antarctica: no datacenter, half the height
        .map((f) => ({ ...f, alpha2: byNumeric.get(f.id) || null }));
      const projection = geoNaturalEarth1().fitExtent(
        [
          [4, 4],
          [WIDTH - 4, HEIGHT - 4],
        ],
        { type: "FeatureCollection", features },
      );
      const byAlpha2 = new Map(features.filter((f) => f.alpha2).map((f) => [f.alpha2, f]));
      return { features, byAlpha2, codes, projection, path: geoPath(projection) };
    })();
  }
  return loaded;
}

// Where a country's marker goes: the centroid of its largest polygon (France's is in
// France, not between it and French Guiana), projected; null for an unknown country.
export function anchor(world, alpha2) {
  const feature = world.byAlpha2.get(alpha2);
  if (!feature) return null;
  let shape = feature.geometry;
  if (shape.type === "MultiPolygon") {
    let best = null;
    let bestArea = -1;
    for (const coordinates of shape.coordinates) {
      const polygon = { type: "Polygon", coordinates };
      const area = geoArea(polygon);
      if (area > bestArea) [best, bestArea] = [polygon, area];
    }
    shape = best;
  }
  return world.projection(geoCentroid(shape));
}

export function countryName(world, alpha2) {
  const known = world.codes[alpha2];
  return known ? known.name : alpha2;
}

// The base map: one <path> per country, `classOf(alpha2)` naming its shading.
export function drawCountries(world, classOf = () => "") {
  return svg(
    "g",
    { class: "countries" },
    world.features.map((f) =>
      svg("path", {
        d: world.path(f),
        class: `country ${classOf(f.alpha2)}`.trim(),
        "data-country": f.alpha2 || "",
      }),
    ),
  );
}

export function mapFrame(label, ...children) {
  return svg(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "map",
      role: "group",
      "aria-label": label,
    },
    children,
  );
}
