"""Fetching what the GCP audit rules read: project IAM policies, the service account's keys, and who else acts as it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from google.auth.credentials import Credentials

from keyless import names
from keyless.audit import AuditReport, Finding, IdentityUse, build_report, identity_key
from keyless.audit.gcp import GcpKey, GcpPolicy, GcpServiceAccountDocuments, audit_service_account
from keyless.audit.shared import audit_incomplete
from keyless.bindings import Binding
from keyless.clouds import Cloud, GcpIdentity
from keyless.errors import CloudError, Denied
from keyless.federation import parse_workload_identity_member
from keyless.providers.gcp import POLICY_VERSION, workload_identity_members
from keyless.providers.gcp_api import GcpApi, GoogleApi, http_status, service_account_path
from keyless.providers.retry import RetryPolicy
from keyless.targets import GcpTarget

# Reads only, so a shorter schedule than the provider's writes need.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)


class GcpAuditor:
    """Reads through the same REST layer as the provider (ADC, gcloud's endpoint overrides, the same retries):
    each project's IAM policy once, and per Google service account its user-managed keys and its own policy
    (the Kubernetes service accounts allowed to act as it)."""

    def __init__(self, target: GcpTarget, credentials: Credentials | None = None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.api = GcpApi(credentials, retry=retry, sleep=sleep, clock=clock)
        self._projects: dict[str, GcpPolicy | str] = {}  # project -> its policy, or why it could not be read

    def close(self) -> None:
        self.api.close()

    def _project_policy(self, project: str) -> GcpPolicy | str:
        if project not in self._projects:
            doing = f"reading the IAM policy of project {project}"
            body = {"options": {"requestedPolicyVersion": POLICY_VERSION}}
            try:
                try:
                    raw = self.api.call(doing, "POST", GoogleApi.RESOURCE_MANAGER,
                                        f"v1/projects/{project}:getIamPolicy", body=body)
                except CloudError as exc:
                    if http_status(exc) != 404:
                        raise
                    # An endpoint that serves only Resource Manager v3 (the same call, the same answer).
                    raw = self.api.call(doing, "POST", GoogleApi.RESOURCE_MANAGER,
                                        f"v3/projects/{project}:getIamPolicy", body=body)
                self._projects[project] = GcpPolicy(f"projects/{project}", raw)
            except Denied as exc:
                self._projects[project] = f"{doing} ({exc.code})"
        return self._projects[project]

    def read_service_account(self, email: str) -> tuple[GcpServiceAccountDocuments | None, str, list[IdentityUse]]:
        """(documents, why there are none, other Kubernetes service accounts acting as it)."""
        account = names.parse_service_account_email(email)
        try:
            found = self.api.get(f"reading Google service account {email}", GoogleApi.IAM,
                                 service_account_path(email))
        except Denied as exc:
            return None, f"{exc.doing} ({exc.code})", []
        if found is None:
            return None, f"Google service account {email}: it does not exist", []
        unreadable: list[str] = []
        policies: list[GcpPolicy] = []
        for project in dict.fromkeys(p for p in (self.target.project, account.project) if p and ":" not in p):
            read = self._project_policy(project)
            if isinstance(read, str):
                unreadable.append(read)
            else:
                policies.append(read)
        keys: list[GcpKey] = []
        try:
            listed = self.api.call(f"listing the keys of {email}", "GET", GoogleApi.IAM,
                                   service_account_path(email) + "/keys", params={"keyTypes": "USER_MANAGED"})
            keys = [_key(k) for k in listed.get("keys") or [] if isinstance(k, dict)]
        except Denied as exc:
            unreadable.append(f"{exc.doing} ({exc.code})")
        uses: list[IdentityUse] = []
        try:
            policy = self.api.call(f"reading the IAM policy of {email}", "POST", GoogleApi.IAM,
                                   service_account_path(email) + ":getIamPolicy",
                                   body={"options": {"requestedPolicyVersion": POLICY_VERSION}})
            uses = _acting_as(email, policy)
        except Denied as exc:
            unreadable.append(f"{exc.doing} ({exc.code}): sharing with other workloads was not checked")
        except CloudError as exc:
            if http_status(exc) != 404:
                raise
        return GcpServiceAccountDocuments(email, tuple(policies), tuple(unreadable), tuple(keys)), "", uses

    def audit(self, app: str, target_name: str, bindings: Sequence[Binding]) -> AuditReport:
        per_identity: dict[str, list[Finding]] = {}
        elsewhere: list[IdentityUse] = []
        mine = {(b.namespace, b.service_account) for b in bindings}
        for binding in bindings:
            key = identity_key(binding)
            if key in per_identity:
                continue
            assert isinstance(binding.identity, GcpIdentity)
            documents, problem, uses = self.read_service_account(binding.identity.email)
            if documents is None:
                per_identity[key] = audit_incomplete(key, [problem])
                continue
            per_identity[key] = audit_service_account(documents)
            elsewhere += [u for u in uses if tuple(u.where.split("/", 1)) not in mine]
        return build_report(app, target_name, Cloud.GCP, bindings, per_identity, elsewhere)


def _key(raw: dict[str, Any]) -> GcpKey:
    return GcpKey(name=str(raw.get("name", "")), key_type=str(raw.get("keyType", "USER_MANAGED")),
                  valid_after=str(raw.get("validAfterTime", "")))


def _acting_as(email: str, policy: dict[str, Any]) -> list[IdentityUse]:
    """Every Kubernetes service account (of any project's pool) allowed to act as the account."""
    uses: list[IdentityUse] = []
    for member in sorted(workload_identity_members(policy)):
        parsed = parse_workload_identity_member(member)
        if parsed is None:
            continue
        project, namespace, account = parsed
        where = f"{namespace}/{account}"
        uses.append(IdentityUse(email.lower(), "", f"Kubernetes service account {where} (pool {project})", where))
    return uses
