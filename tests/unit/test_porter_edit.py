"""Editing porter.yaml text: identity connections set, replaced and removed, the app's name added; every line the
edit does not concern stays byte for byte, and the result loads to the connections asked for."""

from __future__ import annotations

import difflib
import json
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from keyless.bindings import workloads
from keyless.errors import InvalidInput, KeylessError, UsageError
from keyless.porter import LoadedApp, load_app
from keyless.porter.edit import remove_connection, set_connection, with_app_name
from keyless.porter.model import (
    IDENTITY_TYPES,
    JOB_DEFAULT_NAMES,
    AwsRoleConnection,
    AzureManagedIdentityConnection,
    GcpServiceAccountConnection,
)

ROOT = Path(__file__).resolve().parents[2]
VALID_DIR = ROOT / "tests" / "data" / "valid"
# porter.edit edits the one app the control plane keeps; the multi-app form (`apps:`) is read, never edited.
VALID = sorted(p for p in VALID_DIR.glob("*.yaml") if not re.search(r"^apps:", p.read_text(), re.MULTILINE))
EXAMPLE = ROOT / "tests" / "data" / "shop-porter.yaml"
CORPUS = [*VALID, EXAMPLE, ROOT / "examples" / "porter.yaml"]
_ENV = re.compile(r"^#\s*env:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")

AWS = {"type": "awsRole", "role": "shop-api-reader"}
AZURE = {"type": "azureManagedIdentity", "identityName": "shop-api-identity", "resourceGroup": "rg-shop"}
GCP = {"type": "gcpServiceAccount", "serviceAccountEmail": "shop-api@shop-prod-1.iam.gserviceaccount.com"}
BY_TYPE = {c["type"]: c for c in (AWS, AZURE, GCP)}
MODELS: Mapping[str, Any] = {
    "awsRole": AwsRoleConnection,
    "azureManagedIdentity": AzureManagedIdentityConnection,
    "gcpServiceAccount": GcpServiceAccountConnection,
}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _env(text: str) -> dict[str, str]:
    """The environment a corpus file declares in its header (`# env: NAME=value`)."""
    found = (_ENV.match(line) for line in text.splitlines())
    return {m["name"]: m["value"] for m in found if m}


def _load(text: str, env: Mapping[str, str] | None = None) -> LoadedApp:
    return load_app(text.encode(), "porter.yaml", env if env is not None else _env(text))


def _connections(text: str, service: str, env: Mapping[str, str] | None = None) -> list[Any]:
    loaded = _load(text, env)
    return next(list(w.connections) for name, _, w, _ in workloads(loaded) if name == service)


def _changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """(lines removed, lines added) from `before` to `after`: every other line is the same, in the same order."""
    removed: list[str] = []
    added: list[str] = []
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            removed.extend(old[i1:i2])
            added.extend(new[j1:j2])
    return removed, added


def _model(connection: Mapping[str, str]) -> Any:
    return MODELS[connection["type"]].model_validate(dict(connection))


# --- set: append -------------------------------------------------------------------------------


def test_set_appends_to_the_list_after_the_last_connection_and_keeps_the_blank_line() -> None:
    text = _read(EXAMPLE)
    edited = set_connection(text, "api", GCP)
    removed, added = _changes(text, edited)
    assert removed == []
    assert added == ["      - type: gcpServiceAccount\n",
                     "        serviceAccountEmail: shop-api@shop-prod-1.iam.gserviceaccount.com\n"]
    lines = edited.splitlines()
    at = lines.index("      - type: gcpServiceAccount")
    assert lines[at - 1] == "        resourceGroup: keyless-sandbox-rg"
    assert lines[at + 2:at + 4] == ["", "  - name: worker"]  # the blank line still separates the services
    assert [c.type for c in _connections(edited, "api")] == ["awsRole", "azureManagedIdentity", "gcpServiceAccount"]
    assert _connections(edited, "api")[-1] == _model(GCP)


