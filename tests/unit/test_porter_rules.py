"""Every porter.yaml rule, one plain input at a time: what loads, what is rejected, where and with which words."""

from __future__ import annotations

import contextlib
import json
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyless.bindings import desired_bindings
from keyless.cli import app as cli
from keyless.diagnostics import Diagnostic, Position, Severity
from keyless.errors import InvalidInput
from keyless.porter import (
    AwsRoleConnection,
    AzureManagedIdentityConnection,
    GcpServiceAccountConnection,
    LoadedApp,
    ServiceType,
    load_app,
    load_apps,
    resolve_app_name,
)
from keyless.porter.loader import one_edit_apart, read_by_keyless
from keyless.porter.model import EnvVariable
from keyless.porter.placeholders import expand
from keyless.porter.yamlsource import MAX_DEPTH, read_yaml
from keyless.targets import load_targets

LoadOk = Callable[..., LoadedApp]  # the conftest fixtures
LoadErrors = Callable[..., list[Diagnostic]]


def one(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...], fragment: str) -> Diagnostic:
    found = [d for d in diagnostics if fragment in d.message or fragment in d.hint]
    listing = "\n".join(d.render() for d in diagnostics) or "(none)"
    assert len(found) == 1, f"expected one diagnostic with {fragment!r}, got:\n{listing}"
    return found[0]


def at(d: Diagnostic) -> tuple[int, int]:
    return d.position.line, d.position.column


def service(body: str, head: str = "") -> str:
    """A one-service porter.yaml; `body` is the service's fields at 4 spaces (after `- name: api`)."""
    return head + "services:\n  - name: api\n    type: web\n" + textwrap.indent(textwrap.dedent(body), "    ")


def connection(body: str) -> str:
    """A porter.yaml whose only service has one connection; `body` is its fields at 8 spaces."""
    text = "services:\n  - name: api\n    type: web\n    connections:\n      - "
    lines = textwrap.dedent(body).strip("\n").splitlines()
    return text + lines[0] + "\n" + "".join(f"        {line}\n" for line in lines[1:])


# --- every field of the reference loads ---------------------------------------------------------

FULL = """\
version: v2
name: shop
build:
  method: docker
  context: .
  dockerfile: ./Dockerfile
env:
  NODE_ENV: production
envGroups:
  - shop-secrets
predeploy:
  run: npm run migrate
initialDeploy:
  run: npm run seed
autoRollback:
  enabled: true
efsStorage:
  enabled: true
services:
  - name: api
    type: web
    run: node server.js
    port: 8080
    instances: 2
    cpuCores: 0.5
    ramMegabytes: 512
    gpuCoresNvidia: 0
    nodeGroup: general
    private: false
    disableTLS: false
    serviceMeshEnabled: true
    domains:
      - name: shop.example.com
    healthCheck: {enabled: true, httpPath: /healthz, timeoutSeconds: 1, initialDelaySeconds: 0}
    livenessCheck: {enabled: true, httpPath: /livez}
    readinessCheck: {enabled: true, httpPath: /readyz}
    startupCheck: {enabled: true, command: ./started.sh}
    autoscaling: {enabled: true, minInstances: 1, maxInstances: 4, cpuThresholdPercent: 60, memoryThresholdPercent: 70}
    terminationGracePeriodSeconds: 30
    ingressAnnotations:
      nginx.ingress.kubernetes.io/proxy-body-size: 10m
    pathRouting:
      - {path: /, port: 8080}
    env:
      PORT: "8080"
    connections:
      - {type: awsRole, role: shop-api}
      - {type: azureManagedIdentity, identityName: shop-api, resourceGroup: shop-rg}
      - {type: gcpServiceAccount, serviceAccountEmail: shop-api@shop-prod.iam.gserviceaccount.com}
  - name: nightly
    type: job
    run: npm run report
    cron: "0 3 * * *"
    allowConcurrent: false
    suspendCron: false
    timeoutSeconds: 600
"""


def test_every_field_of_the_reference_loads_without_a_warning(load_ok: LoadOk) -> None:
    loaded = load_ok(FULL)
    assert loaded.diagnostics == ()
    app = loaded.app
    assert (app.version, app.name, app.env_groups) == ("v2", "shop", ["shop-secrets"])
    assert app.build is not None
    assert app.build.dockerfile == "./Dockerfile"
    assert app.predeploy is not None
    assert app.predeploy.run == "npm run migrate"
    assert app.initial_deploy is not None
    assert app.initial_deploy.run == "npm run seed"
    assert app.auto_rollback is not None
    assert app.auto_rollback.enabled is True
    api, nightly = app.services
    assert (api.kind, api.port, api.instances, api.cpu_cores, api.ram_megabytes) == (ServiceType.WEB, 8080, 2, 0.5, 512)
    assert api.health_check is not None
    assert api.health_check.http_path == "/healthz"
    assert api.startup_check is not None
    assert api.startup_check.command == "./started.sh"
    assert api.autoscaling is not None
    assert api.autoscaling.max_instances == 4
    assert api.domains is not None
    assert api.domains[0].name == "shop.example.com"
    assert api.termination_grace_period_seconds == 30
    assert api.env == {"PORT": "8080"}
    assert [type(c) for c in api.connections] == [
        AwsRoleConnection, AzureManagedIdentityConnection, GcpServiceAccountConnection]
    assert (nightly.kind, nightly.cron, nightly.timeout_seconds) == (ServiceType.JOB, "0 3 * * *", 600)


def test_version_and_name_may_be_left_out(load_ok: LoadOk) -> None:
    app = load_ok("services:\n  - name: web\n    type: web\n").app
    assert app.version is None
    assert app.name is None


def test_disable_tls_as_porter_spells_it_loads_without_a_warning(load_ok: LoadOk) -> None:
    """Porter's web service reference spells it `disableTLS`; keyless must not call it unknown, nor
    suggest `disableTls`, a spelling Porter does not read."""
    loaded = load_ok(service("port: 8080\ndisableTLS: true\n"))
    assert [d.render() for d in loaded.diagnostics] == []


# --- unknown fields ----------------------------------------------------------------------------


