"""Unit tests of the Azure provider's pure parts: subjects, ownership by name, observation, the cap, errors."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.federation import parse_subject, subject_for
from keyless.ownership import Owner
from keyless.ownership import owner_from_credential_name as owner_from_name
from keyless.plan import ActionKind
from keyless.plan.planner import plan_bindings
from keyless.porter.model import ServiceType
from keyless.providers.azure_api import (
    CONCURRENT_WRITES,
    CREDENTIALS_PER_IDENTITY,
    aadsts,
    arm_code,
    client_options,
    explain,
    is_concurrent_write,
    is_transient,
    retry_after,
)
from keyless.providers.azure_credentials import (
    AUDIENCE,
    Credential,
    credential_mismatch,
    credentials_to_add,
    identity_key,
    identity_ref,
    jwt_claim,
    over_cap,
    select_observed,
    to_observed,
)
from keyless.targets import AzureTarget

APP = "shop"
TARGET = "prod-aks"
NS = "shop"
ISSUER = "https://eastus.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000001/11111111-2222/"
RG = "platform"
UAMI = "shop-api"


class FakeResponse:
    """Just enough of an azure-core HTTP response for HttpResponseError to parse."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = {400: "Bad Request", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error",
                       503: "Service Unavailable", 403: "Forbidden", 404: "Not Found"}.get(status, "?")
        self.headers = headers or {}
        self._body = json.dumps(body) if body is not None else ""
        self.content_type = "application/json"

    def text(self, encoding: str | None = None) -> str:
        return self._body


def arm_error(cls: type[HttpResponseError], status: int, code: str, message: str = "it failed",
              headers: dict[str, str] | None = None) -> HttpResponseError:
    return cls(response=FakeResponse(status, {"error": {"code": code, "message": message}}, headers))  # type: ignore[arg-type]


def cred(name: str, subject: str | None = None, *, issuer: str = ISSUER, audiences: tuple[str, ...] = (AUDIENCE,),
         rg: str = RG, identity: str = UAMI) -> Credential:
    return Credential(resource_group=rg, identity_name=identity, name=name, issuer=issuer,
                      subject=subject or subject_for(NS, f"{APP}-api"), audiences=audiences,
                      arm_id=f"/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/"
                             f"userAssignedIdentities/{identity}/federatedIdentityCredentials/{name}")


def keyless_name(service: str = "api", app: str = APP, target: str = TARGET) -> str:
    return names.federated_credential_name(app, service, target)


def binding(service: str, identity: str = UAMI, rg: str = RG) -> Binding:
    return Binding(app=APP, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AZURE, namespace=NS,
                   service_account=names.service_account_name(APP, service),
                   identity=AzureIdentity(identity_name=identity, resource_group=rg, client_id="c", tenant_id="t"))


# ---- subjects -------------------------------------------------------------------------------------


def test_subject_is_the_kubernetes_service_account_subject() -> None:
    assert subject_for("shop", "shop-api") == "system:serviceaccount:shop:shop-api"
    assert parse_subject("system:serviceaccount:shop:shop-api") == ("shop", "shop-api")


@pytest.mark.parametrize("subject", [
    "system:serviceaccount:shop",  # no account
    "system:serviceaccount::shop-api",  # empty namespace
    "system:serviceaccount:shop:",  # empty account
    "system:serviceaccount:shop:shop-api:extra",
    "repo:octo/shop:ref:refs/heads/main",  # a GitHub Actions credential on the same identity
    "System:ServiceAccount:shop:shop-api",  # subjects are case-sensitive
    " system:serviceaccount:shop:shop-api",
])
def test_other_subjects_are_not_service_accounts(subject: str) -> None:
    assert parse_subject(subject) is None


# ---- ownership by name ----------------------------------------------------------------------------


def test_a_keyless_name_for_this_target_names_its_owner() -> None:
    assert owner_from_name(keyless_name("api"), TARGET) == Owner(APP, "api", TARGET)


