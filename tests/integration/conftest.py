"""Fixtures shared by the end-to-end tests: one whole sandbox per test module, and its environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import Sandbox

from keyless.sandbox.stack import SandboxStack


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """AWS, Azure and both clusters, in this process, with short propagation delays."""
    stack = SandboxStack(tmp_path_factory.mktemp("sandbox"), association_delay=0.2, settle_seconds=1.0)
    state = stack.start()
    try:
        yield stack, state
    finally:
        stack.stop()


@pytest.fixture
def env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the SDKs, kubeconfig and keyless at the sandbox for one test; nothing else from the host leaks in."""
    _, state = sandbox
    for key, value in state.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    return state.env



@pytest.fixture(scope="module")
def operator_env(sandbox: Sandbox) -> Iterator[dict[str, str]]:
    """The sandbox's environment for a whole module whose operator replicas run in this process."""
    _, state = sandbox
    with pytest.MonkeyPatch.context() as patch:
        for key, value in state.env.items():
            patch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
            patch.delenv(key, raising=False)
        yield dict(state.env)