def test_unknown_fields_are_kept_and_warned_at_their_key_never_fatal(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        owner: platform
        services:
          - name: api
            type: web
            replicas: 3
            healthCheck:
              enabled: true
              periodSeconds: 10
            connections:
              - type: awsRole
                role: shop-api
                sessionTags: {team: shop}
        """)
    warnings_ = [d for d in loaded.diagnostics if d.severity is Severity.WARNING]
    assert [(at(d), d.message) for d in warnings_] == [
        ((1, 1), "unknown field `owner`"),
        ((5, 5), "unknown field `replicas`"),
        ((8, 7), "unknown field `periodSeconds`"),
        ((12, 9), "unknown field `sessionTags`"),
    ]
    app = loaded.app
    assert app.model_extra == {"owner": "platform"}
    api = app.services[0]
    assert api.model_extra == {"replicas": 3}
    assert api.health_check is not None
    assert api.health_check.model_extra == {"periodSeconds": 10}
    assert api.connections[0].model_extra == {"sessionTags": {"team": "shop"}}


@pytest.mark.parametrize(("written", "meant"), [
    ("ramMegabyte", "ramMegabytes"),
    ("healthcheck", "healthCheck"),
    ("cpu_cores", "cpuCores"),
    ("terminationGracePeriod", "terminationGracePeriodSeconds"),
])
def test_unknown_field_close_to_a_known_one_gets_a_did_you_mean(load_ok: LoadOk, written: str, meant: str) -> None:
    loaded = load_ok(service(f"{written}: 1\n"))
    d = one(loaded.diagnostics, f"unknown field `{written}`")
    assert d.severity is Severity.WARNING
    assert d.hint == f"did you mean `{meant}`?"


@pytest.mark.parametrize(("text", "written", "meant", "where"), [
    (service("conections:\n  - type: awsRole\n    role: r\n"), "conections", "connections", (4, 5)),
    (service("Connections:\n  - type: awsRole\n    role: r\n"), "Connections", "connections", (4, 5)),
    (service("connectinos:\n  - type: awsRole\n    role: r\n"), "connectinos", "connections", (4, 5)),
    (connection("type: awsRole\nrole: r\nrle: x"), "rle", "role", (7, 9)),
    (connection("type: azureManagedIdentity\nidentityName: i\nresourceGroup: g\nresourceGroupp: h"),
     "resourceGroupp", "resourceGroup", (8, 9)),
    (connection("type: azureManagedIdentity\nidentityName: i\nresourceGroup: g\nidentityname: j"),
     "identityname", "identityName", (8, 9)),
    (connection("type: gcpServiceAccount\nserviceAccountEmail: a@p.iam.gserviceaccount.com\nserviceAcountEmail: b"),
     "serviceAcountEmail", "serviceAccountEmail", (7, 9)),
    ("nmae: shop\nservices:\n  - name: api\n    type: web\n", "nmae", "name", (1, 1)),
    ("services:\n  - name: api\n    type: web\nservice:\n  - name: x\n", "service", "services", (4, 1)),
    (service("tpye: worker\n"), "tpye", "type", (4, 5)),
])
def test_a_key_one_edit_away_from_a_field_keyless_acts_on_is_an_error(
        load_errors: LoadErrors, text: str, written: str, meant: str, where: tuple[int, int]) -> None:
    d = one(load_errors(text), f"unknown field `{written}`")
    assert d.severity is Severity.ERROR
    assert f"did you mean `{meant}`" in d.message
    assert at(d) == where


def test_a_misspelled_connections_key_says_it_would_unbind_the_service(load_errors: LoadErrors) -> None:
    d = one(load_errors(service("conections:\n  - type: awsRole\n    role: r\n")), "conections")
    assert "delete its binding" in d.hint


def test_a_near_miss_of_a_field_not_valid_at_that_place_stays_a_warning(load_ok: LoadOk) -> None:
    # `role` is a field of an awsRole connection, not of a service: `rol` under a service is just unknown.
    d = one(load_ok(service("rol: 1\n")).diagnostics, "unknown field `rol`")
    assert d.severity is Severity.WARNING


@pytest.mark.parametrize(("a", "b", "near"), [
    ("connections", "conections", True), ("connections", "connectoins", True), ("role", "rloe", True),
    ("role", "roles", True), ("role", "ROLE", True), ("role", "rol", True), ("name", "nmae", True),
    ("role", "rl", False), ("connections", "conectoins", False), ("type", "kind", False), ("name", "", False),
])
def test_one_edit_apart(a: str, b: str, near: bool) -> None:
    assert one_edit_apart(a, b) is near
    assert one_edit_apart(b, a) is near


def test_unknown_field_far_from_every_known_one_says_it_is_kept(load_ok: LoadOk) -> None:
    d = one(load_ok(service("zzz: 1\n")).diagnostics, "unknown field `zzz`")
    assert "keeps it" in d.hint


def test_a_real_porter_field_is_not_suggested_to_be_renamed_into_another(load_ok: LoadOk) -> None:
    """`pathRoutingConfig` is a Porter field of its own; renaming it to `pathRouting` (a list of routes) breaks
    the file for Porter, so it loads as a known field with no advice at all."""
    loaded = load_ok(service("port: 8080\npathRoutingConfig:\n  rewriteMode: rewrite-all\n"))
    assert not [d for d in loaded.diagnostics if "pathRouting" in d.message or "pathRouting" in d.hint]


# --- positions ---------------------------------------------------------------------------------


def test_positions_are_one_based_and_point_at_values_and_keys(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        name: shop
        services:
          - name: api
            type: web
            connections:
              - type: awsRole
                role: shop-api
        """)
    doc = loaded.document
    assert doc.value_at(("name",)) == Position(1, 7)
    assert doc.key_at(("name",)) == Position(1, 1)
    assert doc.value_at(("services", 0, "name")) == Position(3, 11)
    assert doc.key_at(("services", 0, "name")) == Position(3, 5)
    assert doc.value_at(("services", 0, "connections", 0, "role")) == Position(7, 15)
    assert loaded.service_position(0) == Position(3, 5)
    assert loaded.connection_position(0, 0) == Position(6, 9)
    # a path that does not exist falls back to its nearest ancestor
    assert doc.value_at(("services", 0, "port")) == Position(3, 5)


def test_an_error_about_a_value_points_at_the_value(load_errors: LoadErrors) -> None:
    errors = load_errors(connection("type: gcpServiceAccount\nserviceAccountEmail: Api@x.iam.gserviceaccount.com"))
    assert at(one(errors, "uppercase")) == (6, 30)


def test_an_error_about_an_empty_value_points_at_its_line(load_errors: LoadErrors) -> None:
    """`role:` with nothing after it: the error belongs on that line, not at the start of the next one."""
    errors = load_errors(connection("type: awsRole\nrole:\n") + "  - name: worker\n    type: worker\n")
    d = one(errors, "`role`")
    assert d.position.line == 6, d.render()


def test_an_empty_services_value_is_reported_on_its_own_line(load_errors: LoadErrors) -> None:
    d = one(load_errors("name: shop\nservices:\n\n\nbuild:\n  method: pack\n"), "`services`")
    assert d.position.line == 2, d.render()


def test_an_unclosed_quote_is_reported_where_it_opens(load_errors: LoadErrors) -> None:
    """The parser only notices at the end of the file (a line past the last); a person needs the opening line."""
    text = 'services:\n  - name: api\n    run: "node server.js\n    port: 8080\n    type: web\n'
    (d,) = load_errors(text)
    assert d.position.line == 3 or "line 3" in d.message, d.render()


# --- services ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fragment"), [
    ("Api", "service name 'Api' is not a valid name"),
    ("my_api", "service name 'my_api' is not a valid name"),
    ("-api", "service name '-api' is not a valid name"),
    ("api-", "service name 'api-' is not a valid name"),
    ("api.v2", "service name 'api.v2' is not a valid name"),
    ("'a b'", "service name 'a b' is not a valid name"),
    ("''", "service name is empty"),
    ("x" * 64, "is 64 characters long; the limit is 63"),
])
def test_service_names_must_be_kubernetes_names(load_errors: LoadErrors, name: str, fragment: str) -> None:
    d = one(load_errors(f"services:\n  - name: {name}\n    type: web\n"), fragment)
    assert at(d) == (2, 11)
    assert d.hint


@pytest.mark.parametrize("name", ["a", "api", "web-2", "42", "x" * 63])
def test_valid_service_names_load(load_ok: LoadOk, name: str) -> None:
    assert load_ok(f"services:\n  - name: '{name}'\n    type: web\n").app.services[0].name == name


def test_invalid_name_hint_suggests_a_valid_spelling(load_errors: LoadErrors) -> None:
    d = one(load_errors("services:\n  - name: Email_Worker\n    type: worker\n"), "not a valid name")
    assert "'email-worker'" in d.hint


def test_service_names_are_unique(load_errors: LoadErrors) -> None:
    errors = load_errors("""\
        services:
          - name: api
            type: web
          - name: worker
            type: worker
          - name: api
            type: worker
        """)
    d = one(errors, "used twice")
    assert at(d) == (6, 11)
    assert "first at line 2" in d.message


def test_a_service_needs_a_name(load_errors: LoadErrors) -> None:
    d = one(load_errors("services:\n  - type: web\n    port: 80\n"), "missing required field `name`")
    assert at(d) == (2, 5)
    assert d.hint


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("port", "65536", "`port` must be at most 65535"),
    ("port", "0", "`port` must be at least 1"),
    ("port", "http", "`port` must be a whole number, got 'http'"),
    ("port", "80.5", "`port` must be a whole number"),
    ("instances", "-1", "`instances` must be at least 0"),
    ("cpuCores", "0", "`cpuCores` must be greater than 0"),
    ("cpuCores", "-0.5", "`cpuCores` must be greater than 0"),
    ("cpuCores", "lots", "`cpuCores` must be a number"),
    ("ramMegabytes", "0", "`ramMegabytes` must be greater than 0"),
    ("private", "maybe", "`private` must be true or false, got 'maybe'"),
    ("terminationGracePeriodSeconds", "-1", "`terminationGracePeriodSeconds` must be at least 0"),
    ("domains", "shop.example.com", "`domains` must be a list"),
    ("healthCheck", "true", "`healthCheck` must be a mapping"),
    ("env", "A=1", "`env` must be a mapping"),
    ("run", "[node, server.js]", "`run` must be a string"),
])
def test_service_field_values_are_checked(load_errors: LoadErrors, field: str, value: str, fragment: str) -> None:
    d = one(load_errors(service(f"{field}: {value}\n")), fragment)
    assert d.position.line == 4
    assert d.position.column == 7 + len(field), d.render()