@pytest.mark.parametrize("name", [
    keyless_name("api", target="staging-aks"),  # keyless's, but for another target
    "shop-api-prod",  # made by hand
    "keyless_shop_api",  # the prefix alone does not make it keyless's
    "keyless_shop_api_abc123_x",
    "Keyless_shop_api_" + names.target_hash(TARGET),  # the prefix is case-sensitive
])
def test_other_names_have_no_owner(name: str) -> None:
    assert owner_from_name(name, TARGET) is None


# ---- identity references read back from service accounts -------------------------------------------


def test_identity_refs_round_trip_describe() -> None:
    ident = AzureIdentity(identity_name="shop-api", resource_group="rg.platform_(1)")
    assert identity_ref(ident.describe()) == ("rg.platform_(1)", "shop-api")


@pytest.mark.parametrize("text", [
    "no-slash", "rg/", "/shop-api", "rg/shop/api", "rg/../x", "rg/shop-api?api-version=1", "rg/shop-api#x",
    "rg/shop%2Fapi", "r g/shop-api", "rg./shop-api", "rg/ab",  # identity names are at least 3 characters
])
def test_identity_refs_that_could_bend_a_url_are_refused(text: str) -> None:
    assert identity_ref(text) is None


def test_identity_keys_ignore_case_like_arm() -> None:
    assert identity_key("Platform", "Shop-API") == identity_key("platform", "shop-api")


# ---- issuer exactness and observation -------------------------------------------------------------


def test_the_issuer_is_compared_byte_for_byte() -> None:
    subject = subject_for(NS, "shop-api")
    assert cred("a", issuer=ISSUER).works_for(ISSUER, subject)
    assert not cred("a", issuer=ISSUER.rstrip("/")).works_for(ISSUER, subject)  # a missing '/' is AADSTS70021
    assert not cred("a", issuer=ISSUER.upper()).works_for(ISSUER, subject)
    assert not cred("a", issuer=ISSUER).works_for(ISSUER.rstrip("/"), subject)
    assert not cred("a").works_for(None, subject)


def test_only_a_working_credential_binds_the_identity() -> None:
    assert credential_mismatch(cred("a"), ISSUER) == ()
    assert credential_mismatch(cred("a", issuer=ISSUER.rstrip("/")), ISSUER) == (f"issuer {ISSUER.rstrip('/')}",)
    assert credential_mismatch(cred("a", audiences=("api://other",)), ISSUER) == ("audience api://other",)
    assert credential_mismatch(cred("a"), None)[0].startswith("issuer ")
    observed = to_observed(cred("a", issuer=ISSUER.rstrip("/")), ISSUER, TARGET)
    assert observed is not None
    assert not observed.binds(AzureIdentity(UAMI, RG))  # the identity, but not a working binding of it
    assert observed.describe_identity() == f"{RG}/{UAMI} [issuer {ISSUER.rstrip('/')}]"


def test_a_keyless_credential_observes_with_owner_and_details() -> None:
    credential = cred(keyless_name())
    observed = to_observed(credential, ISSUER, TARGET)
    assert observed is not None
    assert observed.cloud is Cloud.AZURE
    assert observed.id == credential.arm_id
    assert observed.key == (NS, "shop-api")
    assert observed.identity == AzureIdentity(UAMI, RG)
    assert observed.binds(AzureIdentity(UAMI, RG))
    assert observed.owner == Owner(APP, "api", TARGET)
    assert dict(observed.details) == {"name": keyless_name(), "issuer": ISSUER, "audience": AUDIENCE,
                                      "resourceGroup": RG, "identityName": UAMI}


def test_the_id_falls_back_to_the_path_without_an_arm_id() -> None:
    observed = to_observed(replace(cred("hand"), arm_id=""), ISSUER, TARGET)
    assert observed is not None
    assert observed.id == f"{RG}/{UAMI}/hand"


