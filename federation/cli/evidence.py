"""`federation residency evidence`: the signed report of where data of a class went
over a period (`GET /v1/residency/evidence`), shown, saved (`-o report.json|.md|.csv`),
and checked later (`evidence verify report.json`).

Only the JSON file carries the signature over the report itself; Markdown and CSV are
renderings of it for people and spreadsheets. `verify` needs no server: it checks the
signature with the public key the file names, and `--public-key` pins the key the
auditor knows to be the server's (`GET /v1/audit/checkpoint` shows it).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.render import console, err_console
from federation.cli.session import call
from federation.client import ApiClient, ApiError
from federation.store.audit.checkpoint import document_signature_holds

JSON = dict[str, Any]
_CSV_COLUMNS = (
    "service",
    "region",
    "country",
    "replicas",
    "draining",
    "from",
    "to",
    "allowed",
    "policies",
    "exemptions",
    "reasons",
)


@click.group("residency")
def residency() -> None:
    """Residency evidence: where regulated data went, proven from the audit log."""


@residency.group("evidence", invoke_without_command=True)
@click.option("--data-class", help="The data class (e.g. phi-eu).")
@click.option("--from", "start", help="Start of the period, ISO 8601 with a zone.")
@click.option("--to", "end", help="End of the period, ISO 8601 with a zone.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also check the chain against this signed checkpoint (federation audit checkpoint).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to FILE: .json (signed), .md or .csv.",
)
@click.pass_context
def evidence(
    ctx: click.Context,
    data_class: str | None,
    start: str | None,
    end: str | None,
    checkpoint: Path | None,
    output: Path | None,
) -> None:
    """The report for --data-class over [--from, --to]: every interval in which its
    services had replicas in a region, re-checked against the rules then in force."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [
        n for n, v in (("--data-class", data_class), ("--from", start), ("--to", end)) if not v
    ]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    if output is not None and output.suffix not in (".json", ".md", ".csv"):
        raise click.UsageError("-o: the file must end in .json, .md or .csv")
    body: JSON = {"data_class": data_class, "from": start, "to": end}
    if checkpoint is not None:
        body["checkpoint"] = json.loads(checkpoint.read_text())

    async def go(client: ApiClient) -> JSON:
        with console.status("verifying the audit log, replaying it, receiving the report"):
            try:
                signed = await client.evidence(body)
            except ApiError as exc:
                if exc.status != 0:
                    raise
                raise _incomplete(exc.message) from exc
        if not {"report", "signature"} <= signed.keys():
            raise _incomplete("it has no signature")
        return signed

    signed = call(ctx, go)
    report = signed["report"]
    if output is None:
        show(report)
    else:
        output.write_text(render(signed, output.suffix))
        console.print(f"report written to {escape(str(output))}")
    if report["summary"]["not_allowed"]:
        raise SystemExit(3)


def _incomplete(why: str) -> ApiError:
    # The server sends the report as it encodes it: a failure on the way cuts it short.
    return ApiError(
        0,
        "incomplete",
        f"the report did not arrive whole and signed ({why}): "
        "what came proves nothing and was not kept",
    )


_REPORT_KEYS = {"data_class", "from", "to", "summary", "chain", "intervals"}


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key is given twice")
    return found


@evidence.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", help="Require this signer (base64, as the checkpoint shows it).")
def verify(path: Path, public_key: str | None) -> None:
    """Check a saved report.json: its signature covers every byte of the report."""
    try:
        # A key given twice would verify as its last value and read, in some tools, as
        # its first: refused.
        signed = json.loads(path.read_text(), object_pairs_hook=_no_repeated_keys)
        report, signature = signed["report"], signed["signature"]
    except (ValueError, KeyError, TypeError):
        err_console.print(f"[red]not a signed report[/red]: {escape(str(path))}")
        raise SystemExit(1) from None
    if not document_signature_holds(report, signature):
        err_console.print("[red]signature does not hold[/red]: the report was changed")
        raise SystemExit(1)
    if not isinstance(report, dict) or not report.keys() >= _REPORT_KEYS:
        # Signed by the audit key, but something else it signs (a checkpoint).
        err_console.print("[red]signed, but not a residency evidence report[/red]")
        raise SystemExit(1)
    if public_key is not None and signature.get("public_key") != public_key:
        err_console.print("[red]signed by another key[/red] than --public-key")
        raise SystemExit(1)
    console.print(
        f"signature holds: signed by {escape(str(signature['public_key']))}; "
        f"{report['data_class']} from {report['from']} to {report['to']}, "
        f"{report['summary']['not_allowed']} intervals not allowed"
    )