@pytest.mark.parametrize("value", ["cron", "Web", "service", "[web]"])
def test_service_type_is_web_worker_or_job(load_errors: LoadErrors, value: str) -> None:
    d = one(load_errors(f"services:\n  - name: api\n    type: {value}\n"), "`type` must be 'web', 'worker' or 'job'")
    assert at(d) == (3, 11)


def test_infinite_cpu_cores_are_rejected(load_errors: LoadErrors) -> None:
    d = one(load_errors(service("cpuCores: .inf\n")), "cpuCores")
    assert d.position.line == 4


@pytest.mark.parametrize("value", ["yes", "'true'", "false", "True"])
def test_booleans_written_as_people_write_them_load(load_ok: LoadOk, value: str) -> None:
    api = load_ok(service(f"private: {value}\n")).app.services[0]
    assert isinstance(api.private, bool)


def test_quoted_numbers_load_as_numbers(load_ok: LoadOk) -> None:
    api = load_ok(service('port: "8080"\ncpuCores: "0.25"\nramMegabytes: "256"\ninstances: "2"\n')).app.services[0]
    assert (api.port, api.cpu_cores, api.ram_megabytes, api.instances) == (8080, 0.25, 256, 2)


def test_autoscaling_and_checks_are_checked(load_errors: LoadErrors) -> None:
    errors = load_errors(service("""\
        autoscaling:
          cpuThresholdPercent: 101
          minInstances: -1
        startupCheck:
          initialDelaySeconds: -5
        """))
    assert at(one(errors, "`cpuThresholdPercent` must be at most 100")) == (5, 28)
    assert at(one(errors, "`minInstances` must be at least 0")) == (6, 21)
    assert at(one(errors, "`initialDelaySeconds` must be at least 0")) == (8, 28)


def test_each_service_item_must_be_a_mapping_and_the_message_says_so(load_errors: LoadErrors) -> None:
    """`- api` under services: the message must be about the service item, not claim that `services` (a list)
    must be a mapping, which contradicts the list error a person gets after following it."""
    d = one(load_errors("services:\n  - api\n"), "got 'api'")
    assert at(d) == (2, 5)
    assert not d.message.startswith("`services` must be a mapping"), d.render()


# --- type inference ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind", "because"), [
    ("web", ServiceType.WEB, "its name contains `web`"),
    ("api-web", ServiceType.WEB, "its name contains `web`"),
    ("mailer-wkr", ServiceType.WORKER, "its name contains `wkr`"),
    ("web-worker", ServiceType.WORKER, "its name contains `worker`"),  # the last word found wins, as in Porter
    ("nightly-job", ServiceType.JOB, "its name contains `job`"),
    ("web-job", ServiceType.JOB, "its name contains `job`"),
    ("api", ServiceType.WORKER, "its name contains none of web, worker, wkr, job (Porter's default)"),
])
def test_a_service_without_type_is_inferred_from_its_name_as_porter_does(
    load_ok: LoadOk, name: str, kind: ServiceType, because: str,
) -> None:
    loaded = load_ok(f"services:\n  - name: {name}\n    run: ./start\n")
    d = one(loaded.diagnostics, "has no `type`")
    assert d.severity is Severity.WARNING
    assert at(d) == (2, 5)
    assert f"Porter treats it as {kind.value} because {because}, and so does keyless" in d.message
    assert d.hint == f"add `type: {kind.value}` to make it explicit"
    assert loaded.app.services[0].kind is kind
    assert loaded.app.services[0].type is None


@pytest.mark.parametrize(("fields", "what"), [
    ("port: 8080\n", "port"),
    ("domains:\n  - name: a.example.com\n", "domain"),
])
def test_a_port_on_a_service_porter_will_not_serve_as_web_is_pointed_out(
    load_ok: LoadOk, fields: str, what: str,
) -> None:
    loaded = load_ok("services:\n  - name: api\n" + textwrap.indent(fields, "    "))
    d = one(loaded.diagnostics, "has no `type`")
    assert "treats it as worker" in d.message
    assert d.hint == (f"it has a {what}, yet Porter will not serve it as web: add `type: web` if it serves HTTP, "
                      "else `type: worker`")
    assert loaded.app.services[0].kind is ServiceType.WORKER


def test_a_cron_schedule_on_a_service_porter_makes_a_worker_is_a_warning(load_ok: LoadOk) -> None:
    loaded = load_ok("services:\n  - name: report\n    cron: '0 * * * *'\n")
    assert "treats it as worker" in one(loaded.diagnostics, "has no `type`").message
    d = one(loaded.diagnostics, "`cron` only applies to jobs")
    assert (d.severity, at(d)) == (Severity.WARNING, (3, 5))
    assert loaded.app.services[0].kind is ServiceType.WORKER


def test_cron_on_a_web_service_is_a_warning(load_ok: LoadOk) -> None:
    d = one(load_ok(service("port: 80\ncron: '0 * * * *'\n")).diagnostics, "`cron` only applies to jobs")
    assert d.severity is Severity.WARNING
    assert at(d) == (5, 5)


# --- connections -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "fragment", "column"), [
    ("type: awsRole", "missing required field `role`", 9),
    ("type: awsRole\nrole: ''", "`role` is empty", 15),
    ("type: awsRole\nrole: '   '", "`role` is empty", 15),
    ("type: awsRole\nrole: arn:aws-iso:iam::123456789012:role/api", "unknown AWS partition 'aws-iso'", 15),
    ("type: awsRole\nrole: arn:aws:iam::123456789012:user/bob", "is an ARN for iam:user, not an IAM role", 15),
    ("type: awsRole\nrole: arn:aws:iam::123456789012:policy/p", "is an ARN for iam:policy", 15),
    ("type: awsRole\nrole: arn:aws:sts::123456789012:assumed-role/api/s", "assumed-role session, not a role", 15),
    ("type: awsRole\nrole: arn:aws:iam:eu-west-1:123456789012:role/api", "IAM ARNs have no region", 15),
    ("type: awsRole\nrole: arn:aws:iam::1234:role/api", "is not a 12-digit AWS account ID", 15),
    ("type: awsRole\nrole: arn:aws:iam::abcdefghijkl:role/api", "is not a 12-digit AWS account ID", 15),
    ("type: awsRole\nrole: arn:aws:iam", "is not a valid ARN", 15),
    ("type: awsRole\nrole: my api role", "IAM role name 'my api role' is not valid", 15),
    ("type: awsRole\nrole: " + "r" * 65, "is not valid", 15),
    ("type: awsRole\nrole: [a, b]", "`role` must be a string", 15),
    ("type: azureManagedIdentity\nresourceGroup: rg", "missing required field `identityName`", 9),
    ("type: azureManagedIdentity\nidentityName: api-id", "missing required field `resourceGroup`", 9),
    ("type: gcpServiceAccount", "missing required field `serviceAccountEmail`", 9),
    ("type: awsrole\nrole: api", "unknown connection type 'awsrole'", 15),
    ("type: AWSRole\nrole: api", "unknown connection type 'AWSRole'", 15),
    ("type: s3\nbucket: b", "unknown connection type 's3'", 15),
])
def test_connection_rules(load_errors: LoadErrors, body: str, fragment: str, column: int) -> None:
    errors = load_errors(connection(body))
    d = one(errors, fragment)
    line = 5 if column == 9 or fragment.startswith("unknown connection") else 6
    assert at(d) == (line, column), d.render()
    assert len(errors) == 1, "\n".join(e.render() for e in errors)


