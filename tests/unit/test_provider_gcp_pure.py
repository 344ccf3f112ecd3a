"""The GCP provider's pure parts: the IAM policy edit, member, principal and endpoint spellings, audit rules."""

from __future__ import annotations

from typing import Any

import pytest

from keyless.audit import rules as R
from keyless.audit.gcp import GcpKey, GcpPolicy, GcpServiceAccountDocuments, audit_service_account
from keyless.errors import CloudError
from keyless.federation import (
    WORKLOAD_IDENTITY_USER_ROLE,
    direct_access_principal,
    gke_issuer,
    parse_workload_identity_member,
    sts_audience,
    workload_identity_member,
)
from keyless.providers.gcp import MemberChanges, edit_policy, workload_identity_members
from keyless.providers.gcp_api import GoogleApi, endpoint, service_account_path

WEB = workload_identity_member("shop-prod", "shop", "shop-web")
WORKER = workload_identity_member("shop-prod", "shop", "shop-worker")
EMAIL = "shop-web@shop-prod.iam.gserviceaccount.com"


def policy(*bindings: dict[str, Any], etag: str = "BwXabc", version: int = 1) -> dict[str, Any]:
    return {"version": version, "etag": etag, "bindings": list(bindings)}


def test_a_member_is_added_to_the_existing_binding_and_everything_else_is_kept() -> None:
    before = policy({"role": WORKLOAD_IDENTITY_USER_ROLE, "members": ["user:ops@example.com"]},
                    {"role": "roles/iam.serviceAccountTokenCreator", "members": ["group:ci@example.com"]})
    after = edit_policy(before, MemberChanges(add=frozenset({WEB})))
    assert after is not None
    assert after["etag"] == "BwXabc"  # the write carries the etag it read
    assert after["bindings"] == [
        {"role": WORKLOAD_IDENTITY_USER_ROLE, "members": ["user:ops@example.com", WEB]},
        {"role": "roles/iam.serviceAccountTokenCreator", "members": ["group:ci@example.com"]},
    ]
    assert before["bindings"][0]["members"] == ["user:ops@example.com"]  # the input is not changed


def test_a_binding_is_made_when_the_role_has_none_and_dropped_when_its_last_member_goes() -> None:
    added = edit_policy(policy(), MemberChanges(add=frozenset({WEB, WORKER})))
    assert added is not None
    assert added["bindings"] == [{"role": WORKLOAD_IDENTITY_USER_ROLE, "members": sorted([WEB, WORKER])}]
    removed = edit_policy(added, MemberChanges(remove=frozenset({WEB, WORKER})))
    assert removed is not None
    assert removed["bindings"] == []


def test_nothing_to_write_when_the_policy_already_says_so() -> None:
    current = policy({"role": WORKLOAD_IDENTITY_USER_ROLE, "members": [WEB]})
    assert edit_policy(current, MemberChanges(add=frozenset({WEB}))) is None
    assert edit_policy(current, MemberChanges(remove=frozenset({WORKER}))) is None


def test_a_conditional_grant_is_neither_counted_nor_changed_and_the_policy_stays_version_3() -> None:
    condition = {"title": "weekdays", "expression": "request.time.getDayOfWeek() < 5"}
    current = policy({"role": WORKLOAD_IDENTITY_USER_ROLE, "members": [WEB], "condition": condition}, version=3)
    assert workload_identity_members(current) == set()
    after = edit_policy(current, MemberChanges(add=frozenset({WEB})))
    assert after is not None
    assert after["version"] == 3
    assert after["bindings"][0] == {"role": WORKLOAD_IDENTITY_USER_ROLE, "members": [WEB], "condition": condition}
    assert after["bindings"][1] == {"role": WORKLOAD_IDENTITY_USER_ROLE, "members": [WEB]}


def test_member_principal_issuer_and_audience_spellings() -> None:
    assert WEB == "serviceAccount:shop-prod.svc.id.goog[shop/shop-web]"
    assert parse_workload_identity_member(WEB) == ("shop-prod", "shop", "shop-web")
    assert parse_workload_identity_member("user:ops@example.com") is None
    assert parse_workload_identity_member("serviceAccount:shop-web@shop-prod.iam.gserviceaccount.com") is None
    assert direct_access_principal("123456789012", "shop-prod", "shop", "shop-web") == (
        "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
        "shop-prod.svc.id.goog/subject/ns/shop/sa/shop-web")
    assert gke_issuer("p-123456", "europe-west1-b", "c") == (
        "https://container.googleapis.com/v1/projects/p-123456/locations/europe-west1-b/clusters/c")
    assert sts_audience("p-123456", "us-central1", "c") == (
        "identitynamespace:p-123456.svc.id.goog:https://container.googleapis.com/v1/projects/p-123456/locations/"
        "us-central1/clusters/c")


def test_endpoints_follow_gclouds_override_variables() -> None:
    assert endpoint(GoogleApi.IAM, {}) == "https://iam.googleapis.com/"
    env = {"CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM": "https://127.0.0.1:8443",
           "CLOUDSDK_API_ENDPOINT_OVERRIDES_CONTAINER": "https://127.0.0.1:8443/container/"}
    assert endpoint(GoogleApi.IAM, env) == "https://127.0.0.1:8443/"
    assert endpoint(GoogleApi.CONTAINER, env) == "https://127.0.0.1:8443/container/"
    assert endpoint(GoogleApi.RESOURCE_MANAGER, env) == "https://cloudresourcemanager.googleapis.com/"
    with pytest.raises(CloudError, match="not a root URL"):
        endpoint(GoogleApi.STS, {"CLOUDSDK_API_ENDPOINT_OVERRIDES_STS": "sts.example.com"})
    assert service_account_path(EMAIL) == f"v1/projects/-/serviceAccounts/{EMAIL}"


def _ids(documents: GcpServiceAccountDocuments) -> list[str]:
    return [f.rule.id for f in audit_service_account(documents)]


@pytest.mark.parametrize(("role", "rule"), [
    ("roles/iam.serviceAccountTokenCreator", R.GCP_PROJECT_IMPERSONATION),
    ("roles/iam.serviceAccountUser", R.GCP_PROJECT_IMPERSONATION),
    ("roles/storage.admin", R.GCP_PROJECT_ADMIN_ROLE),
    ("roles/cloudsql.instanceAdmin", R.GCP_PROJECT_ADMIN_ROLE),
    ("roles/storage.objectViewer", R.GCP_PROJECT_GRANT),
    ("roles/owner", R.GCP_BASIC_ROLE),
])
def test_project_level_roles_are_told_apart(role: str, rule: R.Rule) -> None:
    grant = {"role": role, "members": [f"serviceAccount:{EMAIL}"]}
    assert _ids(GcpServiceAccountDocuments(EMAIL, (GcpPolicy("projects/shop-prod", {"bindings": [grant]}),))) == [
        rule.id]


def test_a_user_managed_key_is_an_error_and_a_system_managed_one_is_not() -> None:
    keys = (GcpKey(f"projects/shop-prod/serviceAccounts/{EMAIL}/keys/abc123", "USER_MANAGED", "2026-01-02T00:00:00Z"),
            GcpKey(f"projects/shop-prod/serviceAccounts/{EMAIL}/keys/sys1", "SYSTEM_MANAGED"))
    findings = audit_service_account(GcpServiceAccountDocuments(EMAIL, keys=keys))
    assert [f.rule.id for f in findings] == ["GCP-USER-MANAGED-KEY"]
    assert "abc123" in findings[0].message
    assert f"keys delete abc123 --iam-account {EMAIL}" in findings[0].fix