def test_a_keyless_name_trusting_another_issuer_is_never_owned() -> None:
    observed = to_observed(cred(keyless_name(), issuer="https://other.example/issuer/"), ISSUER, TARGET)
    assert observed is not None
    assert observed.owner is None


def test_a_credential_for_something_other_than_a_service_account_is_not_observed() -> None:
    assert to_observed(cred("gha", subject="repo:octo/shop:environment:prod"), ISSUER, TARGET) is None


def test_observe_keeps_desired_keys_and_this_apps_own_credentials() -> None:
    desired = [(NS, "shop-api")]
    found = select_observed([
        cred("hand-api"),  # at a desired key: kept, not owned
        cred(keyless_name("worker"), subject_for(NS, "shop-worker")),  # keyless's for a removed service: kept
        cred("hand-worker", subject_for(NS, "shop-worker")),  # someone's, elsewhere: not keyless's business
        cred(keyless_name("api", app="blog"), subject_for(NS, "blog-api")),  # another app's
        cred(keyless_name("worker", target="staging"), subject_for(NS, "shop-worker")),  # another target's
        cred("old-cluster", issuer="https://old.example/", subject=subject_for(NS, "shop-worker")),
        cred("gha", subject="repo:octo/shop:ref:refs/heads/main"),
    ], app=APP, target=TARGET, issuer=ISSUER, desired_keys=desired)
    assert [(o.details["name"], o.owner) for o in found] == [
        (keyless_name("worker"), Owner(APP, "worker", TARGET)),  # owned ones first
        ("hand-api", None),
    ]


def test_observe_keeps_another_issuers_credential_at_a_desired_key_but_never_owns_it() -> None:
    found = select_observed([cred(keyless_name(), issuer=ISSUER.rstrip("/"))], app=APP, target=TARGET,
                            issuer=ISSUER, desired_keys=[(NS, "shop-api")])
    assert len(found) == 1
    assert found[0].owner is None
    assert not found[0].binds(AzureIdentity(UAMI, RG))


# ---- what the plan makes of it (the engine's planner over the provider's observation) ---------------


def _plan(credentials: list[Credential], wanted: list[Binding]) -> list[tuple[ActionKind, str]]:
    observed = select_observed(credentials, app=APP, target=TARGET, issuer=ISSUER, desired_keys=[b.key for b in wanted])
    actions, blockers = plan_bindings(wanted, observed, app=APP, target=TARGET, cloud=Cloud.AZURE,
                                      services_in_app=[b.service for b in wanted])
    assert not blockers
    return [(a.kind, a.service) for a in actions]


def test_an_identical_hand_made_credential_is_used_as_is_and_never_deleted() -> None:
    # Credentials take no marks (the registry's `marks_adopted` is False for Azure): used as found, not adopted.
    assert _plan([cred("hand-api")], [binding("api")]) == [(ActionKind.NOOP, "api")]
    assert _plan([cred("hand-api")], []) == []  # the connection removed: keyless leaves it alone


def test_a_credential_trusting_a_slightly_different_issuer_is_not_adopted() -> None:
    assert _plan([cred("hand-api", issuer=ISSUER.rstrip("/"))], [binding("api")]) == [(ActionKind.CREATE, "api")]


def test_keyless_own_credential_is_nothing_to_do_then_deleted_when_removed() -> None:
    mine = cred(keyless_name())
    assert _plan([mine], [binding("api")]) == [(ActionKind.NOOP, "api")]
    assert _plan([mine], []) == [(ActionKind.DELETE, "api")]


def test_another_identity_replaces_the_credential() -> None:
    assert _plan([cred(keyless_name())], [binding("api", identity="shop-api-2")]) == [(ActionKind.REPLACE, "api")]


def test_keyless_credential_with_a_changed_audience_is_rewritten() -> None:
    assert _plan([cred(keyless_name(), audiences=("api://x",))], [binding("api")]) == [(ActionKind.REPLACE, "api")]