def test_unknown_connection_type_suggests_the_close_one(load_errors: LoadErrors) -> None:
    d = one(load_errors(connection("type: gcpServiceAcount\nserviceAccountEmail: a@b")), "unknown connection type")
    assert "did you mean 'gcpServiceAccount'?" in d.hint
    for known in ("awsRole", "azureManagedIdentity", "gcpServiceAccount", "cloudSql", "disk"):
        assert known in d.hint


def test_a_connection_without_type_lists_the_types(load_errors: LoadErrors) -> None:
    d = one(load_errors(connection("role: shop-api")), "missing required field `type`")
    assert at(d) == (5, 9)
    for known in ("awsRole", "azureManagedIdentity", "gcpServiceAccount"):
        assert known in d.hint, f"hint lists no types: {d.hint!r}"


def test_an_empty_connection_type_is_named_as_such(load_errors: LoadErrors) -> None:
    """`type:` with no value: the message must not print Python's `None`."""
    d = one(load_errors(connection("type:\nrole: shop-api")), "type")
    assert "None" not in d.message, d.render()


@pytest.mark.parametrize("value", ["true", "1", "[awsRole]"])
def test_a_connection_type_that_is_not_a_string_is_described_in_yaml_terms(load_errors: LoadErrors, value: str) -> None:
    d = one(load_errors(connection(f"type: {value}\nrole: shop-api")), "type")
    assert "True" not in d.message, d.render()
    assert "['" not in d.message, d.render()


def test_a_connection_written_as_a_string_gets_a_message_about_the_connection(load_errors: LoadErrors) -> None:
    """`- awsRole`: the message must say the connection must be a mapping (with `type:`), not claim that
    `connections`, which is a list, must be a mapping."""
    d = one(load_errors(connection("awsRole")), "got 'awsRole'")
    assert at(d) == (5, 9)
    assert not d.message.startswith("`connections` must be a mapping"), d.render()


def test_connections_must_be_a_list(load_errors: LoadErrors) -> None:
    text = "services:\n  - name: api\n    type: web\n    connections:\n      type: awsRole\n      role: x\n"
    d = one(load_errors(text), "`connections` must be a list")
    assert "- type: awsRole" in d.hint


@pytest.mark.parametrize("ctype", ["awsRole", "azureManagedIdentity", "gcpServiceAccount", "cloudSql", "disk"])
def test_at_most_one_connection_of_each_type(load_errors: LoadErrors, ctype: str) -> None:
    fields = {
        "awsRole": "role: shop-api",
        "azureManagedIdentity": "identityName: shop-api\n  resourceGroup: shop-rg",
        "gcpServiceAccount": "serviceAccountEmail: shop-api@shop-prod.iam.gserviceaccount.com",
        "cloudSql": "config: {}",
        "disk": "config: {}",
    }[ctype]
    item = textwrap.indent(f"- type: {ctype}\n  {fields}\n", "      ")
    text = "services:\n  - name: api\n    type: web\n    connections:\n" + item + item
    first_line = 5
    second_line = first_line + item.count("\n")
    d = one(load_errors(text), f"has two {ctype} connections")
    assert at(d) == (second_line, 15)
    assert f"first at line {first_line}" in d.message
    assert d.hint


def test_one_connection_of_each_type_on_one_service_loads(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        services:
          - name: api
            type: web
            connections:
              - {type: awsRole, role: shop-api}
              - {type: azureManagedIdentity, identityName: shop-api, resourceGroup: shop-rg}
              - {type: gcpServiceAccount, serviceAccountEmail: shop-api@shop-prod.iam.gserviceaccount.com}
              - {type: cloudSql, config: {cloudSqlConnectionName: "p:r:i"}}
              - {type: disk, config: {mountPath: /data}}
        """)
    api = loaded.app.services[0]
    assert len(api.connections) == 5
    assert [type(c) for c in api.identity_connections] == [
        AwsRoleConnection, AzureManagedIdentityConnection, GcpServiceAccountConnection]


def test_the_same_role_on_two_services_is_allowed(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        services:
          - {name: api, type: web, connections: [{type: awsRole, role: shared}]}
          - {name: worker, type: worker, connections: [{type: awsRole, role: shared}]}
        """)
    assert not [d for d in loaded.diagnostics if d.severity is Severity.ERROR]


def test_predeploy_takes_at_most_one_connection_of_each_type(load_errors: LoadErrors) -> None:
    errors = load_errors("""\
        services:
          - name: api
            type: web
        predeploy:
          run: ./migrate
          connections:
            - {type: awsRole, role: migrate}
            - {type: awsRole, role: admin}
        """)
    assert one(errors, "two awsRole connections").position.line == 8


@pytest.mark.parametrize("ctype", ["cloudSql", "disk"])
def test_cloudsql_and_disk_load_with_a_note_that_keyless_leaves_them_to_porter(load_ok: LoadOk, ctype: str) -> None:
    loaded = load_ok(connection(f"type: {ctype}\nconfig:\n  anything: [1, 2]"))
    d = one(loaded.diagnostics, "not handled by keyless")
    assert d.severity is Severity.NOTE
    assert at(d) == (5, 15)
    assert d.message == f"{ctype} connection of service 'api' is not handled by keyless"
    conn = loaded.app.services[0].connections[0]
    assert conn.type == ctype
    assert loaded.app.services[0].identity_connections == []


@pytest.mark.parametrize(("role", "name", "path", "partition", "account"), [
    ("shop-api", "shop-api", "/", None, None),
    ("service-role/shop-api", "shop-api", "/service-role/", None, None),
    ("/teams/shop/shop-api", "shop-api", "/teams/shop/", None, None),
    ("arn:aws:iam::123456789012:role/shop-api", "shop-api", "/", "aws", "123456789012"),
    ("arn:aws-cn:iam::123456789012:role/a/b/shop-api", "shop-api", "/a/b/", "aws-cn", "123456789012"),
    ("arn:aws-us-gov:iam::123456789012:role/gov/shop-api", "shop-api", "/gov/", "aws-us-gov", "123456789012"),
])
def test_aws_role_forms_load(load_ok: LoadOk, role: str, name: str, path: str, partition: str | None,
                             account: str | None) -> None:
    conn = load_ok(connection(f"type: awsRole\nrole: {role}")).app.services[0].connections[0]
    assert isinstance(conn, AwsRoleConnection)
    ref = conn.role_ref
    assert (ref.name, ref.path, ref.partition, ref.account) == (name, path, partition, account)


# --- the top level -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragment", "where"), [
    ("name: shop\n", "missing required field `services`", (1, 1)),
    ("services: []\n", "`services` is empty", (1, 11)),
    ("services: api\n", "`services` must be a list", (1, 11)),
    ("services:\n  api:\n    type: web\n", "`services` must be a list", (2, 3)),
    ("version: v1\nservices: [{name: a, type: web}]\n", "`version` must be 'v2'", (1, 10)),
    ("version: 2\nservices: [{name: a, type: web}]\n", "`version` must be 'v2'", (1, 10)),
    ("name: My_App\nservices: [{name: a, type: web}]\n", "app name 'My_App' is not a valid name", (1, 7)),
    ("name: " + "a" * 32 + "\nservices: [{name: a, type: web}]\n", "the limit is 31", (1, 7)),
    ("env: A=1\nservices: [{name: a, type: web}]\n", "`env` must be a mapping", (1, 6)),
    ("env: [A=1]\nservices: [{name: a, type: web}]\n", "item 1 of `env` must be a mapping", (1, 7)),
    ("env: [{value: x}]\nservices: [{name: a, type: web}]\n", "missing required field `key`", (1, 7)),
    ("env:\n  DB:\n    host: x\nservices: [{name: a, type: web}]\n", "`DB` must be a string, got a mapping", (3, 5)),
    ("envGroups: prod\nservices: [{name: a, type: web}]\n", "`envGroups` must be a list", (1, 12)),
    ("build: {method: nixpacks}\nservices: [{name: a, type: web}]\n", "`method` must be 'docker' or 'pack'", (1, 17)),
    ("predeploy: ./migrate\nservices: [{name: a, type: web}]\n", "`predeploy` must be a mapping", (1, 12)),
])
def test_top_level_rules(load_errors: LoadErrors, text: str, fragment: str, where: tuple[int, int]) -> None:
    d = one(load_errors(text), fragment)
    assert at(d) == where, d.render()


