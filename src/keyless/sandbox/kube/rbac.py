"""Who a request is and what it may do: the API server's authentication, RBAC authorizer and bootstrap policy."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import StatusError

RBAC_GROUP: Final = "rbac.authorization.k8s.io"
MASTERS: Final = "system:masters"  # the privileged group: allowed everything, before RBAC is asked
AUTHENTICATED: Final = "system:authenticated"
UNAUTHENTICATED: Final = "system:unauthenticated"
SERVICE_ACCOUNTS_GROUP: Final = "system:serviceaccounts"
ADMIN_USER: Final = "kubernetes-admin"  # kubeadm's name for the admin kubeconfig's user
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"

# What keyless needs on a target namespace: exactly the calls src/keyless/kube/cluster.py makes. The README's
# "Kubernetes permissions" section shows the same rules; tests/docs check that the two agree.
KEYLESS_ROLE: Final = "keyless"
KEYLESS_RULES: Final[tuple[JsonDict, ...]] = (
    # observe (list), apply_service_account and record_intent (get, then server-side apply: patch, and create
    # when the account is new), remove_annotations (JSON patch), delete_service_account (delete).
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "create", "patch", "delete"]},
    # request_token: the TokenRequest the proof of a token exchange presents.
    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
    # observe (list), update_workload (merge patch), wait_rollout (get).
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "patch"]},
    # observe (list) and update_workload (merge patch); Jobs are only listed.
    {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["list", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
    # The per-app apply lock: try_lock (get, then create, or update to take over an expired Lease), renew_lock and
    # release_lock (update: a released Lease stays, its holder cleared).
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
)


@dataclass(frozen=True)
class UserInfo:
    """The authenticated subject of a request, as the authenticators hand it to the authorizer."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_api(self) -> JsonDict:
        info: JsonDict = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


ADMIN: Final = UserInfo(ADMIN_USER, (MASTERS, AUTHENTICATED))
ANONYMOUS: Final = UserInfo("system:anonymous", (UNAUTHENTICATED,))


def service_account_user(namespace: str, name: str, uid: str, extra: Mapping[str, tuple[str, ...]] | None = None,
                         ) -> UserInfo:
    return UserInfo(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                    (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}", AUTHENTICATED),
                    uid, dict(extra or {}))


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


# --- request attributes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """What is asked (the API server's RequestInfo and authorizer attributes)."""

    user: UserInfo
    verb: str
    resource_request: bool
    path: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_NAMESPACE_SUBRESOURCES: Final = frozenset({"status", "finalize"})
_RESOURCE_VERBS: Final = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                        "DELETE": "delete"}