@pytest.mark.parametrize("connection", [AWS, AZURE, GCP], ids=lambda c: c["type"])
def test_set_creates_the_connections_list_of_a_service_without_one(connection: dict[str, str]) -> None:
    text = _read(EXAMPLE)
    edited = set_connection(text, "nightly-report", connection)
    removed, added = _changes(text, edited)
    assert removed == []
    assert added[0] == "    connections:\n"
    assert added[1] == f"      - type: {connection['type']}\n"
    assert len(added) == len(connection) + 1
    assert _connections(edited, "nightly-report") == [_model(connection)]
    lines = edited.splitlines()
    at = lines.index("    connections:", lines.index("  - name: nightly-report"))
    assert lines[at - 1] == "    ramMegabytes: 256"
    assert lines[at + len(connection) + 1:at + len(connection) + 3] == ["", "predeploy:"]


@pytest.mark.parametrize("connection", [AWS, AZURE, GCP], ids=lambda c: c["type"])
def test_set_then_remove_gives_back_the_original_text(connection: dict[str, str]) -> None:
    text = _read(EXAMPLE)
    for service in ("api", "worker", "nightly-report", "predeploy"):
        if any(c.type == connection["type"] for c in _connections(text, service)):
            continue
        edited = set_connection(text, service, connection)
        assert edited != text
        assert remove_connection(edited, service, connection["type"]) == text


# --- set: replace in place ---------------------------------------------------------------------


@pytest.mark.parametrize("connection", [
    {"type": "awsRole", "role": "arn:aws:iam::123456789012:role/multicloud-api-v2"},
    {"type": "azureManagedIdentity", "identityName": "multicloud-api-v2", "resourceGroup": "multicloud-v2"},
    {"type": "gcpServiceAccount", "serviceAccountEmail": "multicloud-v2@multicloud-prod.iam.gserviceaccount.com"},
], ids=lambda c: c["type"])
def test_set_replaces_a_connection_of_the_same_type_in_place(connection: dict[str, str]) -> None:
    text = _read(VALID_DIR / "17-all-three-clouds.yaml")
    edited = set_connection(text, "api", connection)
    removed, added = _changes(text, edited)
    fields = [k for k in connection if k != "type"]
    assert [line.split(":")[0].strip() for line in removed] == fields
    assert [line.strip() for line in added] == [f"{k}: {connection[k]}" for k in fields]
    after = _connections(edited, "api")
    assert [c.type for c in after] == ["awsRole", "azureManagedIdentity", "gcpServiceAccount"]  # order kept
    assert _model(connection) in after
    assert _connections(edited, "predeploy") == _connections(text, "predeploy")


def test_replacing_keeps_comments_and_quoting_and_drops_old_fields() -> None:
    text = textwrap.dedent("""\
        # header
        services:
          - name: api   # the API
            connections:
              # the role
              - type: awsRole    # aws
                role: "old-role"  # was old
                note: not a field of the new connection
              - type: disk
                config: {mountPath: /data}
            # after the connections
            port: 8080
        """)
    edited = set_connection(text, "api", {"type": "awsRole", "role": "new-role"})
    assert edited == textwrap.dedent("""\
        # header
        services:
          - name: api   # the API
            connections:
              # the role
              - type: awsRole    # aws
                role: "new-role"  # was old
              - type: disk
                config: {mountPath: /data}
            # after the connections
            port: 8080
        """)


def test_setting_the_same_values_changes_nothing() -> None:
    text = _read(VALID_DIR / "14-aws-role-forms.yaml")
    assert set_connection(text, "sessions", {"type": "awsRole", "role": "/app/media-sessions+rw@v2"}) == text


# --- remove --------------------------------------------------------------------------------------