def test_build_and_image_cannot_both_be_set(load_errors: LoadErrors) -> None:
    d = one(load_errors("""\
        build: {method: docker, context: .}
        image: {repository: ghcr.io/acme/shop, tag: v1}
        services: [{name: api, type: web}]
        """), "`build` and `image` cannot both be set")
    assert at(d) == (2, 1)
    assert d.hint


def test_build_with_a_null_image_loads(load_ok: LoadOk) -> None:
    load_ok("build: {method: pack, context: .}\nimage:\nservices: [{name: api, type: web}]\n")


def test_predeploy_name_is_checked_like_a_service_name(load_errors: LoadErrors) -> None:
    """predeploy gets its own Kubernetes service account `<app>-<name>`: the name must be a valid label."""
    errors = load_errors("predeploy:\n  name: Run_Migrations\n  run: ./migrate\nservices: [{name: api, type: web}]\n")
    assert one(errors, "Run_Migrations").position.line == 2


def test_predeploy_may_not_share_a_name_with_a_service(load_errors: LoadErrors) -> None:
    """A service named `predeploy` and the predeploy job would share the service account `<app>-predeploy`."""
    errors = load_errors("predeploy:\n  run: ./migrate\nservices:\n  - name: predeploy\n    type: worker\n")
    assert any("predeploy" in d.message for d in errors)


def test_all_errors_of_a_file_come_at_once_in_file_order(load_errors: LoadErrors) -> None:
    errors = load_errors("""\
        version: v3
        name: Shop
        services:
          - name: api
            type: web
            port: 0
            connections:
              - {type: awsRole, role: "bad role"}
              - {type: azureManagedIdentity, identityName: a/b, resourceGroup: rg}
          - name: api
            type: worker
        """)
    assert [d.position.line for d in errors] == [1, 2, 6, 8, 9, 10]


# --- app name ----------------------------------------------------------------------------------


def test_app_name_comes_from_the_flag_then_the_file_then_the_environment(load_ok: LoadOk) -> None:
    named = load_ok("name: from-file\nservices: [{name: api, type: web}]\n")
    unnamed = load_ok("services: [{name: api, type: web}]\n")
    env = {"PORTER_APP_NAME": "from-env"}
    assert resolve_app_name(named, "from-flag", env) == "from-flag"
    assert resolve_app_name(named, None, env) == "from-file"
    assert resolve_app_name(unnamed, None, env) == "from-env"
    with pytest.raises(InvalidInput) as caught:
        resolve_app_name(unnamed, None, {})
    assert "the app has no name" in caught.value.render()
    with pytest.raises(InvalidInput) as caught:
        resolve_app_name(unnamed, None, {"PORTER_APP_NAME": "Bad_Name"})
    assert "(from PORTER_APP_NAME)" in caught.value.render()


# --- placeholders ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${A}", {"A": "1"}, "1"),
    ("x-${A}-y", {"A": "1"}, "x-1-y"),
    ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ("${A:-dflt}", {}, "dflt"),
    ("${A:-}", {}, ""),
    ("${A:-dflt}", {"A": "set"}, "set"),
    ("${A:-a:-b}", {}, "a:-b"),
    ("$${A}", {}, "${A}"),
    ("$${A} ${A}", {"A": "1"}, "${A} 1"),
    ("$A and $", {}, "$A and $"),
    ("price: $5", {}, "price: $5"),
    ("${_UNDER_9}", {"_UNDER_9": "ok"}, "ok"),
])
def test_placeholder_expansion(text: str, env: dict[str, str], expected: str) -> None:
    value, problems, _ = expand(text, env)
    assert problems == []
    assert value == expected


def test_a_default_applies_when_the_variable_is_set_but_empty() -> None:
    """`${VAR:-default}` means "unset or empty" in every shell and in docker compose."""
    assert expand("${A:-dflt}", {"A": ""})[:2] == ("dflt", [])


@pytest.mark.parametrize(("text", "offset", "fragment"), [
    ("${MISSING}", 0, "environment variable MISSING is not set (used as ${MISSING})"),
    ("run ${MISSING} now", 4, "MISSING is not set"),
    ("${A", 0, "`${` is never closed"),
    ("ok ${1A}", 3, "`${1A}` is not a valid placeholder"),
    ("${}", 0, "`${}` is not a valid placeholder"),
    ("${A-B}", 0, "is not a valid placeholder"),
    ("${A B}", 0, "is not a valid placeholder"),
])
def test_placeholder_problems(text: str, offset: int, fragment: str) -> None:
    _, problems, _ = expand(text, {})
    (p,) = problems
    assert text.index(p.token) == offset
    assert fragment in p.message
    assert p.hint


def test_an_unset_variable_in_a_field_keyless_acts_on_is_an_error(load_errors: LoadErrors) -> None:
    errors = load_errors("""\
        name: ${APP_NAME}
        services:
          - name: ${SERVICE}
            type: ${TYPE}
            connections:
              - type: awsRole
                role: ${ROLE}
        predeploy:
          name: ${JOB}
          connections:
            - type: gcpServiceAccount
              serviceAccountEmail: ${GSA}@shop-prod.iam.gserviceaccount.com
        """)
    assert [(at(d), d.message.split(" (")[0]) for d in errors] == [
        ((1, 7), "environment variable APP_NAME is not set"),
        ((3, 11), "environment variable SERVICE is not set"),
        ((4, 11), "environment variable TYPE is not set"),
        ((7, 15), "environment variable ROLE is not set"),
        ((9, 9), "environment variable JOB is not set"),
        ((12, 28), "environment variable GSA is not set"),
    ]
    assert all("export" in d.hint for d in errors)


