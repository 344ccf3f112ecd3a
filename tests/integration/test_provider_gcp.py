"""The GCP provider over real HTTPS: google-auth's AuthorizedSession against the sandbox's IAM, GKE and projects.

Nothing is patched: the provider signs in with the sandbox's service-account key file (token_uri pointing at the
sandbox), finds the APIs through gcloud's override variables and trusts the sandbox CA through REQUESTS_CA_BUNDLE.
Retries and read-modify-write rounds run on a virtual clock."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from google.oauth2 import service_account
from virtual_time import VirtualTime

from keyless.bindings import Binding
from keyless.clouds import Cloud, GcpIdentity
from keyless.errors import CloudError, Denied
from keyless.federation import WORKLOAD_IDENTITY_USER_ROLE, workload_identity_member
from keyless.ownership import ownership_labels
from keyless.plan import ActionKind, ObservedServiceAccount
from keyless.plan.planner import plan_bindings
from keyless.porter.model import ServiceType
from keyless.providers.base import PreflightSeverity
from keyless.providers.gcp import GcpProvider
from keyless.providers.gcp_api import SCOPES
from keyless.providers.retry import RetryPolicy
from keyless.sandbox.gcp import GcpSandbox
from keyless.sandbox.gcp.demo import DEMO_CLUSTER, DEMO_CLUSTER_OFF, DEMO_LOCATION, DEMO_PROJECT_NUMBER
from keyless.targets import GcpTarget

pytestmark = pytest.mark.integration

TARGET = "prod-gke"
NAMESPACE = "shop"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpSandbox]:
    gcp = GcpSandbox(state_dir=tmp_path_factory.mktemp("gcp"), propagation_delay=0.0).start()
    gcp.seed_demo()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(gcp.trust_bundle))  # what `keyless sandbox env` exports
        yield gcp
    gcp.stop()


def target(sandbox: GcpSandbox, cluster: str = DEMO_CLUSTER) -> GcpTarget:
    return GcpTarget.model_validate({"cloud": "gcp", "project": sandbox.project, "location": DEMO_LOCATION,
                                     "cluster": cluster, "namespace": NAMESPACE})


def provider(sandbox: GcpSandbox, time: VirtualTime | None = None, cluster: str = DEMO_CLUSTER) -> GcpProvider:
    time = time or VirtualTime()
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(sandbox.key_file), scopes=list(SCOPES))
    return GcpProvider(target(sandbox, cluster), credentials, sleep=time.sleep, clock=time.clock,
                       env=sandbox.env(), conflict_retry=RetryPolicy(max_attempts=6, base_delay=0.5, deadline=60.0))


def account(sandbox: GcpSandbox) -> str:
    """A fresh Google service account per test: tests share the sandbox, never each other's policies."""
    return sandbox.add_service_account(f"svc-test-{next(_names):04d}")


def binding(app: str, service: str, email: str) -> Binding:
    return Binding(app=app, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.GCP,
                   namespace=NAMESPACE, service_account=f"{app}-{service}", identity=GcpIdentity(email))


def member(app: str, service: str, project: str = "keyless-sandbox") -> str:
    return workload_identity_member(project, NAMESPACE, f"{app}-{service}")


def labelled(app: str, service: str) -> ObservedServiceAccount:
    return ObservedServiceAccount(NAMESPACE, f"{app}-{service}", {}, ownership_labels(app, service, TARGET))


def members(sandbox: GcpSandbox, email: str, role: str = WORKLOAD_IDENTITY_USER_ROLE) -> set[str]:
    return {m for b in sandbox.iam_policy(email).get("bindings", []) if b["role"] == role and not b.get("condition")
            for m in b["members"]}


def converge(p: GcpProvider, app: str, wanted: Sequence[Binding], recorded: Sequence[str] = (),
             accounts: Sequence[ObservedServiceAccount] = ()) -> list[str]:
    """plan then apply, as the engine does (one observe, then apply_all); answers the outcomes' messages."""
    resolved, issues = p.resolve(wanted)
    assert not [i for i in issues if i.severity is PreflightSeverity.BLOCKING], issues
    observed = p.observe(app, TARGET, resolved, recorded, accounts)
    actions, blockers = plan_bindings(resolved, observed, app=app, target=TARGET, cloud=Cloud.GCP,
                                      services_in_app=[b.service for b in wanted])
    assert not blockers
    outcomes = p.apply_all([a for a in actions if a.changes])
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    return [o.message for o in outcomes]


def calls(sandbox: GcpSandbox, since: int, suffix: str) -> int:
    return sum(1 for _, path in sandbox.requests[since:] if path.endswith(suffix))


# --- resolve and preflight ------------------------------------------------------------------------------