def request_attributes(user: UserInfo, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """Kubernetes' RequestInfoFactory: a resource request's verb and resource, or a non-resource path."""
    verb = method.lower()  # a non-resource request's verb is its HTTP method
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return Attributes(user, verb, False, path=path)
    rest = parts[1:]
    group = ""
    if parts[0] == "apis":
        if len(rest) < 3:
            return Attributes(user, verb, False, path=path)
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verb = _RESOURCE_VERBS.get(method.upper(), method.lower())
    if verb == "get" and not name:
        verb = "list"
    if verb in ("get", "list") and query.get("watch") in ("true", "1"):
        verb = "watch"
    if verb == "delete" and not name:
        verb = "deletecollection"
    if verb in ("list", "watch", "deletecollection") and not name:
        # A list or watch of one object names it in the field selector (kubectl get pod x -w).
        for term in (query.get("fieldSelector") or "").split(","):
            key, _, value = term.partition("=")
            if key.strip() == "metadata.name" and value and not value.startswith("="):
                name = value.strip()
    return Attributes(user, verb, True, group=group, version=version, resource=resource, subresource=subresource,
                      namespace=namespace, name=name)


# --- rules -----------------------------------------------------------------------------------------


def _has(values: Iterable[str] | None, wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def _resource_matches(rule_resources: Iterable[str] | None, combined: str, subresource: str) -> bool:
    for resource in rule_resources or []:
        if resource in ("*", combined):
            return True
        if subresource and resource == f"*/{subresource}":
            return True
    return False


def _url_matches(rule_urls: Iterable[str] | None, path: str) -> bool:
    return any(url in ("*", path) or (url.endswith("*") and path.startswith(url[:-1])) for url in rule_urls or [])


def rule_allows(attributes: Attributes, rule: Mapping[str, Any]) -> bool:
    """Kubernetes' RuleAllows: verbs, API groups, ``resource/subresource`` (or ``*/subresource``), names, URLs."""
    if not _has(rule.get("verbs"), attributes.verb):
        return False
    if not attributes.resource_request:
        return _url_matches(rule.get("nonResourceURLs"), attributes.path)
    names = rule.get("resourceNames") or []
    return (_has(rule.get("apiGroups"), attributes.group)
            and _resource_matches(rule.get("resources"), attributes.combined_resource, attributes.subresource)
            and (not names or attributes.name in names))


# --- the authorizer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class PolicySource:
    """Read access to the stored RBAC objects (live views: read them, never change them)."""

    roles: Callable[[str], Iterable[Mapping[str, Any]]]  # by namespace
    cluster_roles: Callable[[], Iterable[Mapping[str, Any]]]
    role_bindings: Callable[[str], Iterable[Mapping[str, Any]]]  # by namespace
    cluster_role_bindings: Callable[[], Iterable[Mapping[str, Any]]]


def _applies_to(subject: Mapping[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{subject.get('name')}"
    return False


def _describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    kind, name = subject.get("kind"), str(subject.get("name"))
    if kind == "ServiceAccount":
        return f'ServiceAccount "{name}/{subject.get("namespace") or binding_namespace}"'
    return f'{kind} "{name}"'


class Authorizer:
    """The ``Node,RBAC`` chain as it answers for users: system:masters first, then RBAC's bindings."""

    def __init__(self, source: PolicySource) -> None:
        self._source = source

    def _role_rules(self, ref: Mapping[str, Any], namespace: str) -> tuple[list[Mapping[str, Any]], str | None]:
        """The rules a roleRef grants, or the error a missing role is (RBAC lists it in its deny reason)."""
        name = ref.get("name")
        if ref.get("kind") == "ClusterRole":
            for role in self._source.cluster_roles():
                if (role.get("metadata") or {}).get("name") == name:
                    return self._cluster_role_rules(role), None
            return [], f'clusterrole.{RBAC_GROUP} "{name}" not found'
        for role in self._source.roles(namespace):
            if (role.get("metadata") or {}).get("name") == name:
                return list(role.get("rules") or []), None
        return [], f'role.{RBAC_GROUP} "{name}" not found'

    def _cluster_role_rules(self, role: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """A ClusterRole's rules, with those of the roles its aggregationRule selects (what the controller fills in)."""
        rules = list(role.get("rules") or [])
        aggregation = role.get("aggregationRule") or {}
        for selector in aggregation.get("clusterRoleSelectors") or []:
            wanted = (selector or {}).get("matchLabels") or {}
            if not wanted:
                continue
            for other in self._source.cluster_roles():
                labels = (other.get("metadata") or {}).get("labels") or {}
                if other is not role and all(labels.get(k) == v for k, v in wanted.items()):
                    rules.extend(other.get("rules") or [])
        return rules

    def _bound(self, user: UserInfo, namespace: str) -> Iterator[tuple[str, list[Mapping[str, Any]], str | None]]:
        """(who granted it, its rules, an error) for each binding of the user, cluster bindings first."""
        for binding in self._source.cluster_role_bindings():
            for subject in binding.get("subjects") or []:
                if _applies_to(subject, user, ""):
                    ref = binding.get("roleRef") or {}
                    rules, error = self._role_rules(ref, "")
                    source = (f'ClusterRoleBinding "{(binding.get("metadata") or {}).get("name")}" of '
                              f'{ref.get("kind")} "{ref.get("name")}" to {_describe_subject(subject, "")}')
                    yield source, rules, error
                    break
        if not namespace:
            return
        for binding in self._source.role_bindings(namespace):
            for subject in binding.get("subjects") or []:
                if _applies_to(subject, user, namespace):
                    ref = binding.get("roleRef") or {}
                    rules, error = self._role_rules(ref, namespace)
                    source = (f'RoleBinding "{(binding.get("metadata") or {}).get("name")}/{namespace}" of '
                              f'{ref.get("kind")} "{ref.get("name")}" to {_describe_subject(subject, namespace)}')
                    yield source, rules, error
                    break

    def authorize(self, attributes: Attributes) -> Decision:
        if MASTERS in attributes.user.groups:
            return Decision(True)
        errors: list[str] = []
        for source, rules, error in self._bound(attributes.user, attributes.namespace):
            if error:
                errors.append(error)
            if any(rule_allows(attributes, rule) for rule in rules):
                return Decision(True, f"RBAC: allowed by {source}")
        return Decision(False, f"RBAC: {', '.join(errors)}" if errors else "")

    def rules(self, user: UserInfo, namespace: str) -> tuple[list[JsonDict], list[JsonDict], list[str]]:
        """What a SelfSubjectRulesReview answers: resource rules, non-resource rules, evaluation errors."""
        if MASTERS in user.groups:
            return ([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    [{"verbs": ["*"], "nonResourceURLs": ["*"]}], [])
        resource_rules: list[JsonDict] = []
        url_rules: list[JsonDict] = []
        errors: list[str] = []
        for _, rules, error in self._bound(user, namespace):
            if error:
                errors.append(error)
            for rule in rules:
                if rule.get("nonResourceURLs"):
                    url_rules.append({"verbs": list(rule.get("verbs") or []),
                                      "nonResourceURLs": list(rule["nonResourceURLs"])})
                else:
                    entry: JsonDict = {"verbs": list(rule.get("verbs") or []),
                                       "apiGroups": list(rule.get("apiGroups") or []),
                                       "resources": list(rule.get("resources") or [])}
                    if rule.get("resourceNames"):
                        entry["resourceNames"] = list(rule["resourceNames"])
                    resource_rules.append(entry)
        return resource_rules, url_rules, errors


def forbidden(attributes: Attributes, reason: str = "") -> StatusError:
    """The 403 the API server's authorization filter answers, word for word."""
    who = attributes.user.name
    if not attributes.resource_request:
        message = f'User "{who}" cannot {attributes.verb} path "{attributes.path}"'
    elif attributes.namespace:
        message = (f'User "{who}" cannot {attributes.verb} resource "{attributes.combined_resource}" in API group '
                   f'"{attributes.group}" in the namespace "{attributes.namespace}"')
    else:
        message = (f'User "{who}" cannot {attributes.verb} resource "{attributes.combined_resource}" in API group '
                   f'"{attributes.group}" at the cluster scope')
    if reason:
        message = f"{message}: {reason}"
    return forbidden_for(attributes, message)


def forbidden_for(attributes: Attributes, why: str) -> StatusError:
    """Kubernetes' NewForbidden: ``<resource>[.<group>] ["<name>"] is forbidden: <why>``."""
    details: JsonDict = {}
    if not attributes.resource_request or not attributes.resource:
        return StatusError(403, "Forbidden", f"forbidden: {why}", details)
    qualified = f"{attributes.resource}.{attributes.group}" if attributes.group else attributes.resource
    if attributes.name:
        details["name"] = attributes.name
    if attributes.group:
        details["group"] = attributes.group
    details["kind"] = attributes.resource
    named = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    return StatusError(403, "Forbidden", f"{named} is forbidden: {why}", details)


# --- the bootstrap policy (what every cluster starts with, from Kubernetes' bootstrappolicy) ----------

_BOOTSTRAP_LABELS: Final = {"kubernetes.io/bootstrapping": "rbac-defaults"}
_AUTOUPDATE: Final = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
_DISCOVERY_URLS: Final = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                          "/readyz", "/version", "/version/"]
_PUBLIC_URLS: Final = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
_ISSUER_URLS: Final = ["/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                       "/openid/v1/jwks", "/openid/v1/jwks/"]
ISSUER_DISCOVERY_ROLE: Final = "system:service-account-issuer-discovery"


def _meta(name: str) -> JsonDict:
    return {"name": name, "labels": dict(_BOOTSTRAP_LABELS), "annotations": dict(_AUTOUPDATE)}


def _cluster_role(name: str, rules: list[JsonDict]) -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": _meta(name), "rules": rules}


def _cluster_binding(name: str, role: str, subjects: list[JsonDict]) -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": _meta(name),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role}, "subjects": subjects}


def _group(name: str) -> JsonDict:
    return {"apiGroup": RBAC_GROUP, "kind": "Group", "name": name}


def bootstrap_cluster_roles(issuer_paths: Iterable[str] = ()) -> list[JsonDict]:
    """The ClusterRoles a new cluster has that matter here; ``issuer_paths``: OIDC documents served elsewhere."""
    return [
        _cluster_role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                        {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        _cluster_role("system:discovery", [{"nonResourceURLs": list(_DISCOVERY_URLS), "verbs": ["get"]}]),
        _cluster_role("system:public-info-viewer", [{"nonResourceURLs": list(_PUBLIC_URLS), "verbs": ["get"]}]),
        _cluster_role("system:basic-user", [
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews",
                                                                  "selfsubjectrulesreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
        ]),
        _cluster_role(ISSUER_DISCOVERY_ROLE, [{"nonResourceURLs": [*_ISSUER_URLS, *issuer_paths], "verbs": ["get"]}]),
    ]


def bootstrap_cluster_role_bindings() -> list[JsonDict]:
    return [
        _cluster_binding("cluster-admin", "cluster-admin", [_group(MASTERS)]),
        _cluster_binding("system:discovery", "system:discovery", [_group(AUTHENTICATED)]),
        _cluster_binding("system:public-info-viewer", "system:public-info-viewer",
                         [_group(AUTHENTICATED), _group(UNAUTHENTICATED)]),
        _cluster_binding("system:basic-user", "system:basic-user", [_group(AUTHENTICATED)]),
        # Kubernetes binds issuer discovery to service accounts only; a cluster whose issuer the clouds read (EKS,
        # AKS, GKE publish theirs) serves it to anyone, which the docs set up with this extra group.
        _cluster_binding(ISSUER_DISCOVERY_ROLE, ISSUER_DISCOVERY_ROLE,
                         [_group(SERVICE_ACCOUNTS_GROUP), _group(UNAUTHENTICATED), _group(AUTHENTICATED)]),
    ]


def keyless_cluster_role() -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
            "metadata": {"name": KEYLESS_ROLE, "labels": {"app.kubernetes.io/name": "keyless"}},
            "rules": [dict(rule) for rule in KEYLESS_RULES]}


def keyless_role_binding(namespace: str, account_namespace: str, account: str,
                         role: str = KEYLESS_ROLE) -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "RoleBinding",
            "metadata": {"name": KEYLESS_ROLE, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "keyless"}},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}]}