@pytest.mark.parametrize("connection_type", [t.value for t in IDENTITY_TYPES])
def test_remove_takes_out_only_that_connection(connection_type: str) -> None:
    text = _read(VALID_DIR / "17-all-three-clouds.yaml")
    edited = remove_connection(text, "api", connection_type)
    removed, added = _changes(text, edited)
    assert added == []
    assert removed[0].strip() == f"- type: {connection_type}"
    assert len(removed) == len(BY_TYPE[connection_type])
    kept = [t.value for t in IDENTITY_TYPES if t.value != connection_type]
    assert [c.type for c in _connections(edited, "api")] == kept


def test_removing_the_last_connection_removes_the_key() -> None:
    text = _read(EXAMPLE)
    edited = remove_connection(text, "worker", "awsRole")
    removed, added = _changes(text, edited)
    assert added == []
    assert removed == ["    connections:\n", "      - type: awsRole\n",
                       "        role: arn:aws:iam::123456789012:role/keyless-demo-worker\n"]
    assert _connections(edited, "worker") == []


def test_removing_both_connections_of_a_service_leaves_its_other_lines() -> None:
    text = _read(EXAMPLE)
    edited = remove_connection(remove_connection(text, "api", "awsRole"), "api", "azureManagedIdentity")
    removed, added = _changes(text, edited)
    assert added == []
    assert removed[0] == "    connections:\n"
    assert len(removed) == 6
    assert _connections(edited, "api") == []


@pytest.mark.parametrize(("service", "connection_type"), [
    ("api", "gcpServiceAccount"), ("nightly-report", "awsRole"), ("predeploy", "awsRole"), ("api", "cloudSql"),
])
def test_removing_an_absent_connection_returns_the_text_unchanged(service: str, connection_type: str) -> None:
    text = _read(EXAMPLE)
    assert remove_connection(text, service, connection_type) == text


def test_other_connection_types_are_left_alone() -> None:
    text = _read(VALID_DIR / "18-cloudsql-and-disk.yaml")
    edited = set_connection(text, "uploads", AWS)
    assert [c.type for c in _connections(edited, "uploads")] == ["disk", "awsRole"]
    edited = remove_connection(edited, "api", "gcpServiceAccount")
    assert [c.type for c in _connections(edited, "api")] == ["cloudSql"]
    assert "          cloudSqlConnectionName: crm-prod-1:us-central1:crm-db\n" in edited
    assert remove_connection(text, "uploads", "awsRole") == text


# --- which workload ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "job", "key"), [
    (EXAMPLE, "predeploy", "predeploy"),
    (VALID_DIR / "05-initial-deploy.yaml", "initial-deploy", "initialDeploy"),
])
def test_jobs_are_found_by_the_name_they_go_by(path: Path, job: str, key: str) -> None:
    text = _read(path)
    edited = set_connection(text, job, AWS)
    assert _connections(edited, job) == [_model(AWS)]
    assert getattr(_load(edited).app, "initial_deploy" if key == "initialDeploy" else key).connections == [
        _model(AWS)]


def test_a_named_job_is_found_by_its_name() -> None:
    text = "services:\n  - name: api\n    type: web\npredeploy:\n  name: migrate\n  run: ./migrate\n"
    edited = set_connection(text, "migrate", AWS)
    assert edited == text + "  connections:\n    - type: awsRole\n      role: shop-api-reader\n"
    with pytest.raises(UsageError):
        set_connection(text, "predeploy", AWS)


def test_an_unknown_service_is_named_with_those_that_exist() -> None:
    with pytest.raises(UsageError) as caught:
        set_connection(_read(EXAMPLE), "web", AWS)
    assert "'web'" in caught.value.message
    assert caught.value.hint == "its services: 'api', 'worker', 'nightly-report', 'predeploy'"
    with pytest.raises(UsageError, match="'web'"):
        remove_connection(_read(EXAMPLE), "web", "awsRole")


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "services: [\n", "- name: api\n", "just a string\n", "", "# nothing but a comment\n", "a: 1\na: 2\n",
    "services: !!python/object/apply:os.system [echo]\n", "a: &x [*x]\n", "\x00\x01",
])
def test_a_document_that_is_not_a_porter_yaml_mapping_is_an_error_not_a_traceback(text: str) -> None:
    with pytest.raises((InvalidInput, UsageError)) as caught:
        set_connection(text, "api", AWS)
    assert isinstance(caught.value, KeylessError)
    assert caught.value.render()
    with pytest.raises((InvalidInput, UsageError)):
        with_app_name(text, "shop")


