// DOM builders. Data only ever becomes text (textContent, text nodes, attribute values
// set one by one), never markup: a name such as "<script>" shows as those characters.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

// A table: `headers` are strings, each row an array of cells (text or nodes); a row may
// be {cells, attrs} to set attributes on its <tr>.
export function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el(
      "tbody",
      {},
      rows.map((row) => {
        const cells = Array.isArray(row) ? row : row.cells;
        const trAttrs = Array.isArray(row) ? {} : row.attrs;
        return el("tr", trAttrs, cells.map((c) => el("td", {}, c)));
      }),
    ),
  );
}

// Replace `parent`'s children, keeping keyboard focus on the element with the same
// data-focus key (views redraw on every poll; a keyboard user must not lose her place).
export function replace(parent, ...children) {
  const active = document.activeElement;
  const key = active && parent.contains(active) ? active.getAttribute("data-focus") : null;
  parent.replaceChildren(...children.flat().filter((c) => c));
  if (key) {
    const again = [...parent.querySelectorAll("[data-focus]")].find(
      (n) => n.getAttribute("data-focus") === key,
    );
    if (again) again.focus();
  }
}

export function when(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function errorText(err) {
  return err && err.message ? err.message : String(err);
}
