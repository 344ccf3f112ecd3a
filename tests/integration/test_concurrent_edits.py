"""Concurrent connection edits through the real server (uvicorn) on SQLite and PostgreSQL: every edit answered
200 is in the final porter.yaml, every loser of a pinned revision gets 409, and nothing answers 500."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_support import running_server

from keyless.porter import load_app
from keyless.server.app import create_app
from keyless.server.operations import ControlPlane
from keyless.store import Role, Store

pytestmark = pytest.mark.integration

CLIENTS = 20
EKS = {"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}


def porter_yaml(services: int) -> str:
    lines = ["# edited by many people at once", "name: shop", "services:"]
    for i in range(services):
        lines += [f"  - name: s{i}", "    type: worker"]
    return "\n".join(lines) + "\n"


def final_roles(store: Store) -> dict[str, str]:
    loaded = load_app(store.get_app("shop").porter_yaml.encode(), "porter.yaml", {})
    return {s.name: c.role for s in loaded.app.services for c in s.connections if hasattr(c, "role")}


def test_concurrent_edits_are_serialized_and_none_is_lost(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        plane = ControlPlane(store, {})
        plane.put_target("prod", EKS, "seed")
        plane.import_app(porter_yaml(CLIENTS), None, "prod", "seed")
        start_revision = store.get_app("shop").revision
        token = store.create_token("deployer", Role.DEPLOYER, "test")[1]
        with running_server(create_app(store, {})) as base:
            barrier = threading.Barrier(CLIENTS)

            def edit(i: int) -> tuple[int, int]:
                # Half the clients pin the revision they read (and must lose with 409 when someone went first);
                # the others let the server rebase their edit on the newest text.
                pinned = {"revision": str(start_revision)} if i % 2 else {}
                with httpx.Client(base_url=base, timeout=60, trust_env=False,
                                  headers={"Authorization": f"Bearer {token}"}) as client:
                    barrier.wait()
                    answer = client.put(f"/api/v1/apps/shop/services/s{i}/connections/awsRole",
                                        params=pinned, json={"role": f"role-{i}"})
                    return i, answer.status_code

            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(edit, range(CLIENTS)))
        statuses = {status for _, status in results}
        assert statuses <= {200, 409}, results  # never a 500
        won = {i for i, status in results if status == 200}
        assert {i for i in range(CLIENTS) if i % 2 == 0} <= won  # unpinned edits are rebased, never lost
        assert sum(1 for i in won if i % 2) <= 1  # at most one pinned edit can win its revision
        roles = final_roles(store)
        assert roles == {f"s{i}": f"role-{i}" for i in won}  # every 200 is in porter.yaml, nothing else
        assert store.get_app("shop").revision == start_revision + len(won)
        assert store.get_app("shop").porter_yaml.startswith("# edited by many people at once")
    finally:
        store.close()