@pytest.mark.parametrize("connection", [
    {"type": "cloudSql", "config": "x"}, {"role": "no-type"}, {"type": "awsRole", "role": 42},
])
def test_a_connection_that_is_not_an_identity_connection_is_refused(connection: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        set_connection(_read(EXAMPLE), "api", connection)


@pytest.mark.parametrize("value", [
    "x services: []", "x: y: z", "a: b", "- c", "#x", "'q", "true", "123", "null", "~", "&anchor", "*alias", "!tag",
    "", "   ", "}{", "[1]", 'a"b', "x #y", "${KEYLESS_TEST_ROLE", "é ✓", "\t", "---", "...",
])
def test_values_are_written_as_scalars_never_as_yaml(value: str) -> None:
    text = _read(EXAMPLE)
    edited = set_connection(text, "nightly-report", {"type": "awsRole", "role": value})
    data = YAML(typ="safe", pure=True).load(edited)
    assert list(data) == ["version", "name", "build", "env", "services", "predeploy"]
    assert data["services"][2]["connections"] == [{"type": "awsRole", "role": value}]
    assert [s["name"] for s in data["services"]] == ["api", "worker", "nightly-report"]
    assert remove_connection(edited, "nightly-report", "awsRole") == text


# --- placeholders, styles, anchors -----------------------------------------------------------


def test_placeholders_survive_edits() -> None:
    text = _read(VALID_DIR / "21-env-placeholders.yaml")
    edited = set_connection(text, "api", {"type": "gcpServiceAccount",
                                          "serviceAccountEmail": "${KEYLESS_TEST_GSA}"})
    removed, added = _changes(text, edited)
    assert removed == []
    assert added == ["      - type: gcpServiceAccount\n", "        serviceAccountEmail: ${KEYLESS_TEST_GSA}\n"]
    env = {**_env(text), "KEYLESS_TEST_GSA": "shop-api@shop-prod-1.iam.gserviceaccount.com"}
    assert _connections(edited, "api", env)[-1] == _model(GCP)
    replaced = set_connection(text, "api", {"type": "awsRole", "role": "${KEYLESS_TEST_OTHER_ROLE:-shop-other}"})
    assert "        role: ${KEYLESS_TEST_OTHER_ROLE:-shop-other}\n" in replaced
    assert _connections(replaced, "api")[0] == _model({"type": "awsRole", "role": "shop-other"})
    for line in text.splitlines(keepends=True):
        if "${" in line and "KEYLESS_TEST_API_ROLE" not in line:
            assert line in replaced


def test_flow_style_documents_stay_flow_and_keep_their_line_breaks() -> None:
    text = _read(VALID_DIR / "26-flow-style.yaml")
    edited = set_connection(text, "api", AWS)
    assert edited.splitlines()[:2] == text.splitlines()[:2]
    assert edited.splitlines()[2].endswith("{type: awsRole, role: shop-api-reader}]}]}")
    assert remove_connection(edited, "api", "awsRole") == text
    assert _connections(edited, "api")[-1] == _model(AWS)


@pytest.mark.parametrize(("text", "expected"), [
    ("services:\n- name: api\n  port: 80\n",
     "services:\n- name: api\n  port: 80\n  connections:\n  - type: awsRole\n    role: shop-api-reader\n"),
    ("services:\n    -   name: api\n        port: 80\n",
     "services:\n    -   name: api\n        port: 80\n        connections:\n"
     "            -   type: awsRole\n                role: shop-api-reader\n"),
])
def test_new_lines_follow_the_documents_indentation(text: str, expected: str) -> None:
    assert set_connection(text, "api", AWS) == expected


def test_windows_line_endings_are_kept() -> None:
    text = _read(EXAMPLE).replace("\n", "\r\n")
    edited = set_connection(text, "worker", GCP)
    assert "\n" not in edited.replace("\r\n", "")
    assert remove_connection(edited, "worker", "gcpServiceAccount") == text


def test_an_aliased_connections_list_is_copied_before_it_is_changed() -> None:
    text = _read(VALID_DIR / "20-anchors-and-merge-keys.yaml")  # both services use `connections: *role`
    edited = set_connection(text, "api", {"type": "awsRole", "role": "fleet-api-writer"})
    assert _connections(edited, "api") == [_model({"type": "awsRole", "role": "fleet-api-writer"})]
    assert _connections(edited, "worker") == _connections(text, "worker")
    removed, _ = _changes(text, edited)
    assert removed == ["    connections: *role\n"]
    edited = remove_connection(text, "worker", "awsRole")
    assert _connections(edited, "worker") == []
    assert _connections(edited, "api") == _connections(text, "api")


def test_a_connections_list_from_a_merge_key_is_hidden_when_emptied() -> None:
    text = textwrap.dedent("""\
        x-base: &base
          connections:
            - type: awsRole
              role: base-role
        services:
          - <<: *base
            name: api
        """)
    edited = remove_connection(text, "api", "awsRole")
    assert _connections(edited, "api") == []
    assert "      role: base-role\n" in edited
    edited = set_connection(text, "api", GCP)
    assert [c.type for c in _connections(edited, "api")] == ["awsRole", "gcpServiceAccount"]
    assert edited.startswith(text.split("services:")[0])


# --- the app's name --------------------------------------------------------------------------------


def test_with_app_name_adds_the_name_first_after_the_leading_comments() -> None:
    text = "# shop\n# a comment block\n\nversion: v2\nservices:\n  - name: api\n"
    expected = "# shop\n# a comment block\n\nname: shop\nversion: v2\nservices:\n  - name: api\n"
    assert with_app_name(text, "shop") == expected


@pytest.mark.parametrize("path", [EXAMPLE, VALID_DIR / "21-env-placeholders.yaml"], ids=["named", "placeholder"])
def test_with_app_name_leaves_a_named_document_unchanged(path: Path) -> None:
    text = _read(path)
    assert with_app_name(text, "other") == text


def test_with_app_name_fills_an_empty_name_and_the_result_loads() -> None:
    text = "name:\nservices:\n  - name: api\n    type: web\n"
    edited = with_app_name(text, "shop")
    assert edited == "name: shop\nservices:\n  - name: api\n    type: web\n"
    assert _load(edited).app.name == "shop"
    lines = _read(EXAMPLE).splitlines(keepends=True)
    unnamed = "".join(line for line in lines if line != "name: shop\n")
    assert [line[:2] for line in lines[:2]] == ["# ", "# "]
    assert lines[2] == "version: v2\n"
    assert with_app_name(unnamed, "shop") == "".join([*lines[:2], "name: shop\n", *lines[2:3], *lines[4:]])
    assert _load(with_app_name(unnamed, "shop")).app.name == "shop"


# --- property: set then remove gives back the text ------------------------------------------------


def _aliased_connections(text: str) -> set[str]:
    """Services whose `connections` is an alias (`connections: *x`): editing one copies the list, so the text
    cannot come back to the alias."""
    root = YAML(typ="rt", pure=True).load(text)
    seen: dict[int, int] = {}
    for service in root.get("services") or []:
        value = service.get("connections")
        if value is not None:
            seen[id(value)] = seen.get(id(value), 0) + 1
    anchored = {id(v) for v in root.values()}
    return {s["name"] for s in root.get("services") or []
            if s.get("connections") is not None
            and (seen[id(s["connections"])] > 1 or id(s["connections"]) in anchored)}


def _cases() -> list[tuple[Path, str, str]]:
    """(file, service, connection type the service does not have) over the corpus."""
    found = []
    for path in CORPUS:
        text = _read(path)
        aliased = _aliased_connections(text)
        for name, _, workload, _ in workloads(_load(text)):
            if name in aliased:
                continue
            present = {c.type for c in workload.connections}
            found.extend((path, name, t.value) for t in IDENTITY_TYPES if t.value not in present)
    return found


CASES = _cases()
# What a person can type into a one-line field: no controls but tab, no line or paragraph separators, no BOM.
FIELD_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff")
                     | st.just("\t"), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), data=st.data())
