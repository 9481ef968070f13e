"""`federation deploy`, `status` and `explain`: services, where they run, and why there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from federation.cli.documents import load_services
from federation.cli.render import console, err_console, phase, print_api_error, progress
from federation.cli.session import call
from federation.client import ApiClient, ApiError


@click.command("deploy")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait (with a progress bar) until every service is Running.",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def deploy(ctx: click.Context, files: tuple[Path, ...], wait: bool, timeout: float) -> None:
    """Create or update the services in FILES (YAML) and wait until they run."""
    try:
        specs = load_services(files)
    except ValueError as exc:
        err_console.print(f"[red]error[/red] {escape(str(exc))}")
        raise SystemExit(1) from None

    async def run(client: ApiClient) -> int:
        generations: dict[str, int] = {}
        failed = 0
        for spec in specs:
            try:
                answer = await client.put_service(spec["name"], spec)
            except ApiError as exc:
                print_api_error(exc, f"service {spec['name']}")
                failed += 1
                continue
            generations[spec["name"]] = int(answer["generation"])
            console.print(
                f"service [bold]{spec['name']}[/] accepted (generation {answer['generation']})"
            )
        if not wait or not generations:
            return failed
        return failed + await wait_running(client, generations, timeout)

    if call(ctx, run):
        raise SystemExit(1)


async def wait_running(client: ApiClient, generations: dict[str, int], seconds: float) -> int:
    """Show a progress bar per service until each runs `generations[name]` (or later)
    or fails; returns how many failed or were still not running after `seconds`."""
    failed = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    with progress("ready") as bars:
        tasks = {name: bars.add_task(name, total=1, phase="Pending") for name in generations}
        pending = set(generations)
        while pending and loop.time() < end:
            for name in sorted(pending):
                st = (await client.service(name))["status"]
                bars.update(
                    tasks[name],
                    total=max(1, st["replicas"]["desired"]),
                    completed=st["replicas"]["ready"],
                    phase=phase(st["phase"]),
                )
                caught_up = st["observed_generation"] >= generations[name]
                if caught_up and st["phase"] in ("Running", "Failed"):
                    pending.discard(name)
                    if st["phase"] == "Failed":
                        failed += 1
            await asyncio.sleep(0.5)
    for name in sorted(pending):
        st = (await client.service(name))["status"]
        reasons = "; ".join(c["message"] for c in st["conditions"])
        err_console.print(
            f"[yellow]{name}[/]: still {st['phase']} after {seconds:g} s: {escape(reasons)}"
        )
    return failed + len(pending)


@click.command("status")
@click.argument("service", required=False)
@click.pass_context
def status(ctx: click.Context, service: str | None) -> None:
    """Show every service (or one, in detail) with its phase and placements."""
    if service is None:
        answer = call(ctx, lambda c: c.services())
        table = Table(title="services")
        for col in ("name", "version", "phase", "ready", "placements", "residency"):
            table.add_column(col)
        for item in answer["items"]:
            st = item["status"]
            table.add_row(
                item["name"],
                escape(item["version"]),
                phase(st["phase"]),
                f"{st['replicas']['ready']}/{st['replicas']['desired']}",
                ", ".join(
                    f"{r} {p['ready']}/{p['desired']}" + (" (draining)" if p["draining"] else "")
                    for r, p in st["placements"].items()
                )
                or "-",
                "[green]compliant[/]" if st["residency"]["compliant"] else "[red]NOT compliant[/]",
            )
        console.print(table)
        return
    item = call(ctx, lambda c: c.service(service))
    st = item["status"]
    console.print(
        f"[bold]{item['name']}[/] version {escape(item['version'])} "
        f"generation {item['generation']}: {phase(st['phase'])}, "
        f"{st['replicas']['ready']}/{st['replicas']['desired']} ready"
    )
    table = Table(title="placements")
    for col in ("region", "country", "desired", "ready", "version", "draining"):
        table.add_column(col)
    for region, p in st["placements"].items():
        table.add_row(
            region,
            st["residency"]["countries"].get(region) or "?",
            str(p["desired"]),
            str(p["ready"]),
            escape(p["version"]),
            "yes" if p["draining"] else "",
        )
    console.print(table)
    for cond in st["conditions"]:
        console.print(f"{cond['type']}: {cond['reason']}: {escape(cond['message'])}")
    policies = ", ".join(f"{n} (rev {r})" for n, r in st["residency"]["policies"].items())
    console.print(f"residency: decided under {policies or 'no policy (public)'}")


@click.command("explain")
@click.argument("service")
@click.pass_context
def explain(ctx: click.Context, service: str) -> None:
    """Every region: chosen or rejected for SERVICE, and why."""
    answer = call(ctx, lambda c: c.explain(service))
    decision = answer["decision"]
    console.print(
        f"[bold]{service}[/] (data classes: {escape(', '.join(answer['data_classes']) or 'none')}; "
        f"policies: {escape(', '.join(answer['bound_policies']) or 'none')})"
    )
    console.print(f"decision: {decision['reason']}: {escape(decision['message'])}")
    table = Table(title="regions")
    for col in ("region", "country", "outcome", "replicas", "why"):
        table.add_column(col)
    colours = {"chosen": "green", "kept": "yellow", "eligible": "cyan", "rejected": "red"}
    for r in answer["regions"]:
        table.add_row(
            r["region"],
            r["country"] or "?",
            f"[{colours.get(r['outcome'], 'white')}]{r['outcome']}[/]",
            str(r["replicas"]),
            escape("\n".join(r["reasons"])),
        )
    console.print(table)