def test_an_unset_variable_in_a_field_keyless_never_reads_is_a_warning_and_kept_as_written(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        name: shop
        namespace: ${NAMESPACE}
        image:
          repository: ghcr.io/acme/shop
          tag: ${IMAGE_TAG}
        env:
          REDIS_URL: ${REDIS_URL}
        services:
          - name: api
            type: web
            run: node server.js --port ${PORT}
            env:
              - key: DATABASE_URL
                value: ${DATABASE_URL}
        """)
    warnings_ = [d for d in loaded.diagnostics if d.severity is Severity.WARNING]
    assert [(at(d), d.message) for d in warnings_ if "is not set" in d.message] == [
        ((2, 12), "environment variable NAMESPACE is not set (used as ${NAMESPACE})"),
        ((5, 8), "environment variable IMAGE_TAG is not set (used as ${IMAGE_TAG})"),
        ((7, 14), "environment variable REDIS_URL is not set (used as ${REDIS_URL})"),
        ((11, 32), "environment variable PORT is not set (used as ${PORT})"),
        ((14, 16), "environment variable DATABASE_URL is not set (used as ${DATABASE_URL})"),
    ]
    assert all("keyless does not use this field" in d.hint for d in warnings_ if "is not set" in d.message)
    app = loaded.app
    assert app.image is not None
    assert app.image.tag == "${IMAGE_TAG}"
    assert app.env == {"REDIS_URL": "${REDIS_URL}"}
    assert app.services[0].run == "node server.js --port ${PORT}"


def test_a_value_kept_as_written_that_is_not_of_its_type_is_left_out_not_rejected(load_ok: LoadOk) -> None:
    loaded = load_ok(service("port: ${PORT}\ninstances: ${REPLICAS}\nautoscaling: ${AUTOSCALING}\n"))
    assert [d.position.line for d in loaded.diagnostics if "is not set" in d.message] == [4, 5, 6]
    api = loaded.app.services[0]
    assert (api.port, api.instances, api.autoscaling) == (None, None, None)


def test_a_value_kept_as_written_does_not_hide_a_real_error(load_errors: LoadErrors) -> None:
    (d,) = load_errors(service("port: ${PORT}\ninstances: -1\n"))
    assert (at(d), "`instances` must be at least 0" in d.message) == ((5, 16), True)


def test_a_malformed_placeholder_in_a_field_keyless_never_reads_is_a_warning(load_ok: LoadOk) -> None:
    loaded = load_ok(service('run: bash -c \'for f in ${FILES[@]}; do echo "$f"; done\'\n'))
    d = one(loaded.diagnostics, "is not a valid placeholder")
    assert (d.severity, at(d)) == (Severity.WARNING, (4, 28))
    assert loaded.app.services[0].run == 'bash -c \'for f in ${FILES[@]}; do echo "$f"; done\''


@pytest.mark.parametrize(("path", "read"), [
    (("name",), True), (("services", 0, "name"), True), (("services", 3, "type"), True),
    (("services", 0, "connections", 1, "role"), True), (("predeploy", "name"), True),
    (("initialDeploy", "connections", 0, "identityName"), True),
    (("services", 0, "env", "A"), False), (("services", 0, "run"), False), (("env", 0, "value"), False),
    (("image", "tag"), False), (("build", "context"), False), (("namespace",), False), (("services", 0, "port"), False),
    (("predeploy", "run"), False), (("services", 0, "previews", "connections", 0, "role"), False),
])
def test_which_fields_keyless_reads(path: tuple[str | int, ...], read: bool) -> None:
    assert read_by_keyless(path) is read


def test_placeholder_column_in_a_quoted_value(load_ok: LoadOk) -> None:
    d = one(load_ok(service('run: "node server.js --port ${PORT}"\n')).diagnostics, "PORT")
    assert at(d) == (4, 33), d.render()


def test_placeholder_line_in_a_block_scalar(load_ok: LoadOk) -> None:
    d = one(load_ok(service("run: |\n  ./migrate\n  ./serve --port ${PORT}\n")).diagnostics, "PORT")
    assert at(d) == (6, 22), d.render()


def test_placeholder_column_in_a_quoted_value_keyless_reads(load_errors: LoadErrors) -> None:
    (d,) = load_errors(connection('type: awsRole\nrole: "arn:aws:iam::123456789012:role/${ROLE}"'))
    assert at(d) == (6, 47), d.render()


def test_a_placeholder_expands_into_the_field_and_is_then_validated(load_errors: LoadErrors, load_ok: LoadOk) -> None:
    text = service("port: ${PORT}\nconnections:\n  - type: awsRole\n    role: ${ROLE}\n")
    app = load_ok(text, {"PORT": "9000", "ROLE": "arn:aws:iam::123456789012:role/api"}).app
    assert app.services[0].port == 9000
    errors = load_errors(text, {"PORT": "http", "ROLE": "bad role"})
    assert at(one(errors, "`port` must be a whole number, got 'http'")) == (4, 11)
    assert at(one(errors, "IAM role name 'bad role' is not valid")) == (7, 15)


def test_a_bad_value_from_a_placeholder_says_where_it_came_from(load_errors: LoadErrors) -> None:
    d = one(load_errors(service("port: ${PORT}\n"), {"PORT": "http"}), "`port`")
    assert "PORT" in d.message + d.hint, d.render()


def test_an_unset_connection_type_placeholder_is_reported_once(load_errors: LoadErrors) -> None:
    errors = load_errors(connection("type: ${CONN_TYPE}\nrole: shop-api"))
    assert len(errors) == 1, "\n".join(d.render() for d in errors)


def test_placeholders_in_keys_are_left_alone(load_ok: LoadOk) -> None:
    loaded = load_ok(service("env:\n  ${KEY}: value\n"))
    assert loaded.app.services[0].env == {"${KEY}": "value"}


# --- env values --------------------------------------------------------------------------------


def test_env_values_are_strings_spelt_as_in_the_file(load_ok: LoadOk) -> None:
    env = load_ok(service("env:\n  A: 5\n  B: true\n  C: 0.5\n  D:\n  E: text\n")).app.services[0].env
    assert env == {"A": "5", "B": "true", "C": "0.5", "D": "", "E": "text"}


@pytest.mark.parametrize(("written", "kept"), [("1.10", "1.10"), ("0042", "0042"), ("1e3", "1e3"), ("0x1F", "0x1F")])
def test_env_values_that_yaml_reads_as_numbers_keep_their_text(load_ok: LoadOk, written: str, kept: str) -> None:
    """Porter passes env values through as text: `VERSION: 1.10` is "1.10", not "1.1"."""
    env = load_ok(service(f"env:\n  V: {written}\n")).app.services[0].env
    assert env == {"V": kept}


# --- hostile and broken files ------------------------------------------------------------------


@pytest.mark.parametrize(("data", "fragment", "where"), [
    (b"", "file is empty", (1, 1)),
    (b"# just a comment\n", "file is empty", (1, 1)),
    (b"---\n...\n", "must be a mapping, got nothing", (1, 1)),
    (b"- a\n- b\n", "must be a mapping, got a list", (1, 1)),
    (b"hello\n", "must be a mapping, got 'hello'", (1, 1)),
    (b"42\n", "must be a mapping, got 42", (1, 1)),
    (b"~\n", "must be a mapping, got nothing", (1, 1)),
    (b"a: 1\n---\nb: 2\n", "holds 2 YAML documents", (3, 1)),
    (b"\xff\xfes\x00", "UTF-16", (1, 1)),
    (b"\xfe\xff\x00s", "UTF-16", (1, 1)),
    (b"services:\n  - name: \xe9\n", "not valid UTF-8 (byte 0xe9)", (2, 11)),
    (b"services:\n  - name: a\x00\n", "NUL byte", (2, 12)),
    (b"services:\n  - name: a\x1b[0m\n", "control character U+001B", (2, 12)),
    (b"services:\n\t- name: api\n", "'\\t'", (2, 1)),
    (b"a: 1\na: 2\nservices: [{name: x, type: web}]\n", "duplicate key 'a' (first at line 1)", (2, 1)),
    (b"? [a]\n: 1\nservices: [{name: x, type: web}]\n", "mapping keys must be plain strings", (1, 3)),
    (b"~: 1\nservices: [{name: x, type: web}]\n", "a mapping key is empty", (1, 1)),
    (b"a: *nothing\n", "undefined alias", (1, 4)),
    (b"a: &a [*a]\n", "recursive", (1, 4)),
    (b"services: !Services [{name: x, type: web}]\n", "unsupported YAML tag", (1, 11)),
    (b"services: [{name: !Sub '${AWS::StackName}', type: web}]\n", "unsupported YAML tag '!Sub'", (1, 19)),
    (b"services: [{name: x, type: web, run: !!python/name:os.system ''}]\n", "unsupported YAML tag", (1, 38)),
    (b"x: <<\n<<: 1\nservices: [{name: x, type: web}]\n", "merge key takes a mapping", (2, 5)),
])
def test_hostile_and_broken_files_are_rejected(load_errors: LoadErrors, data: bytes, fragment: str,
                                               where: tuple[int, int]) -> None:
    d = one(load_errors(data), fragment)
    assert at(d) == where, d.render()


def test_an_alias_bomb_stops_early() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    data = ("\n".join(levels) + "\nservices: [{name: x, type: web}]\n").encode()
    doc, diagnostics = read_yaml(data, "porter.yaml")
    assert doc is None
    (d,) = diagnostics
    assert "alias bomb" in d.hint


def test_nesting_deeper_than_the_limit_is_reported_in_words_a_person_reads(load_errors: LoadErrors) -> None:
    for depth in (MAX_DEPTH + 5, 600):  # 600 brackets: a 1.2 KB file
        (d,) = load_errors(b"a: " + b"[" * depth + b"]" * depth + b"\n")
        assert "nested" in d.message, d.render()
        assert "recursion" not in d.message, d.render()


def test_merge_keys_fill_in_without_overriding_own_keys(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        x-base: &base {type: worker, instances: 2, run: ./base}
        x-more: &more {cpuCores: 0.5, instances: 9}
        services:
          - <<: [*base, *more]
            name: api
            type: web
            port: 8080
        """)
    api = loaded.app.services[0]
    assert (api.type, api.instances, api.run, api.cpu_cores, api.port) == (ServiceType.WEB, 2, "./base", 0.5, 8080)


