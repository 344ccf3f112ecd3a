"""The keyless command line: a thin face over spec, targets and the engine."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from typer._click.core import Context as ClickContext  # typer vendors click; this is its Context
from typer.core import TyperCommand, TyperGroup, TyperOption

from keyless import __version__, clouds
from keyless.console import apply_with_progress
from keyless.diagnostics import Diagnostic, Position, Severity
from keyless.errors import InvalidInput, KeylessError, UsageError
from keyless.inputs import load_app_file, load_apps_file, load_targets_file
from keyless.porter import LoadedApp
from keyless.porter.model import App

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


INTERRUPTED = ("interrupted. Nothing is left half-done that a second run does not finish: "
               "run the same command again to converge.")


def _untyped_flags(params: list[Any]) -> list[Any]:
    """A flag takes no value, so its help shows no type: typer's rich help would print `<bool>` beside it."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """A keyless command: its help lists flags without a type."""

    def get_params(self, ctx: ClickContext) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    """Every command's keyless errors become their message and exit code, never a traceback."""

    def get_params(self, ctx: ClickContext) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except KeylessError as exc:
            err.print(exc.render(), markup=False)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print(INTERRUPTED, markup=False)
            ctx.exit(130)


app = typer.Typer(
    cls=_Group,
    name="keyless",
    help="Give every service of a porter.yaml app its own cloud identity, with no static keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


FileOpt = Annotated[Path, typer.Option("-f", "--file", help="The app's porter.yaml.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _print_diagnostics(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
    for d in diagnostics:
        err.print(d.render(), markup=False)


def _load(path: Path, app_name: str | None = None) -> LoadedApp:
    """The app of porter.yaml; of a multi-app file, the one --app names (which may be left out when it holds one)."""
    return load_app_file(path, os.environ, app_name)


def _summary(loaded: LoadedApp) -> dict[str, Any]:
    a: App = loaded.app
    services = []
    for s in a.services:
        services.append({
            "name": s.name,
            "type": s.kind.value,
            "connections": [c.model_dump(by_alias=True, exclude_none=True) for c in s.connections],
        })
    return {"name": a.name, "services": services}


@app.command(cls=_Command)
def validate(
    file: FileOpt = Path("porter.yaml"),
    output: FormatOpt = OutputFormat.TEXT,
) -> None:
    """Check porter.yaml and print what keyless reads from it. Exit 2 when it is invalid."""
    try:
        apps = load_apps_file(file, os.environ)
    except InvalidInput as exc:
        if output is OutputFormat.JSON:
            print(json.dumps({"file": str(file), "valid": False,
                              "diagnostics": [d.as_json() for d in exc.diagnostics]}, indent=2))
            raise typer.Exit(2) from None
        raise
    diagnostics = apps[0].diagnostics  # the whole file's, the same for each of its apps
    if output is OutputFormat.JSON:
        summaries = {"apps": [_summary(loaded) for loaded in apps]} if apps[0].path else {"app": _summary(apps[0])}
        print(json.dumps({"file": str(file), "valid": True, **summaries,
                          "diagnostics": [d.as_json() for d in diagnostics]}, indent=2))
        return
    _print_diagnostics(diagnostics)
    warnings = sum(1 for d in diagnostics if d.severity is Severity.WARNING)
    for loaded in apps:
        a = loaded.app
        name = repr(a.name) if a.name else "(no name: pass --app or set `name:`)"
        out.print(f"{file}: valid. App {name}, {len(a.services)} service(s)"
                  + (f", {warnings} warning(s)" if warnings else ""), markup=False)
        for s in a.services:
            conns = ", ".join(_describe_connection(c) for c in s.connections) or "-"
            out.print(f"  {s.name:<24} {s.kind.value:<7} {conns}", markup=False)


def _describe_connection(connection: Any) -> str:
    entry = clouds.for_connection(connection)
    if entry is None:
        return f"{connection.type} (not handled by keyless)"
    return f"{entry.connection_type} {entry.identity_of(connection).describe()}"


@app.command(cls=_Command)
def schema() -> None:
    """Print the JSON Schema of porter.yaml as keyless reads it (for editor completion)."""
    document = App.model_json_schema(by_alias=True, mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "porter.yaml (v2)"
    print(json.dumps(document, indent=2))


def version_callback(value: bool) -> None:
    if value:
        print(f"keyless {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """keyless: cloud identities for Kubernetes services, without static keys."""
    # The Azure SDK logs every failed token request as a warning; keyless reports failures itself (and expects
    # some: it probes a new federated credential until it propagates). KEYLESS_DEBUG=1 shows them again.
    if not os.environ.get("KEYLESS_DEBUG"):
        logging.getLogger("azure").setLevel(logging.ERROR)


def fail(error: KeylessError) -> NoReturn:
    err.print(error.render(), markup=False)
    raise SystemExit(error.exit_code)


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning keyless errors into their message and exit code, never a traceback."""
    try:
        return fn()
    except KeylessError as exc:
        fail(exc)


def main() -> None:
    try:
        app(standalone_mode=True)
    except KeylessError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print(INTERRUPTED, markup=False)
        sys.exit(130)


# --- plan, apply, status ------------------------------------------------------------------------

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target name in the targets file.")]
AppOpt = Annotated[str | None, typer.Option("--app", help="App name (default: `name:` in porter.yaml).")]
TargetsOpt = Annotated[Path | None, typer.Option(
    "--targets", help="Targets file (default: $KEYLESS_TARGETS, else ./keyless.targets.yaml).")]
# Terraform's spelling, `--refresh=false`, taken literally; `--no-refresh` says the same.
RefreshOpt = Annotated[str, typer.Option(
    "--refresh", metavar="true|false",
    help="false: trust what keyless recorded on the service accounts against the cloud's list pages, instead of "
         "reading every binding again (EKS: no Describe per association). Default true: a full refresh.")]
NoRefreshOpt = Annotated[bool, typer.Option("--no-refresh", help="The same as --refresh=false.")]


def _refresh(value: str, no_refresh: bool) -> Any:
    """How much to read again (a plan.Refresh): --refresh=true (a full refresh), --refresh=false or --no-refresh."""
    from keyless.plan import Refresh

    spelled = value.strip().lower()
    if spelled not in ("true", "false"):
        raise UsageError(f"--refresh={value}: expected true or false", "e.g. keyless plan --refresh=false ...")
    return Refresh.FULL if spelled == "true" and not no_refresh else Refresh.NONE


def _target(name: str, targets_file: Path | None) -> tuple[str, Any]:
    from keyless.targets import targets_path

    path = targets_path(str(targets_file) if targets_file else None, os.environ)
    if not path.exists() and targets_file is None:
        where = "named by $KEYLESS_TARGETS" if os.environ.get("KEYLESS_TARGETS") else "the default targets file"
        raise InvalidInput([Diagnostic(
            Severity.ERROR, str(path), Position(1, 1), f"file not found ({where})",
            "pass --targets FILE, set KEYLESS_TARGETS, or create keyless.targets.yaml "
            "(see the README; `keyless sandbox up` writes one for the sandbox)")])
    targets = load_targets_file(path, os.environ)
    _print_diagnostics(targets.diagnostics)
    return name, targets.get(name)


def _prepared(file: Path, target_name: str, app_name: str | None, targets_file: Path | None) -> Any:
    """The app and target read and checked, and the clients of the target (nothing observed yet)."""
    from keyless import engine
    from keyless.porter import resolve_app_name

    loaded = _load(file, app_name)
    _print_diagnostics(loaded.diagnostics)
    name, target = _target(target_name, targets_file)
    resolved_app = resolve_app_name(loaded, app_name, os.environ)
    provider, kube = engine.connect(name, target)
    return engine.PlanInput(loaded, resolved_app, name, target), provider, kube


def _planned(spec: Any, provider: Any, kube: Any, refresh: Any) -> Any:
    from keyless import engine

    planned = engine.plan_app(spec, provider, kube, refresh=refresh)
    _print_diagnostics(planned.notes)
    return planned


def _plan_for(file: Path, target_name: str, app_name: str | None, targets_file: Path | None,
              refresh: Any) -> Any:
    """`refresh`: a plan.Refresh (from `_refresh`)."""
    spec, provider, kube = _prepared(file, target_name, app_name, targets_file)
    return _planned(spec, provider, kube, refresh), provider, kube, spec.target


def _show_plan(plan: Any, output: OutputFormat) -> None:
    from keyless.plan.render import render_json, render_text

    if output is OutputFormat.JSON:
        print(json.dumps(render_json(plan), indent=2))
    else:
        out.print(render_text(plan, markup=out.is_terminal), markup=out.is_terminal)


@app.command(cls=_Command)
def plan(
    target: TargetOpt,
    file: FileOpt = Path("porter.yaml"),
    app_name: AppOpt = None,
    targets: TargetsOpt = None,
    save: Annotated[Path | None, typer.Option("--out", help="Save the plan to apply it later.")] = None,
    output: FormatOpt = OutputFormat.TEXT,
    fail_on: FailOnOpt = None,
    refresh: RefreshOpt = "true",
    no_refresh: NoRefreshOpt = False,
) -> None:
    """Show what apply would change, without changing anything. Exit 3 when a preflight check blocks it,
    1 when --fail-on is given and the least-privilege audit finds something that severe."""
    planned, _, _, tgt = _plan_for(file, target, app_name, targets, _refresh(refresh, no_refresh))
    the_plan = planned.plan
    _show_plan(the_plan, output)
    failing = _audit_summary(the_plan, tgt, fail_on, file)
    if save is not None:
        from keyless.plan import planfile

        try:
            save.write_text(json.dumps(planfile.dump(the_plan), indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"--out {save}: cannot write the plan there ({exc.strerror or exc})",
                             "give a path in a directory that exists and that you may write to") from None
        err.print(f"Saved the plan to {save}. Apply it with: keyless apply {save}", markup=False)
    if the_plan.blockers:
        raise typer.Exit(3)
    if failing:
        raise typer.Exit(1)


def _confirm(auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise UsageError("apply needs confirmation, and there is no terminal to ask on",
                         "review the plan, then pass --auto-approve (as CI pipelines do)")
    if not typer.confirm("Apply these changes?"):
        err.print("Nothing applied.", markup=False)
        raise typer.Exit(0)


LockTimeoutOpt = Annotated[str, typer.Option(
    "--lock-timeout", metavar="DURATION",
    help="How long to wait while another apply of the same app and target holds its lock (e.g. 30s, 5m; 0: fail at "
         "once). Exit 4 when it is still held.")]


def _lock_timeout(value: str) -> float:
    from keyless.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"--lock-timeout {value}: {exc}", "e.g. --lock-timeout 5m, or 0 to fail at once") from None


@app.command(name="apply", cls=_Command)
def apply_command(
    plan_file: Annotated[Path | None, typer.Argument(help="A plan saved with `keyless plan --out`.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target name.")] = None,
    file: FileOpt = Path("porter.yaml"),
    app_name: AppOpt = None,
    targets: TargetsOpt = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")] = False,
    output: FormatOpt = OutputFormat.TEXT,
    fail_on: FailOnOpt = None,
    refresh: RefreshOpt = "true",
    no_refresh: NoRefreshOpt = False,
    lock_timeout: LockTimeoutOpt = "5m",
) -> None:
    """Bind each service's identity: cloud binding, then service account, then a rollout of its pods.
    A saved plan (PLAN.json) is applied without asking, as Terraform does: it was reviewed when it was saved.
    With --fail-on, nothing is applied (exit 1) when the least-privilege audit finds something that severe.
    One apply of an app on a target runs at a time (a Lease in its namespace); another waits --lock-timeout."""
    from keyless import engine
    from keyless.plan import planfile

    fresh = _refresh(refresh, no_refresh)
    timeout = _lock_timeout(lock_timeout)
    saved = None
    if plan_file is not None:
        try:
            saved = planfile.load(json.loads(plan_file.read_text()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{plan_file}: not a keyless plan file ({exc})",
                             "create one with `keyless plan --out plan.json`") from None
        if saved.blockers:
            _show_plan(saved, output)
            raise typer.Exit(3)
        name, tgt = _target(saved.target, targets)
        provider, kube = engine.connect(name, tgt)
        app_of = saved.app
    else:
        if target is None:
            raise UsageError("apply needs --target NAME (or a saved plan file)",
                             "e.g. keyless apply -f porter.yaml --target prod-eks")
        spec, provider, kube = _prepared(file, target, app_name, targets)
        name, tgt, app_of = spec.target_name, spec.target, spec.app

    def waiting(status: Any) -> None:
        err.print(f"Waiting up to {lock_timeout} for the apply lock of app {app_of!r} on {name!r}, held by "
                  f"{status.holder or 'another apply'}...", markup=False)

    # Observed under the lock: an apply that waited for another plans from what that one left.
    with engine.app_lock(kube, app_of, name, tgt.namespace, timeout=timeout, waiting=waiting) as held:
        if saved is not None:
            fresh_observed = engine.observe_saved(saved, provider, kube, tgt.namespace, refresh=fresh)
            if fresh_observed.digest() != saved.observed_digest:
                raise engine.StalePlan()
            the_plan = saved
        else:
            the_plan = _planned(spec, provider, kube, fresh).plan  # apply carries out exactly this plan
        _apply_locked(the_plan, provider, kube, tgt, held, output=output, fail_on=fail_on,
                      file=file if plan_file is None else None, ask=plan_file is None and not auto_approve)


def _apply_locked(the_plan: Any, provider: Any, kube: Any, tgt: Any, held: Any, *, output: OutputFormat,
                  fail_on: Any, file: Path | None, ask: bool) -> None:
    """The rest of apply, under the app's lock: show the plan, audit, confirm, apply, report."""
    _show_plan(the_plan, output)
    failing = _audit_summary(the_plan, tgt, fail_on, file)
    if the_plan.blockers:
        raise typer.Exit(3)
    if failing:
        err.print(f"Nothing applied: the audit failed the --fail-on {fail_on} check.", markup=False)
        raise typer.Exit(1)
    if not the_plan.changes:
        return
    _confirm(not ask)  # a saved plan was reviewed when it was made: applying it is the approval
    report = apply_with_progress(the_plan, provider, kube, err, lock=held)
    if report.failures:
        err.print(f"\n{len(report.failures)} action(s) failed:", markup=False)
        for failure in report.failures:
            err.print(f"  {failure.action.service}: {failure.action.resource.value} "
                      f"{failure.action.address}: {failure.message}", markup=False)
        err.print("Fix the cause and run apply again: it picks up where this run stopped.", markup=False)
        raise typer.Exit(1)
    out.print(f"Apply complete: {len(report.results)} change(s) applied.", markup=False)


app.command(name="deploy", help="Alias of apply.", cls=_Command)(apply_command)


# --- audit: least privilege ---------------------------------------------------------------------


class AuditFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


class FailOn(StrEnum):
    ERROR = "error"
    WARNING = "warning"


FailOnOpt = Annotated[FailOn | None, typer.Option(
    "--fail-on", help="Exit 1 when the least-privilege audit finds something at least this severe.")]


def _audit_summary(the_plan: Any, target: Any, fail_on: FailOn | None, file: Path | None) -> bool:
    """plan and apply: one audit line per connection on stderr; True when --fail-on says to stop.

    The audit never blocks on its own: when it cannot run, plan and apply go on and say so, unless
    --fail-on asked for it, in which case not knowing is treated as failing.
    """
    from keyless import engine
    from keyless.audit import FindingSeverity
    from keyless.audit.render import summary_lines
    wanted = the_plan.wanted_bindings()
    if not wanted:
        return False
    source = file or next((Path(b.source.file) for b in wanted if b.source is not None), Path("porter.yaml"))
    try:
        report = engine.audit_app(the_plan.target, target, the_plan.app, wanted)
    except KeylessError as exc:
        err.print(f"audit: not run ({exc.message})", markup=False)
        return fail_on is not None
    for line in summary_lines(report, f"keyless audit -f {source} --target {the_plan.target}"):
        err.print(line, markup=False)
    return bool(report.fails(FindingSeverity(fail_on.value) if fail_on is not None else None))


@app.command(cls=_Command)
def audit(
    target: TargetOpt,
    file: FileOpt = Path("porter.yaml"),
    app_name: AppOpt = None,
    targets: TargetsOpt = None,
    output: Annotated[AuditFormat, typer.Option("--format", help="Output format.")] = AuditFormat.TEXT,
    fail_on: FailOnOpt = None,
) -> None:
    """Check each connection's identity against least privilege (trust, permissions, scope, sharing).

    Exit 0 whatever the findings, unless --fail-on: then 1 when a finding is at least that severe.
    Exit 2 for invalid input or a target keyless cannot audit (GCP, for now).
    """
    from keyless import __version__ as version
    from keyless import engine
    from keyless.audit import FindingSeverity
    from keyless.audit.render import render_text, to_json, to_sarif
    from keyless.bindings import desired_bindings
    from keyless.porter import resolve_app_name

    loaded = _load(file, app_name)
    _print_diagnostics(loaded.diagnostics)
    name, tgt = _target(target, targets)
    resolved = resolve_app_name(loaded, app_name, os.environ)
    bindings, notes = desired_bindings(loaded, resolved, name, tgt)
    _print_diagnostics(notes)
    report = engine.audit_app(name, tgt, resolved, bindings)
    if output is AuditFormat.JSON:
        print(json.dumps(to_json(report), indent=2))
    elif output is AuditFormat.SARIF:
        root = os.environ.get("GITHUB_WORKSPACE") or os.getcwd()
        print(json.dumps(to_sarif(report, tool_version=version, root=root), indent=2))
    else:
        out.print(render_text(report), markup=False)
    if report.fails(FindingSeverity(fail_on.value) if fail_on is not None else None):
        raise typer.Exit(1)


@app.command(cls=_Command)
def render(
    target: TargetOpt,
    file: FileOpt = Path("porter.yaml"),
    app_name: AppOpt = None,
    targets: TargetsOpt = None,
    out_dir: Annotated[str | None, typer.Option(
        "--out-dir", help="Where to write (default: kubernetes.outDir, else ./keyless-manifests/<target>/).")] = None,
) -> None:
    """Write the service accounts, pod-template patches and Helm values for GitOps; change nothing in the cloud."""
    from keyless import engine
    from keyless.porter import resolve_app_name

    loaded = _load(file, app_name)
    _print_diagnostics(loaded.diagnostics)
    name, tgt = _target(target, targets)
    resolved = resolve_app_name(loaded, app_name, os.environ)
    provider, _ = engine.connect(name, tgt)
    for path in engine.render_app(engine.PlanInput(loaded, resolved, name, tgt), provider, out_dir):
        out.print(f"wrote {path}", markup=False)


@app.command(cls=_Command)
def status(
    target: TargetOpt,
    app_name: AppOpt = None,
    file: Annotated[Path | None, typer.Option("-f", "--file", help="porter.yaml, to compare with.")] = None,
    targets: TargetsOpt = None,
    output: FormatOpt = OutputFormat.TEXT,
) -> None:
    """Per service: its cloud binding, identity, service account, and drift made outside keyless."""
    from keyless import engine
    from keyless.porter import resolve_app_name

    loaded = _load(file, app_name) if file is not None else None
    name, tgt = _target(target, targets)
    if loaded is not None:
        resolved = resolve_app_name(loaded, app_name, os.environ)
    elif app_name or os.environ.get("PORTER_APP_NAME"):
        resolved = app_name or os.environ["PORTER_APP_NAME"]
    else:
        raise UsageError("status needs the app: pass --app NAME or -f porter.yaml")
    provider, kube = engine.connect(name, tgt)
    rows = engine.app_status(resolved, name, tgt, provider, kube, loaded)
    if output is OutputFormat.JSON:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"app {resolved} on {name}")
    for column in ("service", "binding", "identity", "service account", "drift"):
        # Identifiers are what people copy from here: wrapped onto more lines, never cut with "…".
        table.add_column(column, overflow="fold")
    for r in rows:
        # Text, not markup: an identity such as "rg/name [issuer ...]" is shown as it is.
        table.add_row(*(Text(value) for value in (r.service, r.binding_id or "-", r.identity or "-",
                                                  r.service_account or "-", r.drift or "none")))
    out.print(table)
    for r in rows:
        if r.principal:
            out.print(f"{r.service}: principal for direct grants: {r.principal}", markup=False)


@app.command(cls=_Command)
def doctor(output: FormatOpt = OutputFormat.TEXT) -> None:
    """Run inside a pod: report the identity each cloud SDK's default chain resolves to. Exit 1 on a problem."""
    from keyless.doctor import Verdict, run_checks

    checks = run_checks(os.environ)
    if output is OutputFormat.JSON:
        print(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        for c in checks:
            out.print(f"{c.cloud:<6} {c.verdict.value:<8} {c.summary}", markup=False)
            for key, value in c.details.items():
                out.print(f"         {key}: {value}", markup=False)
    if any(c.verdict is Verdict.ERROR for c in checks):
        raise typer.Exit(1)


# --- the control plane ---------------------------------------------------------------------------


def _free_port_or_fail(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r} does not resolve ({exc.strerror})", "use an address such as 127.0.0.1") \
            from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})",
                             "pass another --port, or stop what is using it") from None


@app.command(cls=_Command)
def serve(
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="KEYLESS_DATABASE_URL",
        help="sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB "
             "(default: SQLite in $XDG_DATA_HOME/keyless).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8400,
    targets: TargetsOpt = None,
    new_admin_token: Annotated[bool, typer.Option(
        "--new-admin-token", help="Print a new admin token even if tokens exist (lost the first one?).")] = False,
    secure_cookies: Annotated[bool, typer.Option(
        "--secure-cookies", help="Mark the session cookie Secure (when users reach keyless over HTTPS).")] = False,
    session_idle_minutes: Annotated[int, typer.Option(
        "--session-idle-minutes", min=1, max=7 * 24 * 60,
        help="A dashboard login ends after this many minutes without a request.")] = 30,
    session_hours: Annotated[int, typer.Option(
        "--session-hours", min=1, max=30 * 24,
        help="A dashboard login ends this many hours after it began, however busy.")] = 12,
    files_dir: Annotated[Path | None, typer.Option(
        "--files-dir", help="The only directory targets given through the API may name files in (kubeconfig, "
                            "outDir, caBundle); default: $XDG_DATA_HOME/keyless/files.")] = None,
) -> None:
    """Run the control plane: the REST API under /api/v1 and the dashboard, on one port.

    On first start it prints an admin token; it is shown once. Targets from --targets (else $KEYLESS_TARGETS,
    else ./keyless.targets.yaml, when present) are imported at start.
    """
    import datetime as dt
    import socket

    import uvicorn

    from keyless.server.app import create_app
    from keyless.server.auth import SessionLimits
    from keyless.server.operations import ControlPlane
    from keyless.store import Role, Store, default_files_dir
    from keyless.targets import targets_path

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"warning: serving plain HTTP on {host}: tokens and session cookies cross the network unencrypted. "
                  "Put keyless behind a TLS-terminating proxy (and use --secure-cookies), or serve on 127.0.0.1.",
                  markup=False)
    _free_port_or_fail(host, port)
    store = Store.open(database_url)
    path = targets_path(str(targets) if targets else None, os.environ)
    if path.exists():
        imported = ControlPlane(store, os.environ).import_targets(path.read_text(encoding="utf-8"), str(path),
                                                                  "keyless serve")
        out.print(f"Targets from {path}: {', '.join(t.name for t, _ in imported)}", markup=False)
    elif targets is not None:
        raise UsageError(f"{targets}: file not found", "pass an existing targets file, or leave out --targets")
    shown = host if ":" not in host else f"[{host}]"
    url = f"http://{shown}:{port}/"
    out.print(f"keyless control plane on {url}  (API: {url}api/v1, OpenAPI: {url}api/v1/openapi.json)", markup=False)
    out.print(f"Database: {store.display_url}", markup=False)
    if new_admin_token or not store.has_tokens():
        _, secret = store.create_token("first admin" if not new_admin_token else "admin", Role.ADMIN,
                                       "keyless serve")
        out.print(f"Admin token (shown once, keep it safe): {secret}", markup=False)
        out.print(f"Log in at {url}login, or call the API with `Authorization: Bearer <token>`.", markup=False)
    server = f"{socket.gethostname()}:{port}"  # stable across restarts, so a restart frees this server's own locks
    files = files_dir or default_files_dir()
    files.mkdir(parents=True, exist_ok=True, mode=0o700)
    sessions = SessionLimits(idle=dt.timedelta(minutes=session_idle_minutes),
                             lifetime=dt.timedelta(hours=session_hours))
    uvicorn.run(create_app(store, os.environ, server=server, secure_cookies=secure_cookies, files_dir=files,
                           sessions=sessions),
                host=host, port=port, log_level="warning")


# --- the operator ------------------------------------------------------------------------------

operator_app = typer.Typer(cls=_Group, help="The fleet operator: a Kubernetes controller that keeps every "
                           "KeylessApp's identities bound and repairs drift.", invoke_without_command=True)
app.add_typer(operator_app, name="operator")


@operator_app.callback()
def operator(
    ctx: typer.Context,
    targets: TargetsOpt = None,
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", "-n", help="Watch KeylessApps in this namespace (repeatable).")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", "-A", help="Watch KeylessApps in every namespace (the default without --namespace).")
    ] = False,
    refresh_interval: Annotated[str, typer.Option(
        "--refresh-interval", help="How often an app that sets no spec.refreshInterval is read back: 10m, 1h.")
    ] = "10m",
    context: Annotated[str | None, typer.Option(
        "--context", help="The kubeconfig context of the cluster holding the KeylessApps (default: the current "
                          "one, or the pod's own account).")] = None,
    liveness: Annotated[str | None, typer.Option(
        "--liveness", help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")] = None,
    lease_duration: Annotated[str, typer.Option(
        "--lease-duration", help="How long an app's lock outlives a replica that died holding it: 30s.")] = "30s",
    verbose: Annotated[bool, typer.Option("--verbose", help="Log kopf's and keyless's debug lines too.")] = False,
) -> None:
    """Run the controller: plan and apply each KeylessApp through the engine, refresh it every interval and
    repair drift, remove what keyless bound when it is deleted. `keyless operator manifests` installs it."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from keyless import engine
    from keyless.durations import parse_duration
    from keyless.kube.home import HomeCluster
    from keyless.operator.controller import OperatorOptions, run_operator
    from keyless.operator.reconcile import Reconciler
    from keyless.targets import targets_path

    if namespace and all_namespaces:
        raise UsageError("give --namespace or --all-namespaces, not both")
    try:
        interval = parse_duration(refresh_interval)
        lease = parse_duration(lease_duration)
    except ValueError as exc:
        raise UsageError(f"--refresh-interval, --lease-duration: {exc}") from None
    if lease < 1:
        raise UsageError("--lease-duration must be at least 1s", "e.g. --lease-duration 30s")
    path = targets_path(str(targets) if targets else None, os.environ)
    if not path.exists():
        raise UsageError(f"{path}: targets file not found",
                         "pass --targets FILE (in a cluster: the keyless-targets ConfigMap, mounted)")
    load_targets_file(path, os.environ)  # bad targets stop the operator here, with FILE:LINE:COL
    home = HomeCluster(context)
    holder = engine.default_holder("keyless-operator")
    reconciler = Reconciler(path, holder, home.config_map_value, lock_duration=round(lease))
    options = OperatorOptions(namespaces=tuple(namespace or ()), refresh_interval=interval, liveness=liveness)
    import logging

    # kopf's and keyless's own lines (handlers run, retries, refreshes) on stderr, as a pod's log.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpx", "botocore", "urllib3", "azure", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    where = ", ".join(options.namespaces) if options.namespaces else "all namespaces"
    err.print(f"keyless operator ({holder}) watching KeylessApps in {where}, targets from {path}", markup=False)
    asyncio.run(run_operator(reconciler, home, options))


@operator_app.command("manifests", cls=_Command)
def operator_manifests_command(
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Where the operator runs.")] = "keyless-system",
    image: Annotated[str | None, typer.Option("--image", help="The operator's container image.")] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Operator replicas.")] = 2,
) -> None:
    """Print the KeylessApp CRD, the operator's least-privilege RBAC and its Deployment, for `kubectl apply -f -`."""
    from keyless.kube.yamltext import to_yaml
    from keyless.operator.manifests import operator_manifests

    print(to_yaml(*operator_manifests(namespace, image or f"keyless:{__version__}", replicas)), end="")


# --- sandbox and demo ---------------------------------------------------------------------------

sandbox_app = typer.Typer(cls=_Group, help="The local sandbox: AWS, Azure, GCP and Kubernetes stand-ins on loopback.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


LatencyOpt = Annotated[str | None, typer.Option(
    "--latency", help="Added to every call of every front, in sandbox time: 50ms, 0.2s, 1.")]
JitterOpt = Annotated[str | None, typer.Option(
    "--jitter", help="Up to this much more per call, drawn from an RNG seeded with --fault-seed.")]
RateLimitsOpt = Annotated[str | None, typer.Option(
    "--rate-limits", help="off (the default) or realistic: each cloud's token buckets, answering as it throttles.")]
TimeScaleOpt = Annotated[float | None, typer.Option(
    "--time-scale", help="Divide every sandbox delay (latency, bucket refill, propagation) by this factor.")]
FaultRateOpt = Annotated[float | None, typer.Option(
    "--fault-rate", help="Share of calls (0-1) that fail at random: throttled, 5xx, or a write's answer lost.")]
FaultSeedOpt = Annotated[int | None, typer.Option(
    "--fault-seed", help="Seed of the random faults, jitter, propagation delays and flaps.")]
PropagationOpt = Annotated[str | None, typer.Option(
    "--propagation", help="realistic (what `sandbox up` starts with): writes reach Entra and the Pod Identity agent "
    "after seconds to minutes, and Entra flaps; off: after a fixed 1 s.")]
AgentCacheOpt = Annotated[str | None, typer.Option(
    "--agent-cache", help="How long the Pod Identity agent keeps a pod's credentials (sandbox starts with 3h; 0: "
    "none): running pods keep their old role that long after a role change.")]


def _knob_flags(latency: str | None, jitter: str | None, rate_limits: str | None, time_scale: float | None,
                fault_rate: float | None, fault_seed: int | None, propagation: str | None = None,
                agent_cache: str | None = None) -> dict[str, Any]:
    """The knob settings the flags given ask for, as the sandbox's POST /knobs takes them."""
    if rate_limits is not None and rate_limits not in ("off", "realistic"):
        raise UsageError(f"--rate-limits must be off or realistic, not {rate_limits!r}")
    if propagation is not None and propagation not in ("off", "realistic"):
        raise UsageError(f"--propagation must be off or realistic, not {propagation!r}")
    given = {"latency": latency, "jitter": jitter, "rateLimits": rate_limits, "timeScale": time_scale,
             "faultRate": fault_rate, "faultSeed": fault_seed, "propagation": propagation, "agentCache": agent_cache}
    return {key: value for key, value in given.items() if value is not None}


OPERATOR_PID_FILE = "operator.pid"
SANDBOX_OPERATOR_CONTEXT = "keyless-operator@sandbox-eks"


def _sandbox_operator_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / OPERATOR_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    from keyless.sandbox.control import process_alive

    return pid if process_alive(pid) else None


def _start_sandbox_operator(directory: Path, env: Mapping[str, str]) -> tuple[int, bool]:
    """Install the operator in the sandbox's EKS cluster as `keyless operator manifests` says (its Deployment aside:
    the replica runs here, as a background process) and start it as its own service account; (pid, started now)."""
    import subprocess

    from keyless.kube.home import HomeCluster
    from keyless.kube.yamltext import to_yaml
    from keyless.operator.manifests import OPERATOR_NAME, operator_manifests
    from keyless.sandbox.stack import EKS_CONTEXT

    running_pid = _sandbox_operator_pid(directory)
    if running_pid is not None:
        return running_pid, False
    namespace = "keyless-system"
    admin = HomeCluster(EKS_CONTEXT, env=env)
    try:
        admin.apply_manifests([m for m in operator_manifests(namespace, f"keyless:{__version__}")
                               if m["kind"] != "Deployment"], field_manager="kubectl")
        token = admin.service_account_token(namespace, OPERATOR_NAME, 7 * 24 * 3600)
        kubeconfig = directory / "operator.kubeconfig"
        kubeconfig.write_text(to_yaml(admin.kubeconfig_for(SANDBOX_OPERATOR_CONTEXT, token)), encoding="utf-8")
        kubeconfig.chmod(0o600)
    finally:
        admin.close()
    # Its own context first; the targets' contexts (keyless@sandbox-*) from the sandbox's kubeconfig.
    process_env = {**os.environ, **env, "KUBECONFIG": os.pathsep.join([str(kubeconfig), env["KUBECONFIG"]])}
    with (directory / "operator.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "keyless", "operator", "--context", SANDBOX_OPERATOR_CONTEXT,
             "--targets", env["KEYLESS_TARGETS"], "--all-namespaces"],
            env=process_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=directory)
    (directory / OPERATOR_PID_FILE).write_text(f"{process.pid}\n")
    return process.pid, True


def _stop_sandbox_operator(directory: Path) -> int | None:
    from keyless.sandbox.control import stop_process

    pid = _sandbox_operator_pid(directory)
    (directory / OPERATOR_PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return None
    stop_process(pid, timeout=20.0)
    return pid


@sandbox_app.command("up", cls=_Command)
def sandbox_up(latency: LatencyOpt = None, jitter: JitterOpt = None, rate_limits: RateLimitsOpt = None,
               time_scale: TimeScaleOpt = None, fault_rate: FaultRateOpt = None, fault_seed: FaultSeedOpt = None,
               propagation: PropagationOpt = None, agent_cache: AgentCacheOpt = None,
               operator: Annotated[bool, typer.Option(
                   "--operator", help="Also install `keyless operator` in sandbox-eks and run one replica.")] = False,
               ) -> None:
    """Start the sandbox in the background (or find the running one) and print how to use it.

    The knob flags shape every front (EKS, IAM, STS, ARM, Entra, GCP, Kubernetes); given to a running sandbox, they
    are applied to it. `keyless sandbox knobs` shows and changes them later. With --operator, the KeylessApp CRD and
    the operator's RBAC are installed in sandbox-eks and one replica runs in the background, as its own service
    account (log: operator.log in the state directory); `keyless sandbox down` stops it too."""
    from keyless.sandbox import control

    knobs = _knob_flags(latency, jitter, rate_limits, time_scale, fault_rate, fault_seed, propagation,
                        agent_cache)
    directory = control.state_dir(os.environ)
    state, started = control.up(directory, knobs)
    out.print(("Started" if started else "Already running:") + f" the keyless sandbox (pid {state.pid}).",
              markup=False)
    if knobs and not started:
        out.print("Applied the knobs given to it: " + json.dumps(knobs), markup=False)
    if operator:
        pid, started_operator = _start_sandbox_operator(directory, state.env)
        out.print(("Started" if started_operator else "Already running:") + f" keyless operator (pid {pid}), "
                  f"watching KeylessApps in sandbox-eks; log: {directory / 'operator.log'}", markup=False)
    out.print(f"Point your shell at it with:  eval \"$(keyless sandbox env)\"   (state in {directory})",
              markup=False)


@sandbox_app.command("knobs", cls=_Command)
def sandbox_knobs(latency: LatencyOpt = None, jitter: JitterOpt = None, rate_limits: RateLimitsOpt = None,
                  time_scale: TimeScaleOpt = None, fault_rate: FaultRateOpt = None, fault_seed: FaultSeedOpt = None,
                  propagation: PropagationOpt = None, agent_cache: AgentCacheOpt = None) -> None:
    """Show every front's knobs (latency, rate limits, time scale, propagation, agent cache, faults) as JSON; with
    flags, change them on every front first."""
    from keyless.sandbox import control

    knobs = _knob_flags(latency, jitter, rate_limits, time_scale, fault_rate, fault_seed, propagation,
                        agent_cache)
    state = control.require(control.state_dir(os.environ))
    print(json.dumps(control.set_knobs(state, knobs) if knobs else control.get_knobs(state), indent=2))


@sandbox_app.command("calls", cls=_Command)
def sandbox_calls(
    reset: Annotated[bool, typer.Option("--reset", help="Set every counter back to zero (after showing them).")]
    = False,
) -> None:
    """Show the calls each front served, per operation as its cloud names it (ListPodIdentityAssociations,
    GET federatedIdentityCredentials, iam.projects.serviceAccounts.getIamPolicy, patch deployments)."""
    from keyless.sandbox import control

    state = control.require(control.state_dir(os.environ))
    counts = control.calls(state)
    for front, found in counts.items():
        out.print(f"{front}: {found['total']} calls", markup=False)
        for operation, count in found["operations"].items():
            out.print(f"  {count:>7}  {operation}", markup=False)
    if reset:
        control.calls(state, reset=True)
        out.print("(counters reset)", markup=False)


@sandbox_app.command("env", cls=_Command)
def sandbox_env() -> None:
    """Print `export` lines that point the SDKs, kubeconfig and keyless at the running sandbox."""
    import shlex

    from keyless.sandbox import control

    state = control.require(control.state_dir(os.environ))
    for key, value in sorted(state.env.items()):
        print(f"export {key}={shlex.quote(value)}")


@sandbox_app.command("down", cls=_Command)
def sandbox_down() -> None:
    """Stop the sandbox, and print the `unset` line that undoes `eval "$(keyless sandbox env)"`."""
    from keyless.sandbox import control

    directory = control.state_dir(os.environ)
    operator_pid = _stop_sandbox_operator(directory)
    if operator_pid is not None:
        out.print(f"Stopped keyless operator (pid {operator_pid}).", markup=False)
    stopped = control.down(directory)
    if stopped is None:
        out.print("The sandbox was not running.", markup=False)
        return
    out.print("Stopped the sandbox. If your shell ran `eval \"$(keyless sandbox env)\"`, undo it with:", markup=False)
    out.print(f"  {control.unset_line(stopped)}", markup=False)


NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="The pods' namespace.")]
ContextOpt = Annotated[str | None, typer.Option(
    "--context", help="sandbox-eks, sandbox-aks or sandbox-gke (default: whichever cluster runs the pod).")]


@sandbox_app.command("exec", cls=_Command)
def sandbox_exec(
    pod: Annotated[str, typer.Argument(help="Pod name (`keyless sandbox pods` lists them).")],
    command: Annotated[list[str], typer.Argument(help="Command to run, after `--`; `keyless` is this keyless.")],
    namespace: NamespaceOpt = "shop",
    context: ContextOpt = None,
) -> None:
    """Run a command with the environment and token files one of the sandbox's pods would see.

    Options go before `--`, on either side of POD: keyless sandbox exec POD -n shop -- keyless doctor"""
    from keyless.sandbox import control

    state = control.require(control.state_dir(os.environ))
    result = control.exec_in_pod(state, namespace, pod, command, context=context)
    raise typer.Exit(result.returncode)


@sandbox_app.command("pods", cls=_Command)
def sandbox_pods() -> None:
    """List the pods of the sandbox's clusters, with the command line that runs `keyless doctor` in each."""
    from keyless.sandbox import control

    pods = control.list_pods(control.require(control.state_dir(os.environ)))
    if not pods:
        out.print(f"No pods yet: {control.NO_PODS_HINT}.", markup=False)
        return
    out.print(f"{'NAME':<40} {'NAMESPACE':<12} {'CONTEXT':<12} {'PHASE':<10} SERVICE", markup=False)
    for p in pods:
        out.print(f"{p.name:<40} {p.namespace:<12} {p.context:<12} {p.phase:<10} {p.service or '-'}", markup=False)
    running = next((p for p in pods if p.phase == "Running"), None)
    if running is not None:
        out.print(f"\nProve an identity from inside one:  {running.exec_line()}", markup=False)


@sandbox_app.command("deploy", cls=_Command)
def sandbox_deploy(
    file: FileOpt = Path("porter.yaml"),
    app_name: AppOpt = None,
    namespace: NamespaceOpt = "shop",
    context: Annotated[list[str] | None, typer.Option(
        "--context", help="sandbox-eks, sandbox-aks or sandbox-gke; repeat for several (default: all three).")] = None,
) -> None:
    """Deploy the app's workloads to the sandbox's clusters as Porter would, so that apply has pods to roll."""
    from keyless.porter import resolve_app_name
    from keyless.sandbox import control

    loaded = _load(file)
    _print_diagnostics(loaded.diagnostics)
    resolved = resolve_app_name(loaded, app_name, os.environ)
    state = control.require(control.state_dir(os.environ))
    created = control.deploy_as_porter(state, resolved, loaded.app, namespace, context or ())
    for line in created:
        out.print(f"(as Porter would) deployed {line}", markup=False)
    if not created:
        out.print(f"Every workload of app {resolved!r} was already deployed.", markup=False)
    out.print(f"Next: keyless apply -f {file} --target sandbox-eks, then `keyless sandbox pods`.", markup=False)


@app.command(cls=_Command)
def demo(
    file: Annotated[Path | None, typer.Option(
        "-f", "--file", help="The app's porter.yaml (default: the example shipped with keyless, examples/porter.yaml)."
    )] = None,
) -> None:
    """Start the sandbox, apply examples/porter.yaml, and prove from inside each pod that its identity resolves."""
    from keyless.demo import run_demo

    raise typer.Exit(run_demo(file, out, err))
