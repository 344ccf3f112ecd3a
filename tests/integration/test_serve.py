"""`keyless serve` as a person starts it: a real process on a real port, SQLite by default, a first admin token."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(home: Path, *args: str) -> subprocess.Popen[str]:
    """`keyless serve` in its own process; what it prints goes to a file named after its pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYLESS_", "AWS_", "AZURE_"))}
    env |= {"XDG_DATA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log = (home / f"serve-{time.monotonic_ns()}.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "keyless", "serve", *args], env=env, cwd=home,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return process


def _printed(process: subprocess.Popen[str]) -> str:
    path: Path = process.log_path  # type: ignore[attr-defined]
    return path.read_text()


def _finish(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    process.wait(timeout=timeout)
    return _printed(process)


def _read_until_ready(process: subprocess.Popen[str], base: str, timeout: float = 60.0) -> str:
    """Everything the server printed before it answered /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"keyless serve exited with {process.returncode}:\n{_printed(process)}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return _printed(process)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"keyless serve did not answer within {timeout}s:\n{_printed(process)}")


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_serve_starts_on_sqlite_and_prints_the_url_and_a_first_admin_token(
        tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _serve(tmp_path, "--port", str(port))
    stop.append(process)
    printed = _read_until_ready(process, base)
    assert f"{base}/" in printed
    token = re.search(r"Admin token \(shown once, keep it safe\): (kl_\S+)", printed)
    assert token, printed
    assert (tmp_path / "keyless" / "keyless.db").exists()  # SQLite in the user's data directory

    who = httpx.get(f"{base}/api/v1/whoami", headers={"Authorization": f"Bearer {token.group(1)}"})
    assert who.status_code == 200
    assert who.json()["role"] == "admin"
    assert httpx.get(f"{base}/api/v1/apps").status_code == 401
    login = httpx.get(f"{base}/", follow_redirects=False)
    assert login.status_code == 303
    assert login.headers["location"].startswith("/login")

    # A restart keeps the state and prints no new token (it was shown once).
    process.terminate()
    process.wait(timeout=15)
    again = _serve(tmp_path, "--port", str(port))
    stop.append(again)
    printed = _read_until_ready(again, base)
    assert "Admin token" not in printed
    assert httpx.get(f"{base}/api/v1/whoami",
                     headers={"Authorization": f"Bearer {token.group(1)}"}).status_code == 200


def test_serve_refuses_a_port_in_use_and_a_bad_database_url(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--port", str(port))
        output = _finish(result)
    assert result.returncode == 2, output
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output

    bad = _serve(tmp_path, "--port", str(_free_port()), "--database-url", "nonsense")
    output = _finish(bad)
    assert bad.returncode == 2, output
    assert "not a database URL" in output
    assert "Traceback" not in output


def test_serving_beyond_loopback_warns_that_it_is_plain_http(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--host", "0.0.0.0", "--port", str(port))
        output = _finish(result)
    assert "warning: serving plain HTTP on 0.0.0.0" in output
    assert "--secure-cookies" in output
    assert result.returncode == 2, output


def test_the_database_file_is_readable_by_its_owner_only(tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    port = _free_port()
    process = _serve(tmp_path, "--port", str(port))
    stop.append(process)
    _read_until_ready(process, f"http://127.0.0.1:{port}")
    [database] = list(tmp_path.rglob("keyless.db"))
    assert database.stat().st_mode & 0o777 == 0o600


def test_serve_imports_the_targets_file(tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    targets = tmp_path / "keyless.targets.yaml"
    targets.write_text("targets:\n  prod:\n    cloud: aws\n    region: us-east-1\n    cluster: prod\n"
                       "    namespace: shop\n")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _serve(tmp_path, "--port", str(port), "--targets", str(targets))
    stop.append(process)
    printed = _read_until_ready(process, base)
    assert "Targets from" in printed
    assert "prod" in printed
    token = re.search(r"(kl_\S+)", printed)
    assert token
    listed = httpx.get(f"{base}/api/v1/targets", headers={"Authorization": f"Bearer {token.group(1)}"}).json()
    assert [t["name"] for t in listed] == ["prod"]
