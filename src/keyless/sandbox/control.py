"""Starting, finding and stopping the background sandbox process, and running a command "in" one of its pods."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.resources.core_v1 import Pod

from keyless.errors import KeylessError, UsageError
from keyless.porter.model import App
from keyless.sandbox.knobs import REALISTIC_AGENT_CACHE, parse_settings
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import STATE_FILE, SandboxState, admin_contexts

START_TIMEOUT = 90.0


class SandboxError(KeylessError):
    """The sandbox is not running, did not start, or cannot do what was asked."""


def state_dir(env: Mapping[str, str]) -> Path:
    """Where the one sandbox of this user keeps its state: $KEYLESS_SANDBOX_DIR, else the XDG state directory.

    One per-user place, never the working directory, so `sandbox env`, `exec` and `demo` find the running
    sandbox from any directory, and a command run elsewhere never starts a second one."""
    explicit = env.get("KEYLESS_SANDBOX_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = env.get("XDG_STATE_HOME", "").strip()
    # The XDG spec: a relative XDG_STATE_HOME is invalid and ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return base / "keyless" / "sandbox"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(directory: Path) -> SandboxState | None:
    path = directory / STATE_FILE
    try:
        state = SandboxState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    if not process_alive(state.pid):
        return None
    try:
        httpx.get(f"{state.control_url}/health", timeout=2.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return state


def check_knobs(knobs: Mapping[str, Any]) -> None:
    """Refuse bad knob settings before anything starts (UsageError, exit 2)."""
    try:
        parse_settings({k: v for k, v in knobs.items() if k != "timeScale"})
        scale = knobs.get("timeScale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError("timeScale must be a number > 0")
    except ValueError as exc:
        raise UsageError(f"bad sandbox knobs: {exc}") from None


# What a sandbox starts with unless told otherwise: writes reach the data planes as late as on the real clouds
# (credentials flap while Entra converges) and the Pod Identity agent keeps each pod's credentials for its default
# 3 hours. `keyless demo` starts its own with propagation off, so that it takes seconds.
STARTUP_KNOBS: Mapping[str, Any] = {"propagation": "realistic", "agentCache": REALISTIC_AGENT_CACHE}


def up(directory: Path, knobs: Mapping[str, Any] | None = None, *,
       defaults: Mapping[str, Any] = STARTUP_KNOBS) -> tuple[SandboxState, bool]:
    """Start the sandbox in the background unless it runs already; answers (state, started_now).

    `knobs` (the JSON POST /knobs takes) shape every front; given to a running sandbox, they are applied to it.
    `defaults` are the knobs a sandbox started now has where `knobs` says nothing (a running one keeps its own)."""
    knobs = dict(knobs or {})
    check_knobs(knobs)
    current = running(directory)
    if current is not None:
        if knobs:
            set_knobs(current, knobs)
        return current, False
    knobs = {**defaults, **knobs}
    check_knobs(knobs)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    log = (directory / "sandbox.log").open("ab")
    # -P and cwd: a module in the directory the person ran `sandbox up` from (a jwt.py, say) must not shadow a
    # library, and the background process must not keep that directory busy.
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "keyless.sandbox", "serve", "--state-dir", str(directory),
         "--knobs", json.dumps(knobs)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=directory,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxError(f"the sandbox exited while starting (code {process.returncode})",
                               f"see {directory / 'sandbox.log'}")
        state = running(directory)
        if state is not None:
            return state, True
        time.sleep(0.2)
    process.terminate()
    raise SandboxError(f"the sandbox did not start within {START_TIMEOUT:.0f}s", f"see {directory / 'sandbox.log'}")


def down(directory: Path) -> SandboxState | None:
    """Stop the sandbox; answers the state it had (None when it was not running)."""
    state = running(directory)
    if state is None:
        return None
    stop_process(state.pid)
    return state


def stop_process(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, then wait up to `timeout` for the process to end (the sandbox, or a process run beside it)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.1)


def _control(state: SandboxState, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    try:
        response = httpx.request(method, f"{state.control_url}{path}", json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise SandboxError(f"cannot reach the sandbox's control endpoint: {exc}") from None
    if response.status_code == 400:
        raise UsageError(f"bad sandbox knobs: {response.json().get('message')}")
    if response.status_code != 200:
        raise SandboxError(f"the sandbox answered {response.status_code} to {method} {path}",
                           "restart it: keyless sandbox down, then keyless sandbox up")
    answer: dict[str, Any] = response.json()
    return answer


def get_knobs(state: SandboxState) -> dict[str, Any]:
    """Every front's knobs: settings, time scale, armed faults."""
    return _control(state, "GET", "/knobs")


