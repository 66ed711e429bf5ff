"""Show plans and tables to the operator: rich text, Markdown or JSON.

Everything here writes to the stream it is given, so results go to stdout and
tests can read them from a buffer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from .plan import PHASES, Plan

SYMBOLS = {
    "create": "+",
    "update": "~",
    "replace": "-/+",
    "move": ">",
    "unmanaged": "?",
    "file": "f",
    "step": "*",
}


def console(stream: TextIO, color: bool | None = None) -> Console:
    """A console on ``stream``; colour only on a terminal unless forced."""
    return Console(
        file=stream,
        force_terminal=color,
        no_color=color is False,
        highlight=False,
        soft_wrap=True,
    )


def plan_json(plan: Plan, stream: TextIO) -> None:
    """Write the plan as JSON (the schema of docs/plan-format.md)."""
    json.dump(plan.as_json(), stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")


def _summary_line(plan: Plan) -> str:
    counts = plan.counts()
    if not plan.has_changes:
        return "No changes: the cluster matches the inventory."
    words = {
        "create": "to create",
        "update": "to update in place",
        "replace": "to replace",
        "move": "to move",
        "unmanaged": "not in the inventory",
        "file": "files to install",
        "step": "steps to run",
    }
    parts = [f"{counts[k]} {words[k]}" for k in words if k in counts]
    return "Plan: " + ", ".join(parts) + "."


def plan_text(plan: Plan, out: Console) -> None:
    """Write the plan for a person reading a terminal.

    The plan is put together as one text and printed once: a plan of a
    whole layout has hundreds of lines, and a print per line was most of
    the time ``plan --offline`` took after start-up.
    """
    from rich.text import Text

    lines: list[Text] = []

    def line(*parts: str | tuple[str, str]) -> None:
        lines.append(Text.assemble(*parts))

    line(("Plan for " + plan.name, "bold"), f" ({plan.inventory}, {plan.mode})")
    for warning in plan.warnings:
        line((f"warning: {warning}", "yellow"))
    budget = plan.facts.get("connection_budget")
    if budget:
        line(
            f"PostgreSQL connections: {budget['pm2_instances']} PM2 instances x pool "
            f"{budget['pool_max']} = {budget['app_connections']}, + "
            f"{budget['reserved_connections']} reserved = {budget['needed']} of "
            f"max_connections {budget['max_connections']} "
            f"(headroom {budget['headroom']})"
        )
    for phase in PHASES:
        actions = [a for a in plan.actions if a.phase == phase]
        if not actions:
            continue
        line()
        line((phase, "bold underline"))
        host = None
        for action in actions:
            if action.phase != "containers" and action.host != host:
                host = action.host
                line("  ", (host, "bold"))
            indent = "  " if action.phase == "containers" else "    "
            symbol = SYMBOLS.get(action.kind, "*")
            line(f"{indent}{symbol} {action.summary}")
            for detail in _detail_lines(action.kind, action.details):
                line(f"{indent}    {detail}")
    for note in plan.notes:
        line()
        line((f"note: {note}", "dim"))
    line()
    line((_summary_line(plan), "bold"))
    out.print(Text("\n").join(lines))


def _detail_lines(kind: str, details: Any) -> Iterable[str]:
    if kind == "create":
        for key, value in details.get("params", {}).items():
            yield f"{key} = {value}"
    elif kind == "update":
        for key, change in details.get("changes", {}).items():
            yield f"{key}: {change.get('old')} -> {change.get('new')}"
    elif kind in ("replace", "move", "unmanaged") and details.get("reason"):
        yield str(details["reason"])
    elif kind == "file" and details.get("diff"):
        yield from str(details["diff"]).rstrip("\n").splitlines()


def plan_markdown(plan: Plan, stream: TextIO) -> None:
    """Write the plan as Markdown, for a merge request comment."""
    write = stream.write
    write(f"## psa-infra plan: {plan.name}\n\n")
    write(f"`{plan.inventory}` ({plan.mode}). **{_summary_line(plan)}**\n\n")
    for warning in plan.warnings:
        write(f"> **Warning:** {_md(warning)}\n\n")
    budget = plan.facts.get("connection_budget")
    if budget:
        write(
            f"PostgreSQL connections: {budget['app_connections']} for "
            f"{budget['pm2_instances']} PM2 instances (pool {budget['pool_max']}) + "
            f"{budget['reserved_connections']} reserved = **{budget['needed']}** of "
            f"max_connections {budget['max_connections']}.\n\n"
        )
    containers = [a for a in plan.actions if a.phase == "containers"]
    if containers:
        write("### Containers\n\n| | vmid | host | action |\n|---|---|---|---|\n")
        for action in containers:
            write(
                f"| `{SYMBOLS.get(action.kind, '*')}` | {action.vmid or ''} | "
                f"{_md(action.host)} | {_md(action.summary)} |\n"
            )
        write("\n")
    for phase in PHASES[1:]:
        actions = [a for a in plan.actions if a.phase == phase]
        if not actions:
            continue
        write(f"### Setup: {phase}\n\n")
        for host in dict.fromkeys(a.host for a in actions):
            mine = [a for a in actions if a.host == host]
            write(f"<details><summary>{_md(host)}: {len(mine)} actions</summary>\n\n")
            for action in mine:
                write(f"- `{SYMBOLS.get(action.kind, '*')}` {_md(action.summary)}\n")
            write("\n</details>\n\n")
    for note in plan.notes:
        write(f"_Note: {_md(note)}_\n\n")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(
    out: Console, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Print a simple table."""
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    out.print(grid)
