"""Unit tests of keyless.plan with plain values: planning cloud bindings, saved plans, rendering, digests."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from rich.console import Console

from keyless.bindings import Binding, Source
from keyless.clouds import AwsRole, AzureIdentity, Cloud, GcpIdentity, Identity
from keyless.diagnostics import Position
from keyless.ownership import Owner
from keyless.plan import (
    AccountSpec,
    Action,
    ActionKind,
    Blocker,
    ObjectRef,
    Observed,
    ObservedBinding,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    PodTemplateSettings,
    Resource,
    planfile,
)
from keyless.plan.planfile import PLAN_FORMAT
from keyless.plan.planner import plan_bindings
from keyless.plan.render import render_text
from keyless.porter.model import ServiceType

APP = "shop"
TARGET = "prod"
NS = "shop"
ADDON = "arn:aws:iam::aws:policy/eks-addon-owner"


def arn(role: str) -> str:
    return f"arn:aws:iam::111122223333:role/{role}"


def mine(service: str = "api") -> Owner:
    return Owner(APP, service, TARGET)


def want(service: str = "api", role: str = "api-role", *, namespace: str = NS) -> Binding:
    return Binding(app=APP, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AWS,
                   namespace=namespace, service_account=f"{APP}-{service}", identity=AwsRole(role, arn=arn(role)))


def seen(service: str = "api", role: str = "api-role", *, id: str = "a-1", owner: Owner | None = None,
         managed_by: str | None = None, namespace: str = NS, service_account: str | None = None) -> ObservedBinding:
    return ObservedBinding(cloud=Cloud.AWS, id=id, namespace=namespace,
                           service_account=service_account or f"{APP}-{service}",
                           identity=AwsRole(arn(role), arn=arn(role)),
                           owner=owner, managed_by=managed_by)


def plan(desired: list[Binding], observed: list[ObservedBinding], *, cloud: Cloud = Cloud.AWS,
         services: tuple[str, ...] = ("api",)) -> tuple[list[Action], list[Blocker]]:
    """The planner with the traits of `cloud` from the registry: AWS updates in place and tags what it adopts;
    Azure replaces a credential and uses an identical hand-made one as it is."""
    return plan_bindings(desired, observed, app=APP, target=TARGET, cloud=cloud, services_in_app=services)


def only(actions: list[Action]) -> Action:
    assert len(actions) == 1, [a.line() for a in actions]
    return actions[0]


# --- planning: one case per action kind -----------------------------------------------------------


def test_create_when_nothing_is_bound() -> None:
    desired = want()
    actions, blockers = plan([desired], [])
    action = only(actions)
    assert (action.kind, action.resource, action.service, action.address) == (
        ActionKind.CREATE, Resource.CLOUD_BINDING, "api", "shop/shop-api")
    assert action.reason == f"bind to {arn('api-role')}"
    assert action.desired == desired
    assert action.observed is None
    assert blockers == []


def test_noop_when_owned_and_bound_to_the_same_identity() -> None:
    existing = seen(owner=mine())
    actions, blockers = plan([want()], [existing])
    action = only(actions)
    assert action.kind is ActionKind.NOOP
    assert not action.changes
    assert action.observed == existing
    assert action.reason == f"bound to {arn('api-role')}"
    assert blockers == []


def test_an_identical_binding_a_cloud_cannot_mark_is_used_as_is_and_stays_a_noop() -> None:
    """Azure credentials take no tags: adopting cannot make them keyless's, so every plan would say "adopt"
    again. Instead the plan uses the identical binding (no change) and never deletes it later."""
    existing = seen(owner=None, managed_by=None)
    actions, blockers = plan([want()], [existing], cloud=Cloud.AZURE)
    action = only(actions)
    assert action.kind is ActionKind.NOOP
    assert "made outside keyless" in action.reason
    assert blockers == []
    # The service goes away: the hand-made binding is not keyless's to delete.
    actions, _ = plan([], [existing], cloud=Cloud.AZURE, services=())
    assert actions == []


def test_adopt_an_identical_binding_nobody_owns() -> None:
    existing = seen(owner=None, managed_by=None)
    actions, blockers = plan([want()], [existing])
    action = only(actions)
    assert action.kind is ActionKind.ADOPT
    assert action.observed == existing
    assert "identical binding" in action.reason
    assert "takes ownership" in action.reason
    assert blockers == []


def test_update_in_place_when_the_owned_identity_changed() -> None:
    existing = seen(role="old-role", owner=mine())
    actions, blockers = plan([want(role="new-role")], [existing], cloud=Cloud.AWS)
    action = only(actions)
    assert action.kind is ActionKind.UPDATE
    assert action.reason == f"identity changes from {arn('old-role')} to {arn('new-role')}"
    assert action.observed == existing
    assert action.desired is not None
    assert action.desired.identity.describe() == arn("new-role")
    assert blockers == []


def test_replace_when_the_cloud_cannot_change_the_identity_in_place() -> None:
    existing = seen(role="old-role", owner=mine())
    actions, blockers = plan([want(role="new-role")], [existing], cloud=Cloud.AZURE)
    action = only(actions)
    assert action.kind is ActionKind.REPLACE
    assert action.reason == f"identity changes from {arn('old-role')} to {arn('new-role')}"
    assert action.observed == existing
    assert blockers == []


@pytest.mark.parametrize(("old_namespace", "old_account"), [
    ("old-ns", "shop-api"),  # the target's namespace changed
    (NS, "shop-api-legacy"),  # the service account name changed
])
def test_replace_an_owned_binding_that_moved(old_namespace: str, old_account: str) -> None:
    existing = seen(owner=mine(), namespace=old_namespace, service_account=old_account)
    actions, blockers = plan([want()], [existing])
    action = only(actions)
    assert action.kind is ActionKind.REPLACE
    assert action.address == "shop/shop-api"
    assert action.reason == f"service account moves from {old_namespace}/{old_account}"
    assert action.observed == existing
    assert blockers == []


def test_delete_when_the_service_was_removed() -> None:
    existing = seen(service="old", role="old-role", owner=mine("old"))
    actions, blockers = plan([], [existing], services=("api",))
    action = only(actions)
    assert (action.kind, action.service, action.address) == (ActionKind.DELETE, "old", "shop/shop-old")
    assert "service removed" in action.reason
    assert "connection removed" not in action.reason
    assert arn("old-role") in action.reason
    assert action.desired is None
    assert action.observed == existing
    assert blockers == []


def test_delete_when_the_connection_was_removed_but_the_service_stays() -> None:
    existing = seen(owner=mine())
    actions, _ = plan([], [existing], services=("api",))
    action = only(actions)
    assert action.kind is ActionKind.DELETE
    assert "connection removed" in action.reason
    assert "service removed" not in action.reason


@pytest.mark.parametrize(("owner", "managed_by", "who"), [
    (None, None, "someone else"),
    (Owner("other-app", "api", TARGET), None, "another app"),
    (None, ADDON, "an EKS add-on"),
])
def test_someone_elses_binding_to_another_role_blocks_and_is_left_alone(
        owner: Owner | None, managed_by: str | None, who: str) -> None:
    theirs = seen(role="their-role", id="theirs", owner=owner, managed_by=managed_by)
    actions, blockers = plan([want()], [theirs], cloud=Cloud.AWS)
    assert actions == []  # neither a create over it, nor a delete or replace of it
    blocker = only_blocker(blockers)
    assert blocker.service == "api"
    assert f"already bound to {arn('their-role')} by {who} (id theirs)" in blocker.message
    assert "does not change bindings it does not own" in blocker.hint


def only_blocker(blockers: list[Blocker]) -> Blocker:
    assert len(blockers) == 1, blockers
    return blockers[0]


def test_a_foreign_binding_is_not_taken_as_a_moved_binding_elsewhere() -> None:
    # The owned binding of `worker` elsewhere must stay with worker; api's key holds someone else's binding.
    theirs = seen(role="their-role", id="theirs")
    worker = seen(service="worker", role="worker-role", id="w-1", owner=mine("worker"))
    actions, blockers = plan([want(), want("worker", "worker-role")], [theirs, worker],
                             services=("api", "worker"))
    assert [(a.kind, a.service) for a in actions] == [(ActionKind.NOOP, "worker")]
    assert [b.service for b in blockers] == ["api"]


def test_an_add_on_binding_with_the_same_identity_is_blocked_never_adopted() -> None:
    addon = seen(owner=None, managed_by=ADDON)
    actions, blockers = plan([want()], [addon])
    assert actions == []
    blocker = only_blocker(blockers)
    assert blocker.message == f"shop/shop-api is bound by {ADDON}"
    assert "add-on" in blocker.hint


def test_an_add_on_binding_is_never_deleted_even_with_keylesss_tags() -> None:
    addon = seen(owner=mine(), managed_by=ADDON)
    assert plan([], [addon], services=()) == ([], [])
    assert plan([], [addon], services=("api",)) == ([], [])


@pytest.mark.parametrize("owner", [
    Owner("other-app", "api", TARGET),
    Owner(APP, "api", "staging"),
], ids=["another-app", "another-target"])
def test_bindings_of_another_app_or_target_are_never_deleted(owner: Owner) -> None:
    elsewhere = seen(owner=owner, service_account="shop-api-x")
    assert plan([], [elsewhere], services=()) == ([], [])
    # Nor taken over as a "moved" binding of the same service.
    actions, _ = plan([want()], [elsewhere])
    assert [a.kind for a in actions] == [ActionKind.CREATE]


@pytest.mark.parametrize("owner", [
    Owner("other-app", "api", TARGET),
    Owner(APP, "api", "staging"),
], ids=["another-app", "another-target"])
def test_an_identical_binding_owned_by_another_app_or_target_is_not_adopted(owner: Owner) -> None:
    theirs = seen(owner=owner, id="theirs")
    actions, blockers = plan([want()], [theirs])
    assert [a.kind for a in actions] == []
    assert [b.service for b in blockers] == ["api"]


# --- saved plans ---------------------------------------------------------------------------------------

AZURE = AzureIdentity("shop-worker-id", "platform", client_id="11111111-2222-3333-4444-555555555555",
                      tenant_id="99999999-8888-7777-6666-555555555555")
GCP = GcpIdentity("report@my-project.iam.gserviceaccount.com")


def full_plan() -> Plan:
    aws = replace(want(), source=Source("porter.yaml", Position(7, 9)))

    def other(service: str, identity: Identity, cloud: Cloud) -> Binding:
        return Binding(app=APP, service=service, kind=ServiceType.JOB, target=TARGET, cloud=cloud, namespace=NS,
                       service_account=f"{APP}-{service}", identity=identity)

    old = ObservedBinding(cloud=Cloud.AWS, id="a-1", namespace=NS, service_account="shop-api",
                          identity=AwsRole(arn("old"), arn=arn("old")), owner=mine(),
                          details={"associationArn": "arn:aws:eks:x"})
    gone = ObservedBinding(cloud=Cloud.AWS, id="a-2", namespace=NS, service_account="shop-gone",
                           identity=AwsRole(arn("gone"), arn=arn("gone")), owner=mine("gone"), managed_by=None)
    elsewhere = ObservedBinding(cloud=Cloud.AZURE, id="b-1", namespace=NS, service_account="shop-worker",
                                identity=AZURE, mismatch=("issuer https://other/",), details={"name": "x"})
    account = AccountSpec(labels={"keyless.dev/app": APP}, annotations={"keyless.dev/identity": arn("api-role")})
    template = PodTemplateSettings("shop-api", annotations={"keyless.dev/identity": "f1"},
                                   labels={"azure.workload.identity/use": "true"})
    actions = (
        Action(ActionKind.UPDATE, Resource.CLOUD_BINDING, "api", binding_ref("shop-api"), "identity changes", aws,
               old),
        Action(ActionKind.CREATE, Resource.SERVICE_ACCOUNT, "api", ObjectRef("ServiceAccount", NS, "shop-api"),
               "create", aws, account=account, remove_annotations=("eks.amazonaws.com/role-arn",),
               pod_template=template),
        Action(ActionKind.ADOPT, Resource.CLOUD_BINDING, "worker", binding_ref("shop-worker"), "adopt",
               other("worker", AZURE, Cloud.AZURE), elsewhere),
        Action(ActionKind.NOOP, Resource.CLOUD_BINDING, "report", binding_ref("shop-report"), "bound",
               other("report", GCP, Cloud.GCP)),
        Action(ActionKind.DELETE, Resource.CLOUD_BINDING, "gone", binding_ref("shop-gone"), "service removed", None,
               gone),
        Action(ActionKind.UPDATE, Resource.WORKLOAD, "api", ObjectRef("Deployment", NS, "shop-api"), "restart",
               pod_template=PodTemplateSettings(None, annotations={"keyless.dev/identity": None})),
    )
    return Plan(app=APP, target=TARGET, cloud=Cloud.AWS, actions=actions, observed_digest="abc123",
                blockers=(Blocker("x", "shop/shop-x is bound by someone", "delete it"), Blocker("y", "no hint")),
                notes=("api: the add-on is DEGRADED",))


def test_a_saved_plan_loads_back_equal() -> None:
    original = full_plan()
    text = json.dumps(planfile.dump(original))
    loaded = planfile.load(json.loads(text))
    assert loaded == original
    assert [type(a.desired.identity) for a in loaded.actions if a.desired] == [
        AwsRole, AwsRole, AzureIdentity, GcpIdentity]


def test_a_saved_plan_records_format_summary_and_symbols() -> None:
    data = planfile.dump(full_plan())
    assert data["format"] == PLAN_FORMAT
    assert data["summary"] == full_plan().summary()
    assert [a["symbol"] for a in data["actions"]] == ["~", "+", "<=", " ", "-", "~"]


@pytest.mark.parametrize("version", [PLAN_FORMAT + 1, 0, "1", None])
def test_a_plan_of_another_format_is_rejected(version: object) -> None:
    data = planfile.dump(full_plan())
    data["format"] = version
    with pytest.raises(ValueError, match=r"unsupported plan format"):
        planfile.load(data)


# --- summary and text ---------------------------------------------------------------------------------


def a_plan(*actions: Action, blockers: tuple[Blocker, ...] = (), notes: tuple[str, ...] = ()) -> Plan:
    return Plan(app=APP, target=TARGET, cloud=Cloud.AWS, actions=actions, observed_digest="d",
                blockers=blockers, notes=notes)


def binding_ref(service_account: str) -> ObjectRef:
    return ObjectRef("Pod Identity association", NS, service_account)


def act(kind: ActionKind, service: str = "api", account: str = "shop-api", reason: str = "why") -> Action:
    return Action(kind, Resource.CLOUD_BINDING, service, binding_ref(account), reason)


def test_summary_of_an_empty_plan_says_no_changes() -> None:
    assert a_plan().summary() == "No changes. The cloud and the cluster match porter.yaml."
    assert a_plan(act(ActionKind.NOOP)).summary().startswith("No changes.")
    assert a_plan().changes == []


def test_summary_counts_each_kind_and_blockers() -> None:
    the_plan = a_plan(act(ActionKind.CREATE), act(ActionKind.CREATE, "b"), act(ActionKind.DELETE, "c"),
                      act(ActionKind.NOOP, "d"), blockers=(Blocker("e", "in the way"),))
    assert the_plan.summary() == ("Plan: 2 to create, 0 to update, 0 to replace, 1 to delete, 0 to adopt. "
                                  "1 blocked.")
    assert a_plan(blockers=(Blocker("e", "in the way"),)).summary().endswith("1 blocked.")


def test_text_shows_every_symbol_and_hides_noop_unless_asked() -> None:
    the_plan = a_plan(
        act(ActionKind.CREATE, "a", "shop-a", "bind to r"),
        act(ActionKind.UPDATE, "b", "shop-b", "identity changes"),
        act(ActionKind.REPLACE, "c", "shop-c", "moves"),
        act(ActionKind.DELETE, "d", "shop-d", "service removed"),
        act(ActionKind.ADOPT, "e", "shop-e", "takes ownership"),
        act(ActionKind.NOOP, "f", "shop-f", "bound to r"),
    )
    lines = render_text(the_plan).splitlines()
    assert lines[0] == "keyless plan for app 'shop' on target 'prod' (aws)"
    assert "    + cloud_binding shop/shop-a: bind to r" in lines
    assert "    ~ cloud_binding shop/shop-b: identity changes" in lines
    assert "  -/+ cloud_binding shop/shop-c: moves" in lines
    assert "    - cloud_binding shop/shop-d: service removed" in lines
    assert "   <= cloud_binding shop/shop-e: takes ownership" in lines
    assert not any("shop/shop-f" in line for line in lines)
    assert "  service f" not in lines  # a service with nothing to change gets no heading
    assert lines[-1] == the_plan.summary()
    shown = render_text(the_plan, show_noop=True).splitlines()
    assert "  service f" in shown
    assert "      cloud_binding shop/shop-f: bound to r" in shown


def test_text_shows_blockers_with_hints_and_notes() -> None:
    text = render_text(a_plan(blockers=(Blocker("api", "shop/shop-api is taken", "delete it"),),
                              notes=("api: the add-on is DEGRADED",)))
    assert "  ! blocked: service api: shop/shop-api is taken\n      hint: delete it" in text
    assert "  note: api: the add-on is DEGRADED" in text


def as_terminal_shows_it(markup_text: str) -> str:
    console = Console(file=io.StringIO(), color_system=None, width=500, highlight=False, soft_wrap=True)
    console.print(markup_text, markup=True)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().rstrip("\n")


def test_markup_escapes_brackets_so_a_terminal_shows_the_plain_text() -> None:
    the_plan = a_plan(
        act(ActionKind.CREATE, "api", "shop-[bold]api", "bind to [red]role[/red]"),
        act(ActionKind.DELETE, "old", "shop-old", "was bound to x[/]"),
        blockers=(Blocker("api", "bound by [someone]", "delete [it]"),),
    )
    marked = render_text(the_plan, markup=True)
    assert "\\[bold]" in marked
    assert "[green]" in marked  # colour tags are real markup
    assert as_terminal_shows_it(marked) == render_text(the_plan)


def test_markup_escapes_brackets_in_notes() -> None:
    the_plan = a_plan(act(ActionKind.CREATE), notes=("api: role tag [team] is missing",))
    assert as_terminal_shows_it(render_text(the_plan, markup=True)) == render_text(the_plan)


# --- observed digest -------------------------------------------------------------------------------------


def observed_world(role: str = "api-role") -> Observed:
    return Observed(
        bindings=(seen(role=role, owner=mine()), seen("worker", "worker-role", id="w-1", owner=None)),
        service_accounts=(
            ObservedServiceAccount(NS, "shop-api", {"keyless.dev/identity": arn("api-role")}, {"a": "1"}),
            ObservedServiceAccount(NS, "shop-worker", {}, {"b": "2"}),
        ),
        workloads=(
            ObservedWorkload(NS, "Deployment", "shop-api", "api", "shop-api", "f1"),
            ObservedWorkload(NS, "CronJob", "shop-report", "report", None, None),
        ),
    )


def test_digest_is_stable_under_reordering() -> None:
    world = observed_world()
    shuffled = Observed(bindings=world.bindings[::-1], service_accounts=world.service_accounts[::-1],
                        workloads=world.workloads[::-1])
    assert shuffled.digest() == world.digest()
    assert observed_world().digest() == world.digest()
    assert len(world.digest()) == 64


def test_digest_changes_when_an_identity_changes() -> None:
    assert observed_world("api-role").digest() != observed_world("other-role").digest()
    world = observed_world()
    without = replace(world, bindings=world.bindings[:1])
    assert without.digest() != world.digest()
    assert Observed().digest() != world.digest()


def test_a_plan_saved_by_the_previous_format_is_refused_with_the_way_out() -> None:
    data = planfile.dump(full_plan())
    data["format"] = 1  # format 1 kept only display addresses and details, which apply had to parse back
    with pytest.raises(ValueError, match=r"earlier keyless \(plan format 1\).*keyless plan --out"):
        planfile.load(data)


def test_a_saved_plan_keeps_every_typed_field_apply_reads() -> None:
    loaded = planfile.load(json.loads(json.dumps(planfile.dump(full_plan()))))
    account = loaded.actions[1]
    assert account.ref == ObjectRef("ServiceAccount", NS, "shop-api")
    assert account.remove_annotations == ("eks.amazonaws.com/role-arn",)
    assert account.account is not None
    assert dict(account.account.annotations) == {"keyless.dev/identity": arn("api-role")}
    adopted = loaded.actions[2].observed
    assert adopted is not None
    assert adopted.mismatch == ("issuer https://other/",)
    assert isinstance(adopted.identity, AzureIdentity)
    restart = loaded.actions[5]
    assert restart.pod_template == PodTemplateSettings(None, annotations={"keyless.dev/identity": None})
