"""Terminal presentation shared by the CLI and the demo: the apply progress bar."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keyless import engine
from keyless.kube.base import KubeSide
from keyless.plan import Plan
from keyless.providers.base import Provider


def apply_with_progress(plan: Plan, provider: Provider, kube: KubeSide, console: Console,
                        lock: engine.HeldLock | None = None) -> engine.ApplyReport:
    """Apply the plan with a progress bar and one line per finished action."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task("applying", total=len(plan.changes))

        def tick(result: engine.ActionResult) -> None:
            mark = "ok" if result.ok else "FAILED"
            bar.console.print(f"  {result.action.kind.symbol:>3} {result.action.resource.value} "
                              f"{result.action.address}: {mark} ({result.seconds:.1f}s) {result.message}",
                              markup=False)
            bar.advance(task)

        return engine.apply_plan(plan, provider, kube, progress=tick, lock=lock)
