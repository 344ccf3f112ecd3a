"""The Store on both databases it supports: SQLite (the default) and PostgreSQL (for teams)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update

from keyless.errors import Conflict, NotFound, UsageError
from keyless.store import ConnectionRecord, DeployActionRecord, DeployStatus, Role, ServiceRecord, Store
from keyless.store.models import ApiTokenRow, AppLockRow, Base
from keyless.store.store import LOCK_STALE_AFTER, hash_token


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    try:
        yield opened
    finally:
        opened.close()


def _services(role: str = "api-role") -> list[ServiceRecord]:
    return [ServiceRecord("api", "web", (ConnectionRecord("awsRole", {"role": role}),)),
            ServiceRecord("worker", "worker", ())]


# --- schema ----------------------------------------------------------------------------------------


def test_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert "alembic_version" in inspect(store.engine).get_table_names()


def test_opening_again_is_a_no_op_and_keeps_the_data(database_url: str) -> None:
    first = Store.open(database_url)
    first.create_app("shop", "services: []\n", [], None, "alice")
    first.close()
    second = Store.open(database_url)
    assert second.get_app("shop").porter_yaml == "services: []\n"
    second.close()


def test_a_url_that_is_not_a_database_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a database URL"):
        Store("not a url")
    with pytest.raises(UsageError, match="not supported"):
        Store("mysql://u:p@localhost/db")


def test_an_unreachable_postgres_is_a_usage_error_without_the_password() -> None:
    with pytest.raises(UsageError) as caught:
        Store.open("postgresql+psycopg://keyless:s3cret@127.0.0.1:1/nothing?connect_timeout=2")
    assert "cannot open the database" in caught.value.message
    assert "s3cret" not in caught.value.message


def test_timestamps_come_back_in_utc(store: Store) -> None:
    app = store.create_app("shop", "x: 1\n", [], None, "alice")
    assert app.created_at.tzinfo is not None
    assert abs(app.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert store.get_app("shop").updated_at.utcoffset() == dt.timedelta(0)


# --- tokens ----------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_can_be_revoked(store: Store) -> None:
    assert not store.has_tokens()
    record, secret = store.create_token("ci", Role.DEPLOYER, "alice")
    assert store.has_tokens()
    assert secret.startswith("kl_")
    assert len(secret) > 40
    with store.engine.connect() as connection:
        stored = connection.execute(select(ApiTokenRow.token_hash, ApiTokenRow.prefix)).all()
    assert stored == [(hash_token(secret), secret[:8])]
    assert all(secret not in str(value) for row in stored for value in row)

    found = store.authenticate(secret)
    assert found is not None
    assert found.role is Role.DEPLOYER
    assert found.last_used_at is not None
    assert store.authenticate(secret + "x") is None
    assert store.authenticate("") is None

    store.revoke_token(record.id, "alice")
    assert store.authenticate(secret) is None
    assert store.list_tokens()[0].revoked_at is not None
    with pytest.raises(NotFound):
        store.revoke_token(999, "alice")
    assert [e.action for e in store.audit_events("token")] == ["token.revoke", "token.create"]


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.DEPLOYER)
    assert Role.ADMIN.allows(Role.VIEWER)
    assert Role.DEPLOYER.allows(Role.VIEWER)
    assert not Role.DEPLOYER.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.DEPLOYER)


def test_the_secret_is_made_once(store: Store) -> None:
    assert store.secret("csrf-key") == store.secret("csrf-key")
    assert store.secret("csrf-key") != store.secret("other")


# --- targets and apps --------------------------------------------------------------------------------


def test_targets_create_update_and_unchanged(store: Store) -> None:
    settings = {"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}
    _, created = store.put_target("prod", "aws", settings, "alice")
    assert created
    _, created = store.put_target("prod", "aws", settings, "bob")
    assert not created
    record, _ = store.put_target("prod", "aws", {**settings, "namespace": "web"}, "bob")
    assert record.settings["namespace"] == "web"
    events = store.audit_events("target/prod")
    assert [(e.action, e.actor) for e in events] == [("target.update", "bob"), ("target.create", "alice")]
    assert events[0].before == settings
    assert events[0].after == {**settings, "namespace": "web"}


def test_a_target_in_use_cannot_be_deleted(store: Store) -> None:
    store.put_target("prod", "aws", {"cloud": "aws"}, "alice")
    store.create_app("shop", "services: []\n", [], "prod", "alice")
    with pytest.raises(Conflict, match="shop"):
        store.delete_target("prod", "alice")
    store.update_app("shop", actor="alice", action="app.target", subject="app/shop", target_name=None,
                     set_target=True)
    store.delete_target("prod", "alice")
    with pytest.raises(NotFound):
        store.get_target("prod")


def test_apps_keep_their_text_services_and_connections(store: Store) -> None:
    text = "# the shop\nname: shop\nservices: []\n"
    store.create_app("shop", text, _services(), None, "alice")
    app = store.get_app("shop")
    assert app.porter_yaml == text
    assert app.revision == 1
    assert [s.name for s in app.services] == ["api", "worker"]
    api = app.service("api")
    assert api is not None
    assert api.connection("awsRole") == ConnectionRecord("awsRole", {"role": "api-role"})
    with pytest.raises(Conflict, match="already exists"):
        store.create_app("shop", text, [], None, "bob")
    with pytest.raises(NotFound, match="does not exist"):
        store.get_app("nope")


def test_updates_bump_the_revision_and_refuse_a_stale_one(store: Store) -> None:
    store.create_app("shop", "a\n", _services(), None, "alice")
    updated = store.update_app("shop", actor="bob", action="connection.change", subject="app/shop/service/api",
                               expected_revision=1, porter_yaml="b\n", services=_services("other-role"))
    assert updated.revision == 2
    with pytest.raises(Conflict, match="changed since you loaded it"):
        store.update_app("shop", actor="carol", action="app.update", subject="app/shop", expected_revision=1,
                         porter_yaml="c\n", services=[])
    assert store.get_app("shop").porter_yaml == "b\n"
    event = store.audit_events("app/shop/service/api")[0]
    assert event.actor == "bob"
    assert event.action == "connection.change"
    assert event.before is not None
    assert event.after is not None
    assert event.before["connections"]["api"] == [{"type": "awsRole", "role": "api-role"}]
    assert event.after["connections"]["api"] == [{"type": "awsRole", "role": "other-role"}]


def test_audit_log_prefix_selects_one_app_only(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    store.create_app("shop2", "a\n", [], None, "alice")
    store.create_app("sh_p", "a\n", [], None, "alice")
    assert [e.subject for e in store.audit_events("app/shop")] == ["app/shop"]
    assert [e.subject for e in store.audit_events("app/sh_p")] == ["app/sh_p"]
    assert len(store.audit_events(limit=2)) == 2
    newest = store.audit_events()[0]
    assert [e.subject for e in store.audit_events(before_id=newest.id)] == ["app/shop2", "app/shop"]


def test_deleting_an_app_removes_its_deploys(store: Store) -> None:
    store.create_app("shop", "a\n", _services(), None, "alice")
    deploy = store.create_deploy("shop", "prod", "alice", DeployStatus.PLANNED)
    store.delete_app("shop", "alice")
    with pytest.raises(NotFound):
        store.get_deploy(deploy.id)


# --- deploys and the per-app lock --------------------------------------------------------------------


def test_one_active_deploy_per_app(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    store.create_app("blog", "a\n", [], None, "alice")
    first = store.create_deploy("shop", "prod", "alice", DeployStatus.PLANNING)
    with pytest.raises(Conflict) as held:
        store.create_deploy("shop", "prod", "bob", DeployStatus.PLANNING)
    assert f"deploy #{first.id} by alice" in held.value.message
    with pytest.raises(Conflict):
        store.delete_app("shop", "alice")
    other = store.create_deploy("blog", "prod", "bob", DeployStatus.PLANNING)  # another app: fine
    assert other.status is DeployStatus.PLANNING
    # A plan to review holds no lock.
    assert store.create_deploy("shop", "prod", "bob", DeployStatus.PLANNED).status is DeployStatus.PLANNED
    done = store.finish_deploy(first.id, DeployStatus.SUCCEEDED, "2 change(s) applied")
    assert done.finished_at is not None
    assert done.status is DeployStatus.SUCCEEDED
    assert store.create_deploy("shop", "prod", "bob", DeployStatus.PLANNING).requested_by == "bob"


def test_racing_deploys_of_one_app_let_exactly_one_through(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    barrier = threading.Barrier(6)
    won: list[int] = []
    refused: list[str] = []

    def attempt(who: str) -> None:
        barrier.wait()
        try:
            won.append(store.create_deploy("shop", "prod", who, DeployStatus.PLANNING).id)
        except Conflict as exc:
            refused.append(exc.message)

    threads = [threading.Thread(target=attempt, args=(f"user{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert len(refused) == 5
    assert all("already being deployed" in m for m in refused)
    # The refused attempts left no deploy behind.
    assert [d.id for d in store.list_deploys("shop")] == won


def test_applying_a_plan_takes_the_lock_and_refuses_a_changed_app(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    planned = store.create_deploy("shop", "prod", "alice", DeployStatus.PLANNED, plan={"format": 1},
                                  plan_text="Plan: 1 to create")
    started = store.start_planned(planned.id, "bob")
    assert started.status is DeployStatus.APPLYING
    assert started.started_at is not None
    with pytest.raises(Conflict, match="only a planned deploy"):
        store.start_planned(planned.id, "bob")
    store.finish_deploy(planned.id, DeployStatus.SUCCEEDED, "ok")

    stale = store.create_deploy("shop", "prod", "alice", DeployStatus.PLANNED)
    store.update_app("shop", actor="carol", action="app.update", subject="app/shop", porter_yaml="b\n")
    with pytest.raises(Conflict, match="changed since deploy"):
        store.start_planned(stale.id, "alice")


def test_progress_is_recorded_in_order(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    deploy = store.create_deploy("shop", "prod", "alice", DeployStatus.PLANNING)
    store.set_deploy_plan(deploy.id, {"format": 1}, "Plan: 2 to create", 2, DeployStatus.APPLYING)
    now = dt.datetime.now(dt.UTC)
    for seq, ok in ((2, False), (1, True)):
        store.record_action(deploy.id, DeployActionRecord(seq, "api", "cloud-binding", "create", f"a{seq}", ok,
                                                          "done" if ok else "AccessDenied", 0.5, now))
    got = store.get_deploy(deploy.id)
    assert got.status is DeployStatus.APPLYING
    assert got.total_actions == 2
    assert [(a.seq, a.ok) for a in got.actions] == [(1, True), (2, False)]
    assert got.seconds is not None
    assert got.seconds >= 0
    # The listing leaves the actions out but still counts them (it used to say 0 done, 0 failed).
    [listed] = store.list_deploys("shop")
    assert (listed.done, listed.failed, listed.actions) == (2, 1, ())


def test_a_lock_whose_server_died_is_taken_over(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    dead = store.create_deploy("shop", "prod", "alice", DeployStatus.APPLYING)
    long_ago = dt.datetime.now(dt.UTC) - LOCK_STALE_AFTER - dt.timedelta(seconds=5)
    with store.engine.begin() as connection:
        connection.execute(update(AppLockRow).values(heartbeat_at=long_ago))
    fresh = store.create_deploy("shop", "prod", "bob", DeployStatus.PLANNING)
    assert store.get_deploy(dead.id).status is DeployStatus.INTERRUPTED
    assert store.get_deploy(fresh.id).status is DeployStatus.PLANNING


def test_interrupt_abandoned_frees_apps_but_not_live_deploys(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    store.create_app("blog", "a\n", [], None, "alice")
    dead = store.create_deploy("shop", "prod", "alice", DeployStatus.APPLYING)
    live = store.create_deploy("blog", "prod", "alice", DeployStatus.APPLYING)
    long_ago = dt.datetime.now(dt.UTC) - LOCK_STALE_AFTER - dt.timedelta(seconds=5)
    with store.engine.begin() as connection:
        connection.execute(update(AppLockRow).where(AppLockRow.deploy_id == dead.id).values(heartbeat_at=long_ago))
    assert store.interrupt_abandoned() == [dead.id]
    assert store.get_deploy(live.id).status is DeployStatus.APPLYING
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT deploy_id FROM app_locks")).scalars().all() == [live.id]


def test_the_migrations_go_down_and_up_again(store: Store) -> None:
    from alembic import command
    from alembic.config import Config

    from keyless.store.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert {"apps", "deploys", "api_tokens", "audit_events", "app_locks"} <= tables


def test_the_url_picks_the_driver_keyless_ships(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("postgresql"):
        url, driver = database_url.replace("postgresql+psycopg://", "postgresql://", 1), "psycopg"
    else:
        url, driver = f"sqlite:///{tmp_path / 'not' / 'yet' / 'there.db'}", "pysqlite"  # the folder is made
    opened = Store.open(url)
    try:
        assert opened.engine.dialect.driver == driver
        assert opened.list_apps() == []
        assert ":keyless@" not in opened.display_url  # a password is never shown
    finally:
        opened.close()


def test_a_restarted_server_frees_its_own_locks_at_once_and_no_one_elses(store: Store) -> None:
    store.create_app("shop", "a\n", [], None, "alice")
    store.create_app("blog", "a\n", [], None, "alice")
    mine = store.create_deploy("shop", "prod", "alice", DeployStatus.APPLYING, server="host-a:8400")
    theirs = store.create_deploy("blog", "prod", "alice", DeployStatus.APPLYING, server="host-b:8400")
    # host-a crashed mid-deploy and starts again: its heartbeats are fresh, but the deploy died with it.
    assert store.interrupt_abandoned("host-a:8400") == [mine.id]
    assert store.get_deploy(mine.id).status is DeployStatus.INTERRUPTED
    assert store.get_deploy(theirs.id).status is DeployStatus.APPLYING  # another live server's deploy
    again = store.create_deploy("shop", "prod", "alice", DeployStatus.APPLYING, server="host-a:8400")
    assert again.status is DeployStatus.APPLYING  # the app is free for the restarted server at once


# --- apps handed to the operator -----------------------------------------------------------------------------


def test_a_handover_is_kept_replaced_and_forgotten_each_in_the_audit_log(store: Store) -> None:
    store.create_app("shop", "services: []\n", [], None, "alice")
    store.create_app("other", "services: []\n", [], None, "alice")
    assert store.get_handover("shop") is None
    first = store.record_handover("shop", target_name="prod", namespace="web", revision=1, refresh_interval=None,
                                  suspend=False, actor="bob")
    assert (first.target_name, first.namespace, first.revision, first.handed_by) == ("prod", "web", 1, "bob")
    again = store.record_handover("shop", target_name="prod", namespace="web", revision=2, refresh_interval="1m",
                                  suspend=True, actor="carol")
    assert store.get_handover("shop") == again
    assert (again.revision, again.refresh_interval, again.suspend) == (2, "1m", True)
    assert set(store.handovers()) == {"shop"}
    assert store.forget_handover("shop", "dave") == again
    assert store.forget_handover("shop", "dave") is None
    assert store.get_handover("shop") is None
    events = [(e.action, e.actor, (e.before or {}).get("revision"), (e.after or {}).get("revision"))
              for e in store.audit_events("app/shop") if e.action.startswith("operator.")]
    assert events == [("operator.takeback", "dave", 2, None), ("operator.handover", "carol", 1, 2),
                      ("operator.handover", "bob", None, 1)]
    with pytest.raises(NotFound):
        store.get_handover("missing")


def test_a_handover_goes_with_its_app(store: Store) -> None:
    store.create_app("shop", "services: []\n", [], None, "alice")
    store.record_handover("shop", target_name="prod", namespace="web", revision=1, refresh_interval=None,
                          suspend=False, actor="bob")
    store.delete_app("shop", "alice")
    assert store.handovers() == {}
