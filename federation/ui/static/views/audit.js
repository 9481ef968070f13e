// Audit (admin): the latest entries of the hash-chained log, and whether it verifies.
import { api } from "../api.js";
import { el, errorText, replace, table } from "../dom.js";

const LATEST = 50;

// Short details inline; long ones folded, the whole JSON one click away.
function details(value) {
  const text = JSON.stringify(value);
  if (text.length <= 100) return el("code", {}, text);
  return el("details", {}, el("summary", {}, `${text.slice(0, 90)}...`), el("pre", {}, JSON.stringify(value, null, 2)));
}

export function mount(root, params, ctx) {
  const verdict = el("div", { id: "audit-verify", "aria-live": "polite" });
  const box = el("div", { id: "audit-entries" });
  const verify = async () => {
    replace(verdict, el("p", {}, "verifying the chain..."));
    try {
      const v = await api("GET", "/v1/audit/verify");
      replace(
        verdict,
        el(
          "p",
          { class: v.ok ? "verdict verdict-allowed" : "verdict verdict-rejected", id: "audit-result" },
          v.ok
            ? `verified: ${v.entries} entries, the chain holds`
            : `BROKEN at entry ${v.first_bad}: ${v.reason}`,
        ),
      );
      return v;
    } catch (err) {
      replace(verdict, el("p", { class: "error" }, errorText(err)));
      return null;
    }
  };
  root.append(
    el("h2", {}, "Audit"),
    el("button", { type: "button", id: "audit-verify-button", onclick: verify }, "Verify the chain"),
    verdict,
    el("h3", {}, `Latest ${LATEST} entries`),
    box,
  );
  let head = null;
  let last = "";
  const first = verify().then((v) => {
    head = v ? v.entries : 0;
  });

  async function refresh() {
    await first;
    const since = Math.max(0, (head || 0) - LATEST);
    const found = await api("GET", `/v1/audit?since=${since}`);
    if (found.items.length >= LATEST + 1 || found.items.length === 1000) {
      head = found.items[found.items.length - 1].seq;
    }
    const items = found.items.slice(-LATEST).reverse();
    const key = JSON.stringify(items.map((e) => e.seq));
    if (key === last) return;
    last = key;
    replace(
      box,
      table(
        ["seq", "at", "actor", "action", "resource", "details"],
        items.map((e) => [
          String(e.seq),
          String(e.at).replace("T", " ").slice(0, 19),
          e.actor,
          e.action,
          e.resource,
          details(e.details || {}),
        ]),
        { class: "audit" },
      ),
    );
  }
  return { refresh };
}
