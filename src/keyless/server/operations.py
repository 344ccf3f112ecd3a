"""What the API and the dashboard do, in one place: check the input, change the store, and call the engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from keyless import clouds, engine, ownership
from keyless.audit import AuditReport
from keyless.bindings import desired_bindings, workloads
from keyless.diagnostics import START, Diagnostic, Severity
from keyless.errors import Conflict, InvalidInput, KeylessError, NotFound, UsageError
from keyless.kube.base import KubeSide
from keyless.operator.resource import KeylessAppState, keylessapp_manifest, keylessapp_state, parse_spec
from keyless.plan import Plan
from keyless.porter import edit
from keyless.porter.loader import LoadedApp, identity_types, load_app, resolve_app_name
from keyless.providers.base import PreflightIssue, Provider
from keyless.store import (
    AppChange,
    AppRecord,
    ConnectionRecord,
    DeployRecord,
    DeployStatus,
    HandoverRecord,
    ServiceRecord,
    Store,
    TargetRecord,
)
from keyless.targets import AnyTarget, KubernetesMode, load_targets

Connector = Callable[[str, AnyTarget], tuple[Provider, KubeSide]]


class OperatorCluster(Protocol):
    """The calls the control plane makes in a target's cluster to hand an app to the operator (`kube.home`)."""

    def read_keylessapp(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def apply_keylessapp(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete_keylessapp(self, namespace: str, name: str) -> bool: ...
    def close(self) -> None: ...


OperatorConnector = Callable[[AnyTarget, Mapping[str, str]], OperatorCluster]

# The RBAC the control plane needs for handing apps over (README: Kubernetes permissions).
_HANDOVER_RBAC_HINT = ("the control plane's kubeconfig user needs get, create, patch and delete on keylessapps "
                       "(keyless.dev) in the target namespace (README: Kubernetes permissions)")


def connect_operator_cluster(target: AnyTarget, env: Mapping[str, str]) -> OperatorCluster:
    """The target's cluster (its kubeconfig and context, as every other keyless call there), as the control plane:
    its own field manager, and few retries, since a person waits on the answer."""
    from keyless.kube.home import HomeCluster
    from keyless.providers.retry import RetryPolicy

    return HomeCluster(side=target.kubernetes, env=env, field_manager=ownership.CONTROL_PLANE_MANAGER,
                       rbac_hint=_HANDOVER_RBAC_HINT,
                       policy=RetryPolicy(max_attempts=2, base_delay=0.25, max_delay=1.0, deadline=10.0))

def connection_fields(type_: str) -> tuple[str, ...]:
    """The fields a person fills in for a connection type (porter.yaml spelling), in the order the dashboard shows."""
    return tuple(f.name for f in clouds.by_connection_type(type_).connection_fields)


def identity_connection_type(type_: str) -> str:
    """`type_` when it is a connection the control plane edits (awsRole, ...); else a UsageError naming them."""
    return clouds.by_connection_type(type_).connection_type


def require_service(app: AppRecord, name: str) -> ServiceRecord:
    """The app's service (or predeploy/initialDeploy job) of this name; NotFound lists the ones it has."""
    service = app.service(name)
    if service is None:
        known = ", ".join(s.name for s in app.services) or "none"
        raise NotFound(f"app {app.name!r} has no service {name!r}", f"its services: {known}")
    return service


def app_file(app: str) -> str:
    """The file name diagnostics use for an app's stored porter.yaml."""
    return f"{app}/porter.yaml"


def services_of(loaded: LoadedApp) -> list[ServiceRecord]:
    """Every workload of the app with its identity connections, as the store indexes them."""
    kinds = set(identity_types())
    found: list[ServiceRecord] = []
    for name, kind, workload, path in workloads(loaded):
        connections = []
        for connection in workload.connections:
            written = connection.model_dump(by_alias=True, exclude_none=True, mode="json")
            if written.get("type") in kinds:
                settings = {k: str(v) for k, v in written.items() if k != "type"}
                connections.append(ConnectionRecord(type=str(written["type"]), settings=settings))
        found.append(ServiceRecord(name=name, kind=kind.value if path[0] == "services" else str(path[0]),
                                   connections=tuple(connections)))
    return found


def target_settings(target: AnyTarget) -> dict[str, Any]:
    """A validated target as the targets file spells it (what the store keeps and the API returns)."""
    return target.model_dump(by_alias=True, exclude_none=True, mode="json")


def _invalid(file: str, message: str, hint: str = "") -> InvalidInput:
    return InvalidInput([Diagnostic(Severity.ERROR, file, START, message, hint)])


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    """One change made from the dashboard or the API to a service's identity connection."""

    service: str
    type: str
    fields: Mapping[str, str] | None  # None detaches


class ControlPlane:
    """The operations behind every API route and dashboard page."""

    def __init__(self, store: Store, env: Mapping[str, str], connector: Connector = engine.connect,
                 files_dir: Path | None = None, operator_connector: OperatorConnector = connect_operator_cluster,
                 ) -> None:
        self.store = store
        self.env = env
        self.connector = connector
        self.operator_connector = operator_connector
        # Where targets given through the API may point (kubeconfig, outDir, caBundle): an admin's request must
        # not make the server read or write any file of its machine. None: the operator's own input (the targets
        # file `keyless serve` imports at start), taken as it is.
        self.files_dir = files_dir

    # --- targets -----------------------------------------------------------------------------------

    def _parse_targets(self, text: str, file: str) -> dict[str, AnyTarget]:
        return dict(load_targets(text.encode(), file, self.env).by_name)

    def put_target(self, name: str, body: Mapping[str, Any], actor: str) -> tuple[TargetRecord, bool]:
        """Create or replace a target from the fields a targets file gives it (validated the same way)."""
        document = json.dumps({"targets": {name: dict(body)}}, indent=2)
        target = self._confined(name, self._parse_targets(document, f"target {name} (request body)")[name])
        return self.store.put_target(name, clouds.for_target(target).cloud.value, target_settings(target), actor)

    def import_targets(self, text: str, file: str, actor: str) -> list[tuple[TargetRecord, bool]]:
        """Every target of a targets file, created or replaced."""
        parsed = {name: self._confined(name, t) for name, t in self._parse_targets(text, file).items()}
        return [self.store.put_target(name, clouds.for_target(t).cloud.value, target_settings(t), actor)
                for name, t in parsed.items()]

    def _confined(self, name: str, target: AnyTarget) -> AnyTarget:
        """The target with its file paths resolved inside files_dir (relative ones against it); a path outside it
        is refused, and so is any path at all when the server has no files directory."""
        paths = target.file_paths()
        if not paths or self.files_dir is None:
            return target
        root = self.files_dir.resolve()
        resolved: dict[str, str] = {}
        for field, value in paths.items():
            path = (root / value).resolve()  # an absolute value stays absolute
            if not path.is_relative_to(root):
                raise UsageError(f"target {name!r}: {field} {value!r} is outside the server's files directory {root}",
                                 f"put the file under {root} and name it relative to it")
            resolved[field] = str(path)
        return target.with_file_paths(resolved)

    def target(self, name: str) -> AnyTarget:
        record = self.store.get_target(name)
        document = json.dumps({"targets": {name: record.settings}})
        return self._parse_targets(document, f"target {name}")[name]

    def preflight_target(self, name: str) -> list[PreflightIssue]:
        target = self.target(name)
        provider, _ = self.connector(name, target)
        return provider.preflight([])

    # --- apps --------------------------------------------------------------------------------------

    def load(self, app: AppRecord) -> LoadedApp:
        return load_app(app.porter_yaml.encode(), app_file(app.name), self.env)

    def import_app(self, text: str, name: str | None, target_name: str | None, actor: str) -> AppRecord:
        """Validate a porter.yaml (as `keyless validate` does) and store it as a new app."""
        loaded = load_app(text.encode(), "porter.yaml", self.env)
        app_name = resolve_app_name(loaded, name, {})
        if loaded.app.name and name and loaded.app.name != name:
            raise _invalid("porter.yaml", f"the file names the app {loaded.app.name!r}, the request {name!r}",
                           "leave out the name in the request or make them the same")
        if target_name is not None:
            self.store.get_target(target_name)  # NotFound before anything is written
        return self.store.create_app(app_name, text, services_of(loaded), target_name, actor)

    def replace_app(self, name: str, text: str, actor: str, expected_revision: int | None = None) -> AppRecord:
        loaded = load_app(text.encode(), app_file(name), self.env)
        if loaded.app.name and loaded.app.name != name:
            raise _invalid(app_file(name), f"the file names the app {loaded.app.name!r}, not {name!r}",
                           "an app keeps its name; import the file as a new app instead")
        return self.store.update_app(name, actor=actor, action="app.update", subject=f"app/{name}",
                                     expected_revision=expected_revision, porter_yaml=text,
                                     services=services_of(loaded))

    def export_app(self, name: str) -> str:
        """The app's porter.yaml, with its name, so that `keyless apply -f` on it needs no --app."""
        app = self.store.get_app(name)
        return edit.with_app_name(app.porter_yaml, app.name)

    def delete_app(self, name: str, actor: str, force: bool = False) -> None:
        """Forget an app. Refused while that could leave bindings in the cloud that nothing tracks any more:
        the app still has identity connections, or its last changes were never deployed."""
        app = self.store.get_app(name)
        if not force:
            connected = sorted(s.name for s in app.services if s.connections)
            if connected:
                raise Conflict(f"app {name!r} still has identity connections ({', '.join(connected)}); forgetting "
                               "it would leave their cloud bindings behind",
                               "detach the connections and deploy, then delete; or add ?force=true to forget it "
                               "anyway (the bindings stay; `keyless status --app` still finds them)")
            deployed = self.last_deployed(name)
            if deployed is not None and deployed.app_revision < app.revision:
                raise Conflict(f"app {name!r} has changes that were never deployed (revision {app.revision}, last "
                               f"deployed {deployed.app_revision}); its cloud bindings may still exist",
                               "deploy it first, then delete; or add ?force=true to forget it anyway")
        self.store.delete_app(name, actor)

    def last_deployed(self, name: str) -> DeployRecord | None:
        """The app's latest deploy that reached the cloud and the cluster (succeeded, or found nothing to change):
        its `app_revision` is the porter.yaml revision the world was last brought to."""
        return next((d for d in self.store.list_deploys(name)
                     if d.status in (DeployStatus.SUCCEEDED, DeployStatus.NO_CHANGES)), None)

    def set_app_target(self, name: str, target_name: str | None, actor: str) -> AppRecord:
        if target_name is not None:
            self.store.get_target(target_name)
        return self.store.update_app(name, actor=actor, action="app.target", subject=f"app/{name}",
                                     target_name=target_name, set_target=True)

    def change_connection(self, app_name: str, change: ConnectionChange, actor: str,
                          expected_revision: int | None = None) -> AppRecord:
        """Attach, change or detach one identity connection: the same edit a person would make to porter.yaml.

        The edit is made on the app's current text inside the store's locked read-modify-write, so concurrent
        changes of one app queue and none that answered 200 is lost. With `expected_revision` it applies only to
        that revision (409 otherwise)."""
        identity_connection_type(change.type)
        return self.store.edit_app(app_name, lambda app: self._connection_change(app, change), actor=actor,
                                   expected_revision=expected_revision)

    def _connection_change(self, app: AppRecord, change: ConnectionChange) -> AppChange | None:
        """The new porter.yaml text for `change` on `app` (validated like a file), or None when nothing changes."""
        service = require_service(app, change.service)
        if change.fields is None:
            if service.connection(change.type) is None:
                return None
            text = edit.remove_connection(app.porter_yaml, change.service, change.type)
            action = "connection.detach"
        else:
            allowed = connection_fields(change.type)
            unknown = sorted(set(change.fields) - set(allowed))
            if unknown:
                raise UsageError(f"{change.type} connections have no field {', '.join(map(repr, unknown))}",
                                 f"its fields: {', '.join(allowed)}")
            missing = [f for f in allowed if not str(change.fields.get(f) or "").strip()]
            if missing:
                raise UsageError(f"{change.type} needs {', '.join(missing)}",
                                 f"fill in {', '.join(allowed)}")
            wanted = {"type": change.type, **{f: str(change.fields[f]).strip() for f in allowed}}
            current = service.connection(change.type)
            if current is not None and {"type": current.type, **current.settings} == wanted:
                return None
            text = edit.set_connection(app.porter_yaml, change.service, wanted)
            action = "connection.change" if current is not None else "connection.attach"
        # The edited document goes through the same validation as a file given to the CLI.
        loaded = load_app(text.encode(), app_file(app.name), self.env)
        return AppChange(action=action, subject=f"app/{app.name}/service/{change.service}", porter_yaml=text,
                         services=services_of(loaded))

    # --- reading the world -------------------------------------------------------------------------

    def target_of(self, app: AppRecord, target_name: str | None) -> tuple[str, AnyTarget]:
        name = target_name or app.target_name
        if not name:
            raise UsageError(f"app {app.name!r} has no deploy target",
                             "choose one on the app page, or pass ?target=NAME")
        return name, self.target(name)

    def plan_input(self, app: AppRecord, target_name: str | None) -> engine.PlanInput:
        name, target = self.target_of(app, target_name)
        return engine.PlanInput(self.load(app), app.name, name, target)

    def status(self, app_name: str, target_name: str | None) -> list[engine.ServiceStatus]:
        app = self.store.get_app(app_name)
        name, target = self.target_of(app, target_name)
        provider, kube = self.connector(name, target)
        return engine.app_status(app.name, name, target, provider, kube, self.load(app))

    def audit(self, app_name: str, target_name: str | None) -> AuditReport:
        app = self.store.get_app(app_name)
        name, target = self.target_of(app, target_name)
        bindings, _ = desired_bindings(self.load(app), app.name, name, target)
        return engine.audit_app(name, target, app.name, bindings)

    def audit_plan(self, plan: Plan) -> AuditReport:
        """The least-privilege audit of the bindings a plan wants, as `keyless plan` prints it after the plan."""
        return engine.audit_app(plan.target, self.target(plan.target), plan.app, plan.wanted_bindings())

    def deploys(self, app_name: str) -> list[DeployRecord]:
        return self.store.list_deploys(app_name)

    # --- handing apps to the keyless operator --------------------------------------------------------

    def _operator_cluster(self, target_name: str, target: AnyTarget) -> OperatorCluster:
        if target.kubernetes.mode is KubernetesMode.RENDER:
            raise UsageError(f"target {target_name!r} writes manifests to files (kubernetes.mode: render): keyless "
                             "reaches no cluster there, so no operator can be handed the app",
                             "hand it over on a target with kubernetes.mode: apply")
        return self.operator_connector(target, self.env)

    @staticmethod
    def _check_ours(app: str, found: KeylessAppState) -> None:
        where = f"KeylessApp {found.namespace}/{found.name}"
        if not ownership.handed_over_by_control_plane(found.labels, app):
            raise Conflict(f"{where} exists and was not written by the control plane (it has no label "
                           f"{ownership.MANAGED_BY_LABEL}={ownership.CONTROL_PLANE_MANAGER} for app {app!r})",
                           "it belongs to whoever made it (kubectl, GitOps): change or delete it there, or rename "
                           "the app here")
        if found.deleting:
            raise Conflict(f"{where} is being deleted: the operator is removing the app's bindings",
                           "wait until it is gone (GET .../operator), then hand the app over again")

    def hand_over(self, app_name: str, actor: str, refresh_interval: str | None = None,
                  suspend: bool = False) -> tuple[HandoverRecord, KeylessAppState]:
        """Write (server-side apply) the app's KeylessApp in its target's cluster: porter.yaml as stored now, for an
        operator running there whose targets file has a target of the same name. Again: the spec is updated."""
        app = self.store.get_app(app_name)
        target_name, target = self.target_of(app, None)
        previous = self.store.get_handover(app_name)
        if previous is not None and previous.target_name != target_name:
            raise Conflict(f"app {app_name!r} is handed to the operator on target {previous.target_name!r}, and its "
                           f"target is now {target_name!r}",
                           "take it back from the operator first (its bindings there are removed), then hand it "
                           "over again")
        namespace = target.namespace
        manifest = keylessapp_manifest(
            app.name, namespace, target=target_name, porter_yaml=app.porter_yaml, app=app.name,
            refresh_interval=refresh_interval, suspend=suspend, labels=ownership.handover_labels(app.name),
            annotations={ownership.HANDED_OVER_BY_ANNOTATION: actor,
                         ownership.HANDED_OVER_REVISION_ANNOTATION: str(app.revision)})
        # The operator's own checks of a spec, before anything reaches the cluster (422 with the field).
        parse_spec(manifest["spec"], f"keylessapp/{namespace}/{app.name}")
        cluster = self._operator_cluster(target_name, target)
        try:
            existing = cluster.read_keylessapp(namespace, app.name)
            if existing is not None:
                self._check_ours(app.name, keylessapp_state(existing))
            written = keylessapp_state(cluster.apply_keylessapp(manifest))
        finally:
            cluster.close()
        record = self.store.record_handover(app.name, target_name=target_name, namespace=namespace,
                                            revision=app.revision, refresh_interval=refresh_interval,
                                            suspend=suspend, actor=actor)
        return record, written

    def operator_status(self, app_name: str) -> tuple[HandoverRecord | None, KeylessAppState | None]:
        """The app's handover and its KeylessApp as read now (one read; none when it is not handed over)."""
        self.store.get_app(app_name)  # 404 for an unknown app
        handover = self.store.get_handover(app_name)
        if handover is None:
            return None, None
        cluster = self._operator_cluster(handover.target_name, self.target(handover.target_name))
        try:
            found = cluster.read_keylessapp(handover.namespace, app_name)
        finally:
            cluster.close()
        return handover, None if found is None else keylessapp_state(found)

    def take_back(self, app_name: str, actor: str, *, confirmed: bool,
                  confirm_hint: str) -> tuple[HandoverRecord, bool]:
        """Delete the app's KeylessApp: the operator then removes every binding keyless made for the app on that
        target (its finalizer holds the object until it has). True when there was one to delete. Refused unless
        `confirmed`: a person says they know the app's services lose their cloud identities."""
        self.store.get_app(app_name)
        handover = self.store.get_handover(app_name)
        if handover is None:
            raise NotFound(f"app {app_name!r} is not handed to the operator",
                           "hand it over with PUT /api/v1/apps/APP/operator")
        if not confirmed:
            raise Conflict(f"taking app {app_name!r} back deletes its KeylessApp, and the operator then removes every "
                           f"binding keyless made for it on target {handover.target_name!r}: its services lose their "
                           "cloud identities",
                           f"{confirm_hint}; or, to stop the operator writing and keep the bindings, hand it over "
                           "again suspended")
        cluster = self._operator_cluster(handover.target_name, self.target(handover.target_name))
        try:
            existing = cluster.read_keylessapp(handover.namespace, app_name)
            deleted = False
            if existing is not None:
                found = keylessapp_state(existing)
                if not found.deleting:
                    self._check_ours(app_name, found)
                    deleted = cluster.delete_keylessapp(handover.namespace, app_name)
        finally:
            cluster.close()
        self.store.forget_handover(app_name, actor)
        return handover, deleted

    def check_not_handed_over(self, app_name: str, target_name: str) -> None:
        """A deploy from here is refused while the operator keeps the app on that target: two writers of one app
        would undo each other (the operator re-applies its spec at every refresh)."""
        handover = self.store.get_handover(app_name)
        if handover is not None and handover.target_name == target_name:
            raise Conflict(f"app {app_name!r} is handed to the keyless operator on target {target_name!r}: the "
                           "operator applies it there, from the porter.yaml it was handed (revision "
                           f"{handover.revision})",
                           "hand it over again to send the operator this revision (PUT /api/v1/apps/APP/operator), "
                           "or take it back first")


def problems(error: KeylessError) -> list[dict[str, Any]]:
    """An error's located findings for a JSON response (one plain entry when it has none); an empty hint is left
    out rather than sent as `""`."""
    found = [d.as_json() for d in error.diagnostics] if isinstance(error, InvalidInput) else [
        {"message": error.message, "hint": error.hint}]
    return [{key: value for key, value in item.items() if key != "hint" or value} for item in found]


def issue_json(issue: PreflightIssue) -> dict[str, Any]:
    return {"severity": issue.severity.value, "service": issue.service, "message": issue.message, "fix": issue.fix}


def issues_json(issues: Sequence[PreflightIssue]) -> list[dict[str, Any]]:
    return [issue_json(i) for i in issues]