def test_set_then_remove_round_trips_on_the_corpus(case: tuple[Path, str, str], data: st.DataObject) -> None:
    path, service, connection_type = case
    text = _read(path)
    fields = [k for k in BY_TYPE[connection_type] if k != "type"]
    connection = {"type": connection_type, **{k: data.draw(FIELD_TEXT, label=k) for k in fields}}
    edited = set_connection(text, service, connection)
    assert edited != text
    assert remove_connection(edited, service, connection_type) == text


def test_the_property_covers_every_corpus_file_but_the_aliased_one() -> None:
    assert {p for p, _, _ in CASES} == set(CORPUS) - {VALID_DIR / "20-anchors-and-merge-keys.yaml"}
    assert len(CASES) > 60


def _data(text: str) -> Any:
    """The document as plain data, with aliases expanded into copies (so that changing one changes one)."""
    return json.loads(json.dumps(YAML(typ="safe", pure=True).load(text), default=str))


def _workload_data(document: dict[str, Any], service: str) -> dict[str, Any]:
    for item in document.get("services") or []:
        if item.get("name") == service:
            found: dict[str, Any] = item
            return found
    for key, default in JOB_DEFAULT_NAMES.items():
        if key in document and (document[key].get("name") or default) == service:
            job: dict[str, Any] = document[key]
            return job
    raise AssertionError(service)


