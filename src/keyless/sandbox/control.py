"""Starting, finding and stopping the background sandbox process, and running a command "in" one of its pods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from keyless.errors import KeylessError
from keyless.sandbox.stack import STATE_FILE, SandboxState

START_TIMEOUT = 90.0


class SandboxError(KeylessError):
    """The sandbox is not running, did not start, or cannot do what was asked."""


def state_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("KEYLESS_SANDBOX_DIR") or ".keyless/sandbox").resolve()


def _alive(pid: int) -> bool:
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
    if not _alive(state.pid):
        return None
    try:
        httpx.get(f"{state.control_url}/health", timeout=2.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return state


def up(directory: Path) -> tuple[SandboxState, bool]:
    """Start the sandbox in the background unless it runs already; answers (state, started_now)."""
    current = running(directory)
    if current is not None:
        return current, False
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    log = (directory / "sandbox.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "keyless.sandbox", "serve", "--state-dir", str(directory)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
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


def down(directory: Path) -> bool:
    state = running(directory)
    if state is None:
        return False
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(state.pid):
        time.sleep(0.1)
    return True


def require(directory: Path) -> SandboxState:
    state = running(directory)
    if state is None:
        raise SandboxError("the sandbox is not running", "start it with `keyless sandbox up`")
    return state


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def pod_environment(state: SandboxState, namespace: str, pod: str, context: str | None = None) -> dict[str, str]:
    """What a process in the pod sees, plus the sandbox's endpoints (never keys) so SDK calls stay local."""
    response = httpx.get(f"{state.control_url}/exec-env", params=_params(namespace=namespace, pod=pod, context=context),
                         timeout=30)
    if response.status_code != 200:
        raise SandboxError(f"cannot exec in pod {namespace}/{pod}: {response.json().get('message')}")
    env: dict[str, str] = dict(state.pod_env)
    env.update(response.json())
    return env


def exec_in_pod(state: SandboxState, namespace: str, pod: str, command: Sequence[str],
                capture: bool = False, context: str | None = None) -> subprocess.CompletedProcess[str]:
    env = pod_environment(state, namespace, pod, context)
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SandboxError("no command to run", "write it after `--`, e.g. keyless sandbox exec POD -- keyless doctor")
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