def test_loading_emits_no_python_warnings() -> None:
    """A reused anchor name is legal YAML; ruamel's ReusedAnchorWarning must not leak to the terminal."""
    data = b"a: &x 1\nb: &x 2\nservices: [{name: api, type: web}]\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(InvalidInput):
            load_app(data, "porter.yaml", {})
    assert [str(w.message) for w in caught] == []


def test_utf8_bom_and_windows_line_endings_load(load_ok: LoadOk) -> None:
    data = b"\xef\xbb\xbfname: shop\r\nservices:\r\n  - name: api\r\n    type: web\r\n"
    loaded = load_ok(data)
    assert loaded.document.value_at(("services", 0, "name")) == Position(3, 11)


def test_trailing_newlines_in_quoted_names_are_rejected(load_errors: LoadErrors) -> None:
    """YAML escapes and block scalars can put a newline at the end of any value: a name with one is not valid."""
    errors = load_errors("""\
        name: "shop\\n"
        services:
          - name: "api\\n"
            type: web
            connections:
              - type: azureManagedIdentity
                identityName: "api-identity\\n"
                resourceGroup: |
                  shop-rg
        """)
    assert sorted(d.position.line for d in errors) == [1, 3, 7, 8], "\n".join(d.render() for d in errors)


def test_a_huge_value_is_not_echoed_whole(load_errors: LoadErrors) -> None:
    [d] = [e for e in load_errors(service("").replace("name: api", "name: " + "a" * 500_000)) if "500000" in e.message]
    assert len(d.render()) < 1_000
    assert "(500,002 characters)" in d.message  # says how long it was, quotes included


# === porter.yaml as Porter itself writes and documents it ======================================


def rejected(text: str, app_name: str | None = None) -> list[Diagnostic]:
    with pytest.raises(InvalidInput) as caught:
        load_app(textwrap.dedent(text).encode(), "porter.yaml", {}, app_name)
    return [d for d in caught.value.diagnostics if d.severity is Severity.ERROR]


# --- env in Porter's list form -----------------------------------------------------------------


