"""The plan for people: Terraform-style text (with colour on a terminal) and the JSON `--format json` prints."""

from __future__ import annotations

from typing import Any

from keyless.plan import planfile
from keyless.plan.model import ActionKind, Plan

_COLOURS = {
    ActionKind.CREATE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.REPLACE: "magenta",
    ActionKind.DELETE: "red",
    ActionKind.ADOPT: "cyan",
    ActionKind.NOOP: "dim",
}


def render_text(plan: Plan, *, show_noop: bool = False, markup: bool = False) -> str:
    """Terraform-style text; with `markup`, rich colour tags for a terminal."""
    lines = [f"keyless plan for app {plan.app!r} on target {plan.target!r} ({plan.cloud.value})", ""]
    for service in plan.services():
        actions = [a for a in plan.actions if a.service == service and (show_noop or a.changes)]
        if not actions:
            continue
        lines.append(f"  service {service}")
        for action in actions:
            text = "  " + action.line()
            if markup:
                colour = _COLOURS[action.kind]
                text = f"[{colour}]{_escape(text)}[/{colour}]"
            lines.append(text)
        principal = plan.principal_of(service)
        if principal:
            text = f"      principal for direct grants: {principal}"
            lines.append(f"[dim]{_escape(text)}[/dim]" if markup else text)
    for blocker in plan.blockers:
        text = f"  ! blocked: service {blocker.service}: {blocker.message}"
        if blocker.hint:
            text += f"\n      hint: {blocker.hint}"
        lines.append(f"[bold red]{_escape(text)}[/bold red]" if markup else text)
    for warning in plan.warnings:
        text = f"  ! warning: {warning}"
        lines.append(f"[bold yellow]{_escape(text)}[/bold yellow]" if markup else text)
    lines.extend(f"  note: {_escape(n) if markup else n}" for n in plan.notes)
    if len(lines) > 2:
        lines.append("")
    lines.append(plan.summary())
    return "\n".join(lines)


def render_json(plan: Plan) -> dict[str, Any]:
    """The plan as `--format json` prints it: the saved-plan document, so a printed plan can be applied."""
    return planfile.dump(plan)


def _escape(text: str) -> str:
    return text.replace("[", "\\[")