ALL_WORKLOADS = [(path, name) for path in CORPUS for name, _, _, _ in workloads(_load(_read(path)))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(ALL_WORKLOADS), connection_type=st.sampled_from([t.value for t in IDENTITY_TYPES]),
       data=st.data())
def test_an_edit_changes_exactly_that_connection_and_nothing_else(
    place: tuple[Path, str], connection_type: str, data: st.DataObject
) -> None:
    path, service = place
    text = _read(path)
    fields = [k for k in BY_TYPE[connection_type] if k != "type"]
    connection = {"type": connection_type, **{k: data.draw(FIELD_TEXT, label=k) for k in fields}}

    expected = _data(text)
    workload = _workload_data(expected, service)
    items = workload.setdefault("connections", [])
    same = [i for i, c in enumerate(items) if c.get("type") == connection_type]
    if same:
        items[same[0]] = connection
    else:
        items.append(connection)
    assert _data(set_connection(text, service, connection)) == expected

    expected = _data(text)
    workload = _workload_data(expected, service)
    kept = [c for c in workload.get("connections") or [] if c.get("type") != connection_type]
    if kept:
        workload["connections"] = kept
    else:
        workload.pop("connections", None)
    assert _data(remove_connection(text, service, connection_type)) == expected


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x85b", "a\u2028b", "a\u2029b", "\x00", "a\x1bb", "\ufeffx"])
def test_a_value_yaml_cannot_carry_on_one_line_is_refused(value: str) -> None:
    text = _read(EXAMPLE)
    with pytest.raises(UsageError, match="line break or control character"):
        set_connection(text, "worker", {"type": "awsRole", "role": value})