def test_env_in_list_form_loads_at_app_and_service_level(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        env:
          - key: CACHE_VERSION
            value: 1.10
          - key: API_URL
            from: {source: app, name: backend, value: internal_domain, service: server}
        services:
          - name: web
            type: web
            env:
              - key: WORKERS
                value: 4
              - key: EMPTY
        """)
    assert loaded.diagnostics == ()
    app_env = loaded.app.env
    assert isinstance(app_env, list)
    assert [(e.key, e.value) for e in app_env] == [("CACHE_VERSION", "1.10"), ("API_URL", None)]  # as written
    source = app_env[1].from_
    assert source is not None
    assert (source.source, source.name, source.value, source.service) == ("app", "backend", "internal_domain",
                                                                          "server")
    assert loaded.app.services[0].env == [EnvVariable(key="WORKERS", value="4"), EnvVariable(key="EMPTY")]


def test_env_in_mapping_form_still_loads_as_a_mapping(load_ok: LoadOk) -> None:
    assert load_ok(service("env:\n  PORT: 8080\n")).app.services[0].env == {"PORT": "8080"}


def test_a_list_form_env_entry_without_key_is_located(load_errors: LoadErrors) -> None:
    d = one(load_errors(service("env:\n  - value: x\n")), "missing required field `key`")
    assert at(d) == (5, 9), d.render()


def test_an_unknown_field_of_a_list_form_env_entry_is_a_warning(load_ok: LoadOk) -> None:
    d = one(load_ok(service("env:\n  - key: A\n    valu: x\n")).diagnostics, "unknown field `valu`")
    assert (d.severity, at(d), d.hint) == (Severity.WARNING, (6, 9), "did you mean `value`?")


def test_env_as_a_list_of_strings_says_which_forms_are_read(load_errors: LoadErrors) -> None:
    errors = load_errors(service("env:\n  - A=1\n"))
    d = one(errors, "item 1 of `env` must be a mapping")
    assert at(d) == (5, 9)
    assert "`- key: NAME`" in d.hint


# --- Porter's fields keyless does not use ------------------------------------------------------


@pytest.mark.parametrize(("text", "key", "where"), [
    (service("loadBalancers:\n  - type: private\n"), "loadBalancers", (4, 5)),
    (service("sleep: true\n"), "sleep", (4, 5)),
    (service("customAutoscaling:\n  enabled: false\n"), "customAutoscaling", (4, 5)),
    (service("smartOptimization: true\n"), "smartOptimization", (4, 5)),
    (service("autoscaling:\n  enabled: true\n  gpuThresholdPercent: 80\n"), "gpuThresholdPercent", (6, 7)),
    (service("autoscaling:\n  gpuMemoryThresholdPercent: 80\n"), "gpuMemoryThresholdPercent", (5, 7)),
    (service("", head="deploymentStrategy:\n  blueGreen: {}\n"), "deploymentStrategy", (1, 1)),
    (service("", head="requiredApps:\n  - name: backend\n"), "requiredApps", (1, 1)),
    (service("", head="addons:\n  - name: db\n    type: postgres\n"), "addons", (1, 1)),
    (service("", head="build:\n  method: docker\n  commitSha: abc123\n"), "commitSha", (3, 3)),
])
def test_a_porter_field_keyless_does_not_use_is_a_note_not_unknown(
    load_ok: LoadOk, text: str, key: str, where: tuple[int, int],
) -> None:
    (d,) = load_ok(text).diagnostics
    assert (d.severity, at(d), d.message) == (Severity.NOTE, where, f"`{key}` is a Porter field keyless does not use")
    assert "did you mean" not in d.hint


def test_load_balancers_is_not_told_to_become_load_balancer_config(load_ok: LoadOk) -> None:
    loaded = load_ok(service("loadBalancers:\n  - type: public\n"))
    assert not [d for d in loaded.diagnostics if "loadBalancerConfig" in d.message + d.hint]


def test_a_porter_field_at_a_place_it_does_not_belong_is_still_unknown(load_ok: LoadOk) -> None:
    d = one(load_ok(service("", head="sleep: true\n")).diagnostics, "sleep")
    assert (d.severity, d.message) == (Severity.WARNING, "unknown field `sleep`")


def test_a_misspelled_connections_key_is_still_an_error_beside_porter_fields(load_errors: LoadErrors) -> None:
    d = one(load_errors(service("sleep: false\nconections:\n  - type: awsRole\n    role: api\n")), "conections")
    assert "did you mean `connections`?" in d.message


# --- connections keyless never binds -----------------------------------------------------------

TARGETS = b"targets:\n  prod:\n    cloud: aws\n    region: us-east-1\n    cluster: prod\n    namespace: shop\n"


def test_a_connection_under_previews_is_warned_about_and_not_bound(load_ok: LoadOk) -> None:
    loaded = load_ok("""\
        name: shop
        services:
          - name: api
            type: web
            connections:
              - {type: awsRole, role: shop-api}
        previews:
          services:
            - name: api
              connections:
                - {type: awsRole, role: shop-api-preview}
          predeploy:
            connections:
              - {type: awsRole, role: shop-migrate-preview}
        """)
    found = [d for d in loaded.diagnostics if "does not act on connections" in d.message]
    assert [(d.severity, at(d)) for d in found] == [(Severity.WARNING, (10, 7)), (Severity.WARNING, (13, 5))]
    assert all("`previews`" in d.message for d in found)
    targets = load_targets(TARGETS, "keyless.targets.yaml", {})
    bindings, _ = desired_bindings(loaded, "shop", "prod", targets.get("prod"))
    assert [b.service for b in bindings] == ["api"]


def test_a_connection_under_experimental_is_warned_about(load_ok: LoadOk) -> None:
    loaded = load_ok(service("experimental:\n  connections:\n    - {type: awsRole, role: x}\n"))
    d = one(loaded.diagnostics, "does not act on connections under `experimental`")
    assert (d.severity, at(d)) == (Severity.WARNING, (5, 7))
    assert loaded.app.services[0].connections == []


def test_previews_without_connections_is_only_a_note(load_ok: LoadOk) -> None:
    (d,) = load_ok(service("", head="previews:\n  services:\n    - name: api\n      instances: 1\n")).diagnostics
    assert d.severity is Severity.NOTE


# --- the multi-app file ------------------------------------------------------------------------

MULTI = """\
apps:
  - version: v2
    name: backend
    services:
      - name: server
        type: web
        connections:
          - type: awsRole
            role: backend-server
  - version: v2
    name: frontend
    services:
      - name: dashboard
        type: web
        connections:
          - type: awsRole
            role: frontend-dashboard
addons:
  - name: db
    type: postgres
"""


def test_every_app_of_a_multi_app_file_loads() -> None:
    apps = load_apps(MULTI.encode(), "porter.yaml", {})
    assert [(a.app.name, a.path, [s.name for s in a.app.services]) for a in apps] == [
        ("backend", ("apps", 0), ["server"]), ("frontend", ("apps", 1), ["dashboard"])]
    (note,) = apps[0].diagnostics
    assert (note.severity, at(note), note.message) == (Severity.NOTE, (18, 1),
                                                        "`addons` is a Porter field keyless does not use")
    assert apps[1].diagnostics == apps[0].diagnostics


def test_app_name_picks_one_app_and_positions_point_into_it() -> None:
    loaded = load_app(MULTI.encode(), "porter.yaml", {}, "frontend")
    assert loaded.app.name == "frontend"
    service_at, connection_at = loaded.service_position(0), loaded.connection_position(0, 0)
    assert (service_at.line, service_at.column) == (13, 9)
    assert (connection_at.line, connection_at.column) == (16, 13)
    targets = load_targets(TARGETS, "keyless.targets.yaml", {})
    bindings, _ = desired_bindings(loaded, "frontend", "prod", targets.get("prod"))
    assert [(b.app, b.service, b.service_account) for b in bindings] == [
        ("frontend", "dashboard", "frontend-dashboard")]


def test_a_multi_app_file_without_app_name_says_which_apps_it_holds() -> None:
    (d,) = rejected(MULTI)
    assert d.message == "the file holds 2 apps (backend, frontend); keyless works on one at a time"
    assert d.hint == "pass --app NAME, one of: backend, frontend"
    assert at(d) == (1, 1)


def test_an_app_name_the_file_does_not_hold_is_an_error_listing_the_apps() -> None:
    (d,) = rejected(MULTI, "billing")
    assert d.message == "the file holds no app named 'billing'"
    assert d.hint == "its apps: backend, frontend; pass one of them to --app"


def test_a_multi_app_file_of_one_app_needs_no_app_name() -> None:
    text = "apps:\n  - name: solo\n    services:\n      - {name: api, type: web}\n"
    assert load_app(text.encode(), "porter.yaml", {}).app.name == "solo"


def test_a_misspelled_connections_key_in_the_second_app_is_an_error_where_written() -> None:
    errors = rejected(MULTI.replace("        connections:\n          - type: awsRole\n            role: frontend",
                                    "        conections:\n          - type: awsRole\n            role: frontend"))
    d = one(errors, "did you mean `connections`?")
    assert at(d) == (15, 9)


@pytest.mark.parametrize(("text", "fragment", "where"), [
    ("apps: []\n", "`apps` is empty", (1, 7)),
    ("apps: backend\n", "`apps` must be a list", (1, 7)),
    ("apps:\n  - backend\n", "item 1 of `apps` must be a mapping", (2, 5)),
    ("apps:\n  - services: [{name: api, type: web}]\n", "app 1 of `apps` has no `name`", (2, 5)),
    ("apps:\n  - {name: a, services: [{name: api, type: web}]}\n  - {name: a, services: [{name: w, type: web}]}\n",
     "app name 'a' is used twice (first at line 2)", (3, 12)),
    ("name: shop\napps:\n  - {name: a, services: [{name: api, type: web}]}\n",
     "`name` at the top level of a file with `apps:` is not read", (1, 1)),
    ("services: [{name: api, type: web}]\napps:\n  - {name: a, services: [{name: w, type: web}]}\n",
     "`services` at the top level of a file with `apps:` is not read", (1, 1)),
    ("apps:\n  - name: a\n", "missing required field `services`", (2, 5)),
])
def test_multi_app_file_rules(text: str, fragment: str, where: tuple[int, int]) -> None:
    errors = rejected(text, "a")
    d = one(errors, fragment)
    assert at(d) == where, d.render()
    assert d.hint
    assert len(errors) == 1, "\n".join(e.render() for e in errors)


def test_an_unknown_top_level_field_of_a_multi_app_file_is_a_warning() -> None:
    (loaded,) = load_apps(b"apps:\n  - {name: a, services: [{name: api, type: web}]}\nextra: 1\n", "p.yaml", {})
    d = one(loaded.diagnostics, "unknown field `extra`")
    assert (d.severity, at(d)) == (Severity.WARNING, (3, 1))


def test_an_unset_variable_in_addons_is_a_warning() -> None:
    text = "apps:\n  - {name: a, services: [{name: api, type: web}]}\naddons:\n  - name: db\n    type: ${DB_TYPE}\n"
    (loaded,) = load_apps(text.encode(), "p.yaml", {})
    d = one(loaded.diagnostics, "DB_TYPE is not set")
    assert (d.severity, at(d)) == (Severity.WARNING, (5, 11))


# --- the CLI picks the app with --app ----------------------------------------------------------


@pytest.fixture
def multi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KEYLESS_TARGETS", "PORTER_APP_NAME"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "porter.yaml"
    path.write_text(MULTI)
    (tmp_path / "keyless.targets.yaml").write_bytes(TARGETS)
    return path


def test_cli_validate_lists_every_app_of_a_multi_app_file(multi: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-f", str(multi)])
    assert result.exit_code == 0, result.output
    assert f"{multi}: valid. App 'backend', 1 service(s)" in result.output
    assert f"{multi}: valid. App 'frontend', 1 service(s)" in result.output


def test_cli_validate_json_of_a_multi_app_file_lists_the_apps(multi: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-f", str(multi), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [a["name"] for a in json.loads(result.stdout)["apps"]] == ["backend", "frontend"]


@pytest.mark.parametrize("command", ["plan", "audit", "render"])
def test_cli_command_on_a_multi_app_file_without_app_exits_2_naming_the_apps(multi: Path, command: str) -> None:
    targets = multi.parent / "keyless.targets.yaml"
    result = CliRunner().invoke(cli, [command, "-f", str(multi), "--target", "prod", "--targets", str(targets)])
    assert result.exit_code == 2, result.output
    assert f"{multi}:1:1: the file holds 2 apps (backend, frontend)" in result.output
    assert "pass --app NAME, one of: backend, frontend" in result.output


def test_cli_app_picks_the_app_of_a_multi_app_file(multi: Path) -> None:
    """With --app the file loads and the command goes on to the target (here an unknown one: exit 2 for that)."""
    targets = multi.parent / "keyless.targets.yaml"
    result = CliRunner().invoke(cli, ["plan", "-f", str(multi), "--app", "frontend", "--target", "nope",
                                      "--targets", str(targets)])
    assert result.exit_code == 2, result.output
    assert "holds 2 apps" not in result.output
    assert "nope" in result.output
    unknown = CliRunner().invoke(cli, ["plan", "-f", str(multi), "--app", "billing", "--target", "prod",
                                       "--targets", str(targets)])
    assert unknown.exit_code == 2, unknown.output
    assert "the file holds no app named 'billing'" in unknown.output


def test_a_single_app_file_is_one_loaded_app_at_the_root(load_ok: LoadOk) -> None:
    loaded: LoadedApp = load_ok(service(""))
    assert loaded.path == ()
    assert load_apps(service("").encode(), "porter.yaml", {}) == (loaded,)
