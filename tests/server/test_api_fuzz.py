"""Property-based requests from the API's own OpenAPI document (schemathesis + hypothesis): no server error.

Bad input never produces a traceback: whatever the generated path, query or body, the API answers with a
status below 500 and, for an error, JSON with a message a person can read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyless.server.app import create_app
from keyless.server.operations import ControlPlane
from keyless.store import Role, Store

PORTER_YAML = "name: shop\nservices:\n  - name: api\n    type: web\n    port: 8080\n"
SEEN: list[tuple[str, int, str]] = []  # (who, status, path) of every generated request
GKE = {"cloud": "gcp", "project": "my-project", "location": "us-central1", "cluster": "prod", "namespace": "shop"}


def _document() -> dict[str, Any]:
    from keyless.server.app import create_app as build

    return build(Store.open("sqlite://"), {}).openapi()


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def client(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Store]]:
    # The GKE target is never reached: with no Google credentials to be found, a cloud call fails at once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path_factory.mktemp("adc") / "missing.json"))
        yield from _client(module_database_url)


def _client(module_database_url: str) -> Iterator[tuple[TestClient, Store]]:
    store = Store.open(module_database_url)
    plane = ControlPlane(store, {})
    plane.put_target("gke", GKE, "seed")
    plane.import_app(PORTER_YAML, None, "gke", "seed")
    with TestClient(create_app(store, {}), raise_server_exceptions=False) as test_client:
        yield test_client, store
    store.close()


def _body(case: Any) -> dict[str, Any]:
    if case.body is None or isinstance(case.body, schemathesis.core.NotSet):
        return {}
    media = case.media_type or "application/json"
    if media == "application/json":
        return {"content": json.dumps(case.body), "headers": {"content-type": media}}
    content = case.body if isinstance(case.body, str | bytes) else json.dumps(case.body)
    return {"content": content, "headers": {"content-type": media}}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_no_generated_request_makes_the_server_fail(client: tuple[TestClient, Store], operation: str) -> None:
    test_client, store = client

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=OPERATIONS[operation].as_strategy(), who=st.sampled_from(["admin", "nobody"]))
    def check(case: Any, who: str) -> None:
        body = _body(case)
        # A fresh token each time: a generated DELETE /tokens/{id} may well revoke the one used before.
        secret = store.create_token("fuzz", Role.ADMIN, "test")[1]
        auth = {"Authorization": f"Bearer {secret}"} if who == "admin" else {}
        headers = {**(case.headers or {}), **body.pop("headers", {}), **auth}
        response = test_client.request(case.method, case.formatted_path, params=case.query or None,
                                       headers=headers, **body)
        where = f"{case.method} {case.formatted_path} {case.query}: {response.status_code} {response.text[:300]}"
        SEEN.append((who, response.status_code, case.formatted_path))
        assert response.status_code < 500, where
        if response.status_code >= 400:
            payload = response.json()
            assert isinstance(payload, dict), where
            assert payload.get("error"), where
            assert payload.get("hint", "omitted") != "", where  # a hint is worth reading, or left out

    check()


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 30
    assert "PUT /api/v1/apps/{app}/services/{service}/connections/{type}" in OPERATIONS

def test_the_generated_requests_reach_the_handlers() -> None:
    """Not every request stops at authentication: the fuzzing exercises the routes themselves."""
    if not SEEN:
        pytest.skip("run with the fuzz tests above")
    assert any(status not in (401, 403) for who, status, _ in SEEN if who == "admin")
    # Without a token, only /healthz answers.
    assert {status for who, status, path in SEEN if who == "nobody" and path != "/healthz"} == {401}