def show(report: JSON) -> None:
    """The summary, then every interval (violations first), as tables."""
    s = report["summary"]
    chain = report["chain"]
    console.print(
        f"[bold]{escape(report['data_class'])}[/] from {report['from']} to {report['to']}: "
        f"{s['intervals']} intervals, countries {', '.join(s['countries']) or '-'}, "
        f"[{'red' if s['not_allowed'] else 'green'}]{s['not_allowed']} not allowed[/]; "
        f"chain of {chain['entries']} entries verified"
    )
    table = Table(title="Intervals")
    for column in ("service", "region", "country", "replicas", "from", "to", "allowed", "why"):
        table.add_column(column)
    rows = report["violations"] + [i for i in report["intervals"] if i["allowed"]]
    for i in rows + report["drains_not_allowed"]:
        table.add_row(
            escape(i["service"]),
            escape(i["region"]),
            escape(str(i["country"])),
            ("drain " if i["draining"] else "") + str(i["replicas"]),
            i["from"],
            i["to"],
            "[green]yes[/]" if i["allowed"] else "[red]NO[/]",
            escape("; ".join(i["reasons"])),
        )
    console.print(table)
    for d in report["drills"]:
        console.print(f"drill {escape(d['id'])} at {d['at']}: regions {', '.join(d['regions'])}")


def _csv(report: JSON) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_CSV_COLUMNS)
    for i in report["intervals"]:
        writer.writerow(
            [
                i["service"],
                i["region"],
                i["country"],
                i["replicas"],
                i["draining"],
                i["from"],
                i["to"],
                i["allowed"],
                " ".join(f"{k}@{v}" for k, v in i["policies"].items()),
                " ".join(f"{e['policy']}:{e['expires']}" for e in i["exemptions"]),
                "; ".join(i["reasons"]),
            ]
        )
    return out.getvalue()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(signed: JSON) -> str:
    r = signed["report"]
    s, chain = r["summary"], r["chain"]
    lines = [
        f"# Residency evidence: {r['data_class']}",
        "",
        f"Period: {r['from']} to {r['to']}. Generated {r['generated_at']}.",
        "",
        f"- Audit chain verified: {chain['entries']} entries; first in period "
        f"{(chain['first_in_period'] or {}).get('hash', '-')}, last "
        f"{(chain['last_in_period'] or {}).get('hash', '-')}"
        + (
            f"; checked against checkpoint seq {chain['checkpoint']['seq']}"
            if chain["checkpoint"]
            else ""
        ),
        f"- Services: {', '.join(s['services']) or '-'}",
        f"- Countries used: {', '.join(s['countries']) or '-'}",
        f"- **Intervals not allowed: {s['not_allowed']}** (of {s['intervals']}); drains in "
        f"countries no longer allowed: {s['drains_not_allowed']}",
        "",
        "## Intervals",
        "",
        "| service | region | country | replicas | from | to | allowed | policies | exemptions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in (
        r["violations"] + [x for x in r["intervals"] if x["allowed"]] + r["drains_not_allowed"]
    ):
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    i["service"],
                    i["region"],
                    i["country"],
                    ("drain " if i["draining"] else "") + str(i["replicas"]),
                    i["from"],
                    i["to"],
                    "yes" if i["allowed"] else "**NO**",
                    ", ".join(f"{k} (rev {v})" for k, v in i["policies"].items()),
                    ", ".join(f"{e['policy']} until {e['expires']}" for e in i["exemptions"]),
                )
            )
            + " |"
        )
    lines += ["", "## Policy and group changes", ""]
    lines += [
        f"- {c['at']} {c['action']} {c['name']} by {c['by']} (entry {c['seq']})"
        for c in r["policy_changes"]
    ] or ["- none"]
    lines += ["", "## Drills and moves", ""]
    lines += [
        f"- drill {d['id']} at {d['at']}, regions {', '.join(d['regions'])}" for d in r["drills"]
    ]
    lines += [
        f"- {m['at']} {m['service']}: {m['region']} ({m['country']}) "
        f"{m['replicas']['from']} → {m['replicas']['to']}, {m['reason']}"
        + (f", drill {m['drill']}" if m["drill"] else "")
        for m in r["moves"]
    ] or ["- none"]
    sig = signed["signature"]
    lines += [
        "",
        "## Signature",
        "",
        f"Ed25519 over the SHA-256 of the report's canonical JSON ({sig.get('sha256', '-')}),",
        f"key `{sig['public_key']}`. Check the JSON form with",
        "`federation residency evidence verify report.json`.",
    ]
    return "\n".join(lines) + "\n"


def render(signed: JSON, suffix: str) -> str:
    """The signed report as the file `suffix` says: .json (signed), .md, .csv."""
    if suffix == ".json":
        return json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if suffix == ".md":
        return _markdown(signed)
    return _csv(signed["report"])
