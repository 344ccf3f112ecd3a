"""The server's log: one JSON object per line on stderr for each request and each deploy's start and finish."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from keyless.errors import CloudError
from keyless.server.app import create_app
from keyless.server.auth import ServerState
from keyless.server.eventlog import EventLog
from keyless.store import DeployStatus, Role, Store

EKS = {"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}
PORTER_YAML = "name: shop\nservices:\n  - name: api\n    type: web\n    port: 8080\n"


class SteppingClock:
    """Each reading is 0.25 s after the one before: durations are known without reading the wall clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def unreachable(name: str, target: Any) -> Any:
    raise CloudError(f"cannot reach the cloud of target {name!r}", "check the network")


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[TestClient, ServerState, io.StringIO, dict[Role, str]]]:
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    stream = io.StringIO()
    events = EventLog(stream, clock=SteppingClock(), now=lambda: dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    app = create_app(store, {}, connector=unreachable, events=events)
    server: ServerState = app.state.keyless
    server.plane.put_target("prod", EKS, "test")
    server.plane.import_app(PORTER_YAML, None, "prod", "test")
    secrets = {role: store.create_token(f"{role.value}-bot", role, "test")[1] for role in Role}
    try:
        with TestClient(app) as client:
            yield client, server, stream, secrets
    finally:
        store.close()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line is a whole JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_request_is_one_json_line_with_the_callers_name_and_never_the_token(logged: Any) -> None:
    client, _, stream, secrets = logged
    assert client.get("/api/v1/apps", headers={"Authorization": f"Bearer {secrets[Role.VIEWER]}"}).status_code == 200
    assert client.post("/api/v1/apps/shop/plan",
                       headers={"Authorization": f"Bearer {secrets[Role.VIEWER]}"}).status_code == 403
    assert client.get("/api/v1/apps?x=1", headers={"Authorization": "Bearer kl_wrong"}).status_code == 401
    assert client.get("/healthz").status_code == 200

    logged_lines = lines(stream)
    assert logged_lines == [
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "request", "method": "GET", "path": "/api/v1/apps",
         "status": 200, "ms": 250.0, "caller": "viewer-bot"},
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "request", "method": "POST",
         "path": "/api/v1/apps/shop/plan", "status": 403, "ms": 250.0, "caller": "viewer-bot"},
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "request", "method": "GET", "path": "/api/v1/apps",
         "status": 401, "ms": 250.0},
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "request", "method": "GET", "path": "/healthz",
         "status": 200, "ms": 250.0},
    ]
    for secret in secrets.values():
        assert secret not in stream.getvalue()


def test_a_dashboard_request_names_the_logged_in_token(logged: Any) -> None:
    client, _, stream, secrets = logged
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    client.post("/login", data={"token": secrets[Role.DEPLOYER], "csrf": csrf, "next": "/"}, follow_redirects=False)
    assert client.get("/apps/shop").status_code == 200
    last = lines(stream)[-1]
    assert (last["path"], last["status"], last["caller"]) == ("/apps/shop", 200, "deployer-bot")
    assert secrets[Role.DEPLOYER] not in stream.getvalue()


def test_each_deploy_logs_its_start_and_finish(logged: Any) -> None:
    _, server, stream, _ = logged
    record = server.runner.plan_in_background("shop", None, "deployer-bot (token kl_ab…)")
    server.runner.wait(record.id)
    assert server.store.get_deploy(record.id).status is DeployStatus.FAILED
    deploys = [e for e in lines(stream) if e["event"].startswith("deploy.")]
    assert deploys == [
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "deploy.start", "deploy": record.id, "kind": "plan",
         "app": "shop", "target": "prod", "requestedBy": "deployer-bot (token kl_ab…)"},
        {"time": "2030-01-02T03:04:05.000+00:00", "event": "deploy.finish", "deploy": record.id, "kind": "plan",
         "app": "shop", "status": "failed", "seconds": 0.25},
    ]


def test_an_unknown_route_answers_with_a_hint_worth_reading(logged: Any) -> None:
    client, _, _, secrets = logged
    answer = client.get("/api/v1/nothing-here", headers={"Authorization": f"Bearer {secrets[Role.VIEWER]}"})
    assert answer.status_code == 404
    assert "openapi.json" in answer.json()["hint"]
    no_plan = client.get("/api/v1/deploys/999", headers={"Authorization": f"Bearer {secrets[Role.VIEWER]}"})
    assert no_plan.json()["hint"]  # NotFound always says where to look


def test_an_error_without_a_hint_leaves_the_key_out(logged: Any) -> None:
    client, _, _, secrets = logged
    big = client.put("/api/v1/apps/shop/porter.yaml", content=b"#" * (1024 * 1024 + 1),
                     headers={"Authorization": f"Bearer {secrets[Role.ADMIN]}", "content-type": "application/yaml"})
    assert big.status_code == 422
    assert "at most 1048576 are accepted" in big.json()["error"]
    assert "hint" not in big.json()
    assert "hint" not in big.json()["problems"][0]
