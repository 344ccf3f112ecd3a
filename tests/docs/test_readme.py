"""README.md as a script: every command line of its ```sh blocks runs, top to bottom, and exits 0.

The lines run in a fresh copy of the repository (its tracked files), one shell state carried from line
to line as in one terminal, with the sandbox standing in for the clouds: it is started once, in a
temporary KEYLESS_SANDBOX_DIR, and its variables are exported from the start. ``.venv`` in the copy is
the virtual environment running this test, as ``make demo`` would have left it. Lines that need a human,
a long-running server or a real cloud account are listed in RULES, each with its reason; names that
stand for the reader's own (a porter.yaml, a production target, a pod) are replaced by the sandbox's
(SUBSTITUTIONS).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Pod

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.prefix)
LINE_TIMEOUT = 120.0

_SH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```sh[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Rule:
    """What the test does with the README lines matching ``pattern`` instead of running them as written."""

    pattern: str
    action: Literal["skip", "replace", "known-broken"]
    reason: str
    replacement: str = ""


RULES: tuple[Rule, ...] = (
    Rule(r"make demo\b.*", "replace",
         "make demo's install step builds the .venv this test runs from (and needs a package index); the copy's "
         ".venv is that venv, so this runs what `make demo` runs once installed",
         ".venv/bin/keyless demo"),
    Rule(r"make test\b.*", "skip", "it is the test suite this test belongs to"),
    Rule(r"gcloud iam roles create .*", "skip", "creates a role in a real Google Cloud project; the sandbox has no "
                                               "gcloud"),
    Rule(r"keyless serve\b.*", "skip",
         "a long-running server waiting for a browser; tests/integration/test_serve.py and test_dashboard.py drive it"),
    Rule(r"curl .*127\.0\.0\.1:8400.*", "skip", "talks to the `keyless serve` above, with the token it printed"),
)

# Names in the README that stand for the reader's own things, and what stands in for them here.
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r"--target prod-(eks|aks|gke)\b", r"--target sandbox-\1"),
    (r"-f porter\.yaml\b", "-f examples/porter.yaml"),
)


@dataclass(frozen=True)
class Line:
    number: int
    text: str  # continuation lines joined


def readme_lines(text: str) -> list[Line]:
    """Every command line of the README's ```sh blocks, with its line number, in order."""
    found: list[Line] = []
    for block in _SH_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start("body")) + 1
        pending: list[str] = []
        start = 0
        for offset, raw in enumerate(block.group("body").splitlines()):
            line = raw.removeprefix(block.group("indent"))
            if not pending:
                start = first + offset
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
            if line.endswith("\\"):
                pending.append(line[:-1])
                continue
            found.append(Line(start, " ".join(p.strip() for p in [*pending, line])))
            pending = []
    return found


def rule_for(line: Line) -> Rule | None:
    for rule in RULES:
        if re.fullmatch(rule.pattern, _without_comment(line.text)):
            return rule
    return None


def _without_comment(command: str) -> str:
    return command.split("  #", 1)[0].strip()


def test_every_rule_names_a_line_the_readme_has() -> None:
    # A rule left behind after the README changed would hide nothing, but says something false.
    commands = [_without_comment(line.text) for line in readme_lines(README.read_text())]
    assert len(commands) >= 10
    for rule in RULES:
        assert any(re.fullmatch(rule.pattern, c) for c in commands), f"no README line matches {rule.pattern!r}"


def test_continuation_lines_are_one_command() -> None:
    lines = readme_lines("```sh\n# a comment\nfoo \\\n  --bar \\\nbaz\nqux\n```\n")
    assert [(line.number, line.text) for line in lines] == [(3, "foo --bar baz"), (6, "qux")]


# --- running it -----------------------------------------------------------------------------------


@dataclass
class Session:
    """One terminal: a fresh copy of the repository and the shell state carried from line to line."""

    directory: Path
    state: Path
    env: dict[str, str]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        script = (f"source {shlex.quote(str(self.state))}\ncd {shlex.quote(str(self.directory))}\n{command}\n"
                  f"__rc=$?\nexport -p > {shlex.quote(str(self.state))}\nexit $__rc\n")
        return subprocess.run(["bash", "-c", script], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=LINE_TIMEOUT, check=False)


def _fresh_copy(destination: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    (destination / ".venv").symlink_to(VENV, target_is_directory=True)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    base = tmp_path_factory.mktemp("readme")
    clone, home = base / "keyless", base / "home"
    clone.mkdir()
    home.mkdir()
    _fresh_copy(clone)
    venv_bin = str(VENV / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin)
    env = {
        "PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb",
        "XDG_DATA_HOME": str(home / ".local/share"), "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
        "KEYLESS_SANDBOX_DIR": str(base / "sandbox"),
    }
    keyless = str(VENV / "bin" / "keyless")
    started = subprocess.run([keyless, "sandbox", "up"], env=env, capture_output=True, text=True, timeout=120,
                             check=False)
    assert started.returncode == 0, started.stderr
    try:
        exported = subprocess.run([keyless, "sandbox", "env"], env=env, capture_output=True, text=True, check=True)
        state = base / "shell-state.sh"
        state.write_text(exported.stdout)
        yield Session(clone, state, env)
    finally:
        subprocess.run([keyless, "sandbox", "down"], env=env, capture_output=True, timeout=60, check=False)


def _a_pod(session: Session) -> str:
    """A running pod of the example app's api service (what a reader finds with kubectl get pods)."""
    exported = dict(re.findall(r'^declare -x (\w+)="(.*)"$', session.state.read_text(), re.M))
    exported |= dict(re.findall(r"^export (\w+)=(\S+)$", session.state.read_text(), re.M))
    client = Client(config=KubeConfig.from_file(exported.get("KUBECONFIG", "")))
    names = sorted(str(p.metadata.name) for p in client.list(Pod, namespace="shop")
                   if p.metadata is not None and str(p.metadata.name).startswith("shop-api-"))
    assert names, "no pod of shop-api in namespace shop: the lines before should have deployed it"
    return names[0]


def test_the_readme_runs_as_written(session: Session) -> None:
    failures: list[str] = []
    now_working: list[str] = []
    for line in readme_lines(README.read_text()):
        rule = rule_for(line)
        command = line.text
        if rule is not None and rule.action == "skip":
            continue
        if command.startswith("kubectl ") and shutil.which("kubectl") is None:
            continue  # kubectl is not part of keyless's install; machines without it cannot run these lines
        if rule is not None and rule.action == "replace":
            command = rule.replacement
        for pattern, replacement in SUBSTITUTIONS:
            command = re.sub(pattern, replacement, command)
        if re.search(r"\bPOD\b", command):
            command = re.sub(r"\bPOD\b", _a_pod(session), command)
        result = session.run(command)
        where = f"README.md:{line.number}: {line.text}"
        if rule is not None and rule.action == "known-broken":
            if result.returncode == 0:
                now_working.append(f"{where}\n  works now: remove its rule ({rule.reason})")
            continue
        if result.returncode != 0:
            failures.append(f"{where}\n  ran: {command}\n  exit {result.returncode}\n"
                            f"  stdout: {result.stdout[-1500:]}\n  stderr: {result.stderr[-1500:]}")
    assert not failures, "README lines that do not run as written:\n\n" + "\n\n".join(failures)
    assert not now_working, "\n".join(now_working)
