"""The sandbox's process control without a sandbox: where its state lives, what `exec` runs, what `down` undoes."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from keyless.cli import app
from keyless.demo import EXAMPLE
from keyless.sandbox import control
from keyless.sandbox.stack import SandboxState

ROOT = Path(__file__).resolve().parents[2]


def test_the_state_lives_in_the_users_xdg_state_directory_whatever_the_working_directory() -> None:
    assert control.state_dir({"HOME": "/home/ann", "XDG_STATE_HOME": "/var/ann"}) == Path("/var/ann/keyless/sandbox")
    assert control.state_dir({"HOME": "/home/ann"}) == Path("/home/ann/.local/state/keyless/sandbox")
    # The XDG spec: a relative XDG_STATE_HOME is invalid and ignored.
    assert control.state_dir({"HOME": "/home/ann", "XDG_STATE_HOME": "state"}) == \
        Path("/home/ann/.local/state/keyless/sandbox")


def test_keyless_sandbox_dir_overrides_the_state_directory(tmp_path: Path) -> None:
    env = {"HOME": "/home/ann", "XDG_STATE_HOME": "/var/ann", "KEYLESS_SANDBOX_DIR": str(tmp_path / "sb")}
    assert control.state_dir(env) == tmp_path / "sb"


def test_keyless_in_a_pod_is_this_keyless_whatever_the_pods_path() -> None:
    assert control.pod_command(["--", "keyless", "doctor"]) == [sys.executable, "-P", "-m", "keyless", "doctor"]
    assert control.pod_command(["keyless"]) == [sys.executable, "-P", "-m", "keyless"]
    assert control.pod_command(["env"]) == ["env"]
    assert control.pod_command(["--"]) == []


def test_down_prints_what_undoes_sandbox_env() -> None:
    state = SandboxState(pid=1, control_url="http://127.0.0.1:1", env={"KUBECONFIG": "k", "AWS_REGION": "r"},
                         pod_env={})
    assert control.unset_line(state) == "unset AWS_REGION KUBECONFIG"


def test_a_pod_line_is_a_command_that_reaches_it() -> None:
    pod = control.SandboxPod("shop-api-1", "shop", "sandbox-eks", "Running", "shop/api")
    assert pod.exec_line() == "keyless sandbox exec shop-api-1 -n shop --context sandbox-eks -- keyless doctor"
    assert control.pods_hint([]) == control.NO_PODS_HINT
    assert control.pods_hint([pod]).endswith(pod.exec_line())


def test_the_packaged_example_is_the_repositorys() -> None:
    assert EXAMPLE.read_bytes() == (ROOT / "examples" / "porter.yaml").read_bytes()


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sandbox", "down"], env={"KEYLESS_SANDBOX_DIR": str(tmp_path / "none")})
    assert result.exit_code == 0
    assert "not running" in result.stdout


def test_bad_knob_flags_exit_2_before_anything_starts(tmp_path: Path) -> None:
    env = {"KEYLESS_SANDBOX_DIR": str(tmp_path / "sandbox")}
    for flags, message in ((["--rate-limits", "fast"], "--rate-limits must be off or realistic"),
                           (["--latency", "soon"], "not a duration"),
                           (["--fault-rate", "1.5"], "between 0 and 1"),
                           (["--time-scale", "0"], "timeScale must be a number > 0")):
        result = CliRunner().invoke(app, ["sandbox", "up", *flags], env=env)
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "sandbox").exists()  # nothing was started


def test_knobs_without_a_running_sandbox_say_how_to_start_it(tmp_path: Path) -> None:
    env = {"KEYLESS_SANDBOX_DIR": str(tmp_path / "sandbox")}
    for words in (["sandbox", "knobs"], ["sandbox", "calls"], ["sandbox", "knobs", "--latency", "50ms"]):
        result = CliRunner().invoke(app, words, env=env)
        assert result.exit_code == 1
        assert "keyless sandbox up" in result.output
