"""How the CLI shows things: the two consoles, errors, timestamps, colours, progress.

Tables and results go to stdout (`console`), errors and notes to stderr
(`err_console`), so a script can capture one without the other. Everything the
server sends is escaped before rich sees it: a name or reason in square brackets
must print as text, never be taken for markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from federation.client import ApiError

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console()
err_console = Console(stderr=True)

_PHASE_COLOURS = {
    "Running": "green",
    "Progressing": "cyan",
    "Pending": "yellow",
    "Degraded": "yellow",
    "Failed": "red",
}

_OUTCOME_COLOURS = {
    "recoverable": "green",
    "recovered": "green",
    "degraded": "yellow",
    "unrecoverable": "red",
    "completed": "green",
    "running": "cyan",
    "aborted": "yellow",
    "failed": "red",
}


def print_api_error(exc: ApiError, what: str = "") -> None:
    """`error [WHAT] (HTTP 422): message`, then one line per detail the server gave
    (`field: message` for a field that failed validation)."""
    where = f"HTTP {exc.status}" if exc.status else "no answer"
    subject = f" {escape(what)}" if what else ""
    err_console.print(f"[red]error[/red]{subject} ({where}): {escape(exc.message)}")
    details = exc.details if isinstance(exc.details, list) else [exc.details]
    for detail in details:
        if not detail:
            continue
        if isinstance(detail, dict) and "field" in detail:
            detail = f"{detail['field']}: {detail.get('message', '')}"
        err_console.print(escape(f"  {detail}"))


def moment(value: Any) -> str:
    """An API timestamp to the second, as `2024-05-01 12:00:00`; `never` if unset."""
    return str(value or "never")[:19].replace("T", " ")


def phase(name: str) -> str:
    """A service phase in its colour."""
    return f"[{_PHASE_COLOURS.get(name, 'white')}]{name}[/]"


def outcome(word: str) -> str:
    """A drill state or a service's drill outcome in its colour."""
    return f"[{_OUTCOME_COLOURS.get(word, 'white')}]{word}[/]"


def entries(values: list[str] | None) -> str:
    """A list of countries, groups or data classes; `-` when empty."""
    return escape(", ".join(values)) if values else "-"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def progress(counted: str) -> Progress:
    """Bars of `done/total COUNTED` with a phase column (`phase=` on each task)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} " + counted),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
    )