# ---- the cap of 20 credentials per identity ---------------------------------------------------------


def _existing(count: int) -> list[Credential]:
    return [cred(f"other-{i}", subject_for("other", f"sa-{i}")) for i in range(count)]


def test_new_credentials_count_towards_the_cap() -> None:
    wanted = [(keyless_name("api"), subject_for(NS, "shop-api"))]
    assert credentials_to_add(_existing(19), wanted, ISSUER) == 1
    assert not over_cap(19, 1)
    assert credentials_to_add(_existing(20), wanted, ISSUER) == 1
    assert over_cap(20, 1)
    assert not over_cap(CREDENTIALS_PER_IDENTITY, 0)  # full but adding nothing: fine
    assert over_cap(18, 3)


def test_rewriting_or_adopting_adds_nothing() -> None:
    existing = [*_existing(18), cred(keyless_name("api")), cred("hand-worker", subject_for(NS, "shop-worker"))]
    wanted = [(keyless_name("api"), subject_for(NS, "shop-api")),  # exists by name: an update
              (keyless_name("worker"), subject_for(NS, "shop-worker")),  # identical hand-made one: adopted
              (keyless_name("web"), subject_for(NS, "shop-web")),
              (keyless_name("web"), subject_for(NS, "shop-web"))]  # counted once
    assert credentials_to_add(existing, wanted, ISSUER) == 1
    assert over_cap(len(existing), 1)


def test_a_same_subject_credential_for_another_issuer_does_not_save_a_slot() -> None:
    existing = [cred("old", issuer="https://old.example/")]
    assert credentials_to_add(existing, [(keyless_name(), subject_for(NS, "shop-api"))], ISSUER) == 1


# ---- errors ---------------------------------------------------------------------------------------


def test_the_concurrent_write_conflict_is_told_apart_by_its_code_not_its_type() -> None:
    concurrent = arm_error(ResourceExistsError, 409, CONCURRENT_WRITES)
    other = arm_error(ResourceExistsError, 409, "Conflict")
    assert arm_code(concurrent) == CONCURRENT_WRITES
    assert is_concurrent_write(concurrent)
    assert is_transient(concurrent)
    assert not is_concurrent_write(other)
    assert not is_transient(other)