def set_knobs(state: SandboxState, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Apply knob settings to every front of the running sandbox."""
    return _control(state, "POST", "/knobs", knobs)


def calls(state: SandboxState, reset: bool = False) -> dict[str, Any]:
    """Calls per operation on every front (and reset the counters when asked)."""
    return _control(state, "POST", "/calls/reset") if reset else _control(state, "GET", "/calls")


def unset_line(state: SandboxState) -> str:
    """The shell line that undoes `eval "$(keyless sandbox env)"`."""
    return "unset " + " ".join(sorted(state.env))


def require(directory: Path) -> SandboxState:
    state = running(directory)
    if state is None:
        raise SandboxError("the sandbox is not running", "start it with `keyless sandbox up`")
    return state


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True, slots=True)
class SandboxPod:
    """A pod of one of the sandbox's clusters, as `sandbox pods` lists it."""

    name: str
    namespace: str
    context: str
    phase: str
    service: str  # the Porter app and service it runs ("shop/api"), or "" for a pod Porter did not make

    def exec_line(self, command: str = "keyless doctor") -> str:
        return (f"keyless sandbox exec {shlex.quote(self.name)} -n {shlex.quote(self.namespace)} "
                f"--context {shlex.quote(self.context)} -- {command}")


def list_pods(state: SandboxState) -> list[SandboxPod]:
    """Every pod of every sandbox cluster, read through each cluster's Kubernetes API as kubectl would."""
    try:
        config = KubeConfig.from_file(state.env["KUBECONFIG"])
    except (KeyError, OSError, ConfigError) as exc:
        raise SandboxError(f"cannot read the sandbox's kubeconfig ({exc})", "restart it: keyless sandbox down, up") \
            from None
    found: list[SandboxPod] = []
    for context in admin_contexts(config.contexts):
        try:
            with Client(config.get(context_name=context)) as client:
                pods = list(client.list(Pod, namespace="*"))
        except ApiError as exc:
            raise SandboxError(f"cannot list the pods of sandbox cluster {context}: {exc.status.message}") from None
        except httpx2.HTTPError as exc:
            raise SandboxError(f"cannot reach sandbox cluster {context}: {exc}",
                               "restart the sandbox: keyless sandbox down, then keyless sandbox up") from None
        for pod in pods:
            meta, status = pod.metadata, pod.status
            if meta is None or meta.name is None or meta.deletionTimestamp is not None:
                continue
            labels = meta.labels or {}
            app, service = labels.get("porter.run/app-name"), labels.get("porter.run/service-name")
            found.append(SandboxPod(meta.name, meta.namespace or "default", context,
                                    (status.phase if status is not None else None) or "Unknown",
                                    f"{app}/{service}" if app and service else ""))
    return sorted(found, key=lambda p: (p.context, p.namespace, p.name))


NO_PODS_HINT = ("the sandbox runs an app's pods only once Porter's stand-in has deployed it: run "
                "`keyless sandbox deploy -f porter.yaml` (then `keyless apply`), or `keyless demo`, which does both "
                "for examples/porter.yaml; `keyless sandbox pods` lists the pods")


def pods_hint(pods: Sequence[SandboxPod]) -> str:
    """What to exec in instead: the running pods, each with the command line that reaches it."""
    running_pods = [p for p in pods if p.phase == "Running"]
    if not running_pods:
        return NO_PODS_HINT
    return "pods in the sandbox:\n" + "\n".join(f"      {p.exec_line()}" for p in running_pods)


def pod_environment(state: SandboxState, namespace: str, pod: str, context: str | None = None) -> dict[str, str]:
    """What a process in the pod sees, plus the sandbox's endpoints (never keys) so SDK calls stay local."""
    response = httpx.get(f"{state.control_url}/exec-env", params=_params(namespace=namespace, pod=pod, context=context),
                         timeout=30)
    if response.status_code != 200:
        raise SandboxError(f"cannot exec in pod {namespace}/{pod}: {response.json().get('message')}",
                           pods_hint(list_pods(state)))
    env: dict[str, str] = dict(state.pod_env)
    env.update(response.json())
    return env


def pod_command(command: Sequence[str]) -> list[str]:
    """The argv to run: `keyless` is this keyless (this interpreter's `-m keyless`), whatever PATH the pod has.

    The pod's PATH is the sandbox process's, which need not hold the keyless of the venv the person runs."""
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if argv and argv[0] == "keyless":
        argv = [sys.executable, "-P", "-m", "keyless", *argv[1:]]
    return argv


def exec_in_pod(state: SandboxState, namespace: str, pod: str, command: Sequence[str],
                capture: bool = False, context: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = pod_command(command)
    if not argv:
        raise SandboxError("no command to run", "write it after `--`, e.g. keyless sandbox exec POD -- keyless doctor")
    env = pod_environment(state, namespace, pod, context)
    try:
        return subprocess.run(argv, env=env, check=False, text=True, capture_output=capture)
    except OSError as exc:
        raise SandboxError(f"cannot run {argv[0]!r}: {exc.strerror}") from None


def run_job(state: SandboxState, namespace: str, cronjob: str, context: str | None = None) -> str:
    response = httpx.post(f"{state.control_url}/run-job",
                          params=_params(namespace=namespace, cronjob=cronjob, context=context), timeout=60)
    if response.status_code != 200:
        raise SandboxError(f"cannot run job {namespace}/{cronjob}: {response.json().get('message')}")
    return str(response.json()["job"])


def deploy_as_porter(state: SandboxState, app_name: str, app: App, namespace: str,
                     contexts: Sequence[str] = ()) -> list[str]:
    """Create the app's Deployments and CronJobs on each sandbox cluster (all of them by default), as a Porter
    deploy would, so that `keyless apply` has pods to roll; answers what was created, by context."""
    config = KubeConfig.from_file(state.env["KUBECONFIG"])
    unknown = [c for c in contexts if c not in config.contexts]
    if unknown:
        raise SandboxError(f"no sandbox cluster for context {unknown[0]!r}",
                           f"contexts: {', '.join(sorted(config.contexts))}")
    created: list[str] = []
    for context in contexts or admin_contexts(config.contexts):
        with Client(config.get(context_name=context), namespace=namespace) as client:
            created += [f"{context}: {what}" for what in deploy_workloads(client, app_name, app, namespace)]
    return created
