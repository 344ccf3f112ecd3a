"""Fixtures for every test directory: an empty database of each kind the store supports (SQLite, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DATABASES = ["sqlite", "postgresql"]


@contextmanager
def empty_database(kind: str, directory: Path) -> Iterator[str]:
    """The URL of an empty database: a new SQLite file, or a new schema in the test PostgreSQL (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'keyless.db'}"
        return
    base = os.environ.get("KEYLESS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("KEYLESS_TEST_POSTGRES_URL is not set (`make test` starts PostgreSQL and sets it)")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain, autocommit=True) as conn:  # fails the test when the server is not there
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with empty_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with empty_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url