def test_missing_and_disabled_accounts_block_and_name_the_email(sandbox: GcpSandbox) -> None:
    retired = sandbox.add_service_account("svc-retired-one", disabled=True)
    missing = "nobody-here@keyless-sandbox.iam.gserviceaccount.com"
    _, issues = provider(sandbox).resolve([binding("app1", "api", missing), binding("app1", "web", retired)])
    assert [i.severity for i in issues] == [PreflightSeverity.BLOCKING, PreflightSeverity.BLOCKING]
    assert missing in issues[0].message
    assert "does not exist" in issues[0].message
    assert "gcloud iam service-accounts create nobody-here --project keyless-sandbox" in issues[0].fix
    assert retired in issues[1].message
    assert "disabled" in issues[1].message
    assert issues[1].fix == f"gcloud iam service-accounts enable {retired} --project keyless-sandbox"


def test_resolve_reads_each_account_once_and_fills_the_direct_access_principal(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    since = len(sandbox.requests)
    resolved, issues = provider(sandbox).resolve([binding("app2", "api", email), binding("app2", "web", email)])
    assert issues == []
    assert calls(sandbox, since, email) == 1  # one GET for two services on one account
    assert calls(sandbox, since, "projects/keyless-sandbox") == 1  # the project number, once
    assert resolved[0].principal == (
        f"principal://iam.googleapis.com/projects/{DEMO_PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
        "keyless-sandbox.svc.id.goog/subject/ns/shop/sa/app2-api")


def test_an_account_of_another_project_is_allowed(sandbox: GcpSandbox) -> None:
    sandbox.add_project("other-project-1", "112233445566")
    other = sandbox.add_service_account("svc-elsewhere", project="other-project-1")
    _, issues = provider(sandbox).resolve([binding("app3", "api", other)])
    assert issues == []


def test_preflight_blocks_a_cluster_without_the_workload_pool_with_the_gcloud_fix(sandbox: GcpSandbox) -> None:
    (issue,) = provider(sandbox, cluster=DEMO_CLUSTER_OFF).preflight([])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "Workload Identity off" in issue.message
    assert issue.fix == (f"gcloud container clusters update {DEMO_CLUSTER_OFF} --location {DEMO_LOCATION} "
                         "--project keyless-sandbox --workload-pool=keyless-sandbox.svc.id.goog")


def test_preflight_warns_about_node_pools_without_the_gke_metadata_server(sandbox: GcpSandbox) -> None:
    sandbox.add_cluster(DEMO_LOCATION, "mixed-pools", metadata_modes=("GKE_METADATA", "GCE_METADATA"))
    (issue,) = provider(sandbox, cluster="mixed-pools").preflight([binding("app4", "api", account(sandbox))])
    assert issue.severity is PreflightSeverity.WARNING
    assert "--workload-metadata=GKE_METADATA" in issue.fix
    assert provider(sandbox).preflight([binding("app4", "api", account(sandbox))]) == []


def test_a_missing_cluster_blocks(sandbox: GcpSandbox) -> None:
    (issue,) = provider(sandbox, cluster="no-such-cluster").preflight([])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "was not found" in issue.message


# --- apply ----------------------------------------------------------------------------------------------


def test_two_services_on_one_account_are_one_read_and_one_write(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    sandbox.add_member(email, "roles/iam.serviceAccountTokenCreator", "group:ops@example.com")
    since = len(sandbox.requests)
    converge(provider(sandbox), "app5", [binding("app5", "api", email), binding("app5", "web", email)])
    assert calls(sandbox, since, ":getIamPolicy") == 1
    assert calls(sandbox, since, ":setIamPolicy") == 1
    assert members(sandbox, email) == {member("app5", "api"), member("app5", "web")}
    assert members(sandbox, email, "roles/iam.serviceAccountTokenCreator") == {"group:ops@example.com"}
    assert sandbox.blind_writes == 0
    since = len(sandbox.requests)
    assert converge(provider(sandbox), "app5", [binding("app5", "api", email), binding("app5", "web", email)]) == []
    assert calls(sandbox, since, ":setIamPolicy") == 0  # a second run writes nothing


def test_a_concurrent_writer_between_read_and_write_loses_nothing(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    other = f"serviceAccount:{account(sandbox)}"  # IAM refuses members that name no existing account
    sandbox.interleave(email, lambda: sandbox.add_member(email, "roles/iam.serviceAccountUser", other))
    time = VirtualTime()
    since = len(sandbox.requests)
    converge(provider(sandbox, time), "app6", [binding("app6", "api", email)])
    assert calls(sandbox, since, ":setIamPolicy") == 2  # the stale write got 409 ABORTED, the redo went through
    assert calls(sandbox, since, ":getIamPolicy") == 2  # read again after the conflict
    assert members(sandbox, email) == {member("app6", "api")}
    assert members(sandbox, email, "roles/iam.serviceAccountUser") == {other}
    assert sandbox.blind_writes == 0
    assert time.sleeps  # backed off before the redo


def test_removing_a_service_removes_only_its_member(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    p = provider(sandbox)
    converge(p, "app7", [binding("app7", "api", email), binding("app7", "web", email)])
    by_hand = member("someone", "else")
    sandbox.add_member(email, WORKLOAD_IDENTITY_USER_ROLE, by_hand)
    sandbox.add_member(email, WORKLOAD_IDENTITY_USER_ROLE, "user:dev@example.com")
    # `web` left porter.yaml; its account is still labelled for the app, and records the email it was bound to.
    messages = converge(provider(sandbox), "app7", [binding("app7", "api", email)], recorded=[email],
                        accounts=[labelled("app7", "api"), labelled("app7", "web")])
    assert any("removed" in m for m in messages)
    assert members(sandbox, email) == {member("app7", "api"), by_hand, "user:dev@example.com"}


def test_moving_a_connection_to_another_account_moves_the_member(sandbox: GcpSandbox) -> None:
    old, new = account(sandbox), account(sandbox)
    converge(provider(sandbox), "app8", [binding("app8", "api", old)])
    since = len(sandbox.requests)
    converge(provider(sandbox), "app8", [binding("app8", "api", new)], recorded=[old],
             accounts=[labelled("app8", "api")])
    assert members(sandbox, new) == {member("app8", "api")}
    assert members(sandbox, old) == set()
    writes = [path for _, path in sandbox.requests[since:] if path.endswith(":setIamPolicy")]
    assert [new in w for w in writes] == [True, False]  # the new account is written before the old one loses it


def test_a_member_made_by_hand_for_the_apps_account_is_used_as_found(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    sandbox.add_member(email, WORKLOAD_IDENTITY_USER_ROLE, member("app9", "api"))
    p = provider(sandbox)
    resolved, _ = p.resolve([binding("app9", "api", email)])
    observed = p.observe("app9", TARGET, resolved)
    actions, _ = plan_bindings(resolved, observed, app="app9", target=TARGET, cloud=Cloud.GCP,
                               services_in_app=["api"])
    assert [a.kind for a in actions] == [ActionKind.NOOP]


def test_throttling_and_unavailability_are_retried(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    sandbox.fail_next(429, 2, ":getIamPolicy", retry_after=3)
    sandbox.fail_next(503, 1, ":setIamPolicy")
    time = VirtualTime()
    converge(provider(sandbox, time), "app10", [binding("app10", "api", email)])
    assert members(sandbox, email) == {member("app10", "api")}
    assert time.sleeps.count(3.0) >= 1 or any(s >= 3.0 for s in time.sleeps)  # Retry-After was honoured


def test_a_denied_write_says_which_permission_keyless_needs(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    sandbox.deny("iam.serviceAccounts.setIamPolicy")
    try:
        p = provider(sandbox)
        resolved, _ = p.resolve([binding("app11", "api", email)])
        actions, _ = plan_bindings(resolved, p.observe("app11", TARGET, resolved), app="app11", target=TARGET,
                                   cloud=Cloud.GCP, services_in_app=["api"])
        (outcome,) = p.apply_all(actions)
    finally:
        sandbox.allow()
    assert not outcome.ok
    assert "PERMISSION_DENIED" in outcome.message
    assert members(sandbox, email) == set()


def test_a_denied_read_is_a_denied_error(sandbox: GcpSandbox) -> None:
    sandbox.deny("container.clusters.get")
    try:
        with pytest.raises(Denied) as caught:
            provider(sandbox).preflight([])
    finally:
        sandbox.allow()
    assert "container.clusters.get" in caught.value.hint


def test_an_untrusted_endpoint_says_to_set_the_ca_bundle(sandbox: GcpSandbox, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # the public roots only: the sandbox CA is unknown
    with pytest.raises(CloudError) as caught:
        provider(sandbox).preflight([])
    assert "REQUESTS_CA_BUNDLE" in caught.value.hint


def test_the_project_number_comes_from_resource_manager_v1_where_v3_is_not_served(sandbox: GcpSandbox) -> None:
    email = account(sandbox)
    sandbox.fail_next(404, 1, "/crm/v3/projects/")
    since = len(sandbox.requests)
    resolved, _ = provider(sandbox).resolve([binding("app12", "api", email)])
    assert resolved[0].principal is not None
    assert f"/projects/{DEMO_PROJECT_NUMBER}/" in resolved[0].principal
    assert [p for _, p in sandbox.requests[since:] if "/crm/" in p] == [
        "/crm/v3/projects/keyless-sandbox", "/crm/v1/projects/keyless-sandbox"]