@pytest.mark.parametrize(("error", "transient"), [
    (arm_error(HttpResponseError, 429, "TooManyRequests"), True),
    (arm_error(HttpResponseError, 500, "InternalServerError"), True),
    (arm_error(HttpResponseError, 503, "ServiceUnavailable"), True),
    (arm_error(HttpResponseError, 400, "BadRequest", "at most 20 federated identity credentials"), False),
    (arm_error(ResourceNotFoundError, 404, "ResourceNotFound"), False),
    (arm_error(HttpResponseError, 403, "AuthorizationFailed"), False),
    (ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token"), False),
    (ServiceRequestError("connection refused"), True),
    (ServiceResponseError("connection reset"), True),
    (ValueError("bug"), False),
])
def test_what_is_worth_another_attempt(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_tls_failure_is_configuration_not_weather() -> None:
    import ssl

    error = ServiceRequestError("SSL: CERTIFICATE_VERIFY_FAILED", error=ssl.SSLError(1, "certificate verify failed"))
    assert not is_transient(error)
    assert "caBundle" in explain(error, "reading").hint


def test_retry_after_in_seconds_milliseconds_or_as_a_date() -> None:
    assert retry_after(arm_error(HttpResponseError, 429, "x", headers={"Retry-After": "3"})) == 3.0
    assert retry_after(arm_error(HttpResponseError, 429, "x", headers={"retry-after-ms": "250"})) == 0.25
    dated = arm_error(HttpResponseError, 429, "x", headers={"Retry-After": "Wed, 21 Oct 2015 07:28:05 GMT"})
    assert retry_after(dated, now=lambda: 1445412485.0 - 7.0) == pytest.approx(7.0)
    assert retry_after(arm_error(HttpResponseError, 429, "x", headers={"Retry-After": "soon"})) is None
    assert retry_after(arm_error(HttpResponseError, 429, "x")) is None
    assert retry_after(ValueError()) is None


def test_errors_are_explained_with_the_arm_code_and_a_hint() -> None:
    cap = explain(arm_error(HttpResponseError, 400, "BadRequest",
                            "Too many Federated Identity Credentials are written to this Managed Identity: limit 20"),
                  "creating federated credential x")
    assert isinstance(cap, CloudError)
    assert cap.message.startswith("creating federated credential x: BadRequest: Too many")
    assert "20" in cap.hint
    worded = explain(arm_error(HttpResponseError, 400, "BadRequest",
                               "Too many Federated Identity Credentials. A user-assigned managed identity can have at "
                               "most 20 Federated Identity Credentials; 'shop' already has 20."), "creating")
    assert "delete unused ones" in worded.hint
    duplicate = explain(arm_error(HttpResponseError, 400, "BadRequest",
                                  "FIC with the same issuer and subject already exists"), "creating")
    assert "one credential per issuer and subject" in duplicate.hint
    denied = explain(arm_error(HttpResponseError, 403, "AuthorizationFailed", "no"), "reading")
    assert "Managed Identity Contributor" in denied.hint
    concurrent = explain(arm_error(ResourceExistsError, 409, CONCURRENT_WRITES, "busy"), "creating")
    assert CONCURRENT_WRITES in concurrent.message
    throttled = explain(arm_error(HttpResponseError, 429, "TooManyRequests", "slow down"), "creating")
    assert "throttling" in throttled.hint
    no_token = explain(ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token"), "reading")
    assert "no usable Azure credentials" in no_token.message
    assert "az login" in no_token.hint


def test_the_give_up_note_reaches_the_message() -> None:
    error = arm_error(HttpResponseError, 429, "TooManyRequests", "slow down")
    error.add_note("gave up after 8 attempt(s) in 60.0s")
    assert "(gave up after 8 attempt(s) in 60.0s)" in explain(error, "creating").message


def test_the_tenant_is_read_from_the_token_without_verifying_it() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"tid": "tenant-1"}).encode()).decode().rstrip("=")
    assert jwt_claim(f"header.{payload}.signature", "tid") == "tenant-1"
    assert jwt_claim(f"header.{payload}.signature", "oid") is None
    assert jwt_claim("opaque-token", "tid") is None
    assert jwt_claim("a.!!!.c", "tid") is None


def test_token_exchange_failures_are_reported_from_their_aadsts_code() -> None:
    error = ClientAuthenticationError("ClientAssertionCredential.get_token failed: AADSTS70021: No matching "
                                      "federated identity record found for presented assertion.")
    assert aadsts(error).startswith("AADSTS70021: No matching federated identity record")
    assert aadsts(ClientAuthenticationError("plain")) == "plain"


# ---- clients --------------------------------------------------------------------------------------


def _target(**extra: Any) -> AzureTarget:
    return AzureTarget.model_validate({"cloud": "azure", "subscription": "00000000-0000-0000-0000-000000000000",
                                       "resourceGroup": RG, "cluster": "prod-aks", "namespace": NS, **extra})


def test_clients_use_the_targets_endpoint_scope_and_ca_with_one_attempt() -> None:
    sovereign = client_options(_target(armEndpoint="https://management.usgovcloudapi.net/", caBundle="/ca.pem"))
    assert sovereign["base_url"] == "https://management.usgovcloudapi.net"
    assert sovereign["credential_scopes"] == ["https://management.usgovcloudapi.net/.default"]
    assert sovereign["connection_verify"] == "/ca.pem"
    assert sovereign["retry_total"] == 0
    public = client_options(_target())
    assert public["credential_scopes"] == ["https://management.azure.com/.default"]
    assert "connection_verify" not in public  # the system's trust store
