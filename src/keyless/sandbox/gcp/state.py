"""What the GCP sandbox holds (projects, service accounts, keys, IAM policies, GKE clusters) and the rules IAM keeps."""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "BASIC_ROLE_PERMISSIONS",
    "EMPTY_POLICY_ETAG",
    "IMPERSONATION_ROLES",
    "METADATA_MODES",
    "Cluster",
    "GcpError",
    "GcpState",
    "NodePool",
    "Project",
    "ServiceAccount",
    "ServiceAccountKey",
    "workload_pool",
]

# The etag Google gives a policy that was never written; any write gives it a real one.
EMPTY_POLICY_ETAG = "ACAB"
# What lets a principal mint tokens for a service account (iam.serviceAccounts.getAccessToken).
IMPERSONATION_ROLES = frozenset({"roles/iam.workloadIdentityUser", "roles/iam.serviceAccountTokenCreator"})
METADATA_MODES = ("GKE_METADATA", "GCE_METADATA")
# Every permission the sandbox checks; the deployer holds them all unless denied.
PERMISSIONS = frozenset({
    "iam.serviceAccounts.get", "iam.serviceAccounts.getIamPolicy", "iam.serviceAccounts.setIamPolicy",
    "iam.serviceAccountKeys.list", "iam.serviceAccounts.getAccessToken", "container.clusters.get",
    "resourcemanager.projects.get", "resourcemanager.projects.getIamPolicy",
})
_READS = PERMISSIONS - {"iam.serviceAccounts.setIamPolicy", "iam.serviceAccounts.getAccessToken"}
# Principals other than the deployer hold what their project roles give: the basic roles, which is enough to
# make a service account with roles/editor able to read (and to show why the audit flags it).
BASIC_ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "roles/owner": PERMISSIONS,
    "roles/editor": _READS,
    "roles/viewer": _READS - {"iam.serviceAccountKeys.list"},
}

_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ACCOUNT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_POOL_MEMBER = re.compile(r"^serviceAccount:([^\[\]]+)\[([^\[\]/]*)/([^\[\]/]*)\]$")
_ROLE = re.compile(r"^(roles/[A-Za-z0-9_.]+|(projects|organizations)/[^/]+/roles/[A-Za-z0-9_.]+)$")
_LOCATION = re.compile(r"^[a-z]+-[a-z]+\d+(-[a-z])?$")
_CLUSTER_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_FEDERATION_MEMBER = re.compile(r"^principal(Set)?://iam\.googleapis\.com/\S+$")


class GcpError(Exception):
    """A Google API failure: HTTP status, the canonical status name, the message, and ErrorInfo details."""

    def __init__(self, code: int, status: str, message: str, *, details: Sequence[Mapping[str, Any]] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = [dict(d) for d in self.details]
        return {"error": error}


def invalid_argument(message: str) -> GcpError:
    return GcpError(400, "INVALID_ARGUMENT", message)


def permission_denied(permission: str, resource: str, message: str | None = None) -> GcpError:
    """IAM's 403, with the ErrorInfo Google attaches so a client can tell which permission was missing."""
    domain = permission.split(".", 1)[0]
    return GcpError(403, "PERMISSION_DENIED",
                    message or f"Permission '{permission}' denied on resource (or it may not exist).",
                    details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                              "domain": f"{domain}.googleapis.com" if domain != "resourcemanager"
                              else "cloudresourcemanager.googleapis.com",
                              "metadata": {"permission": permission, "resource": resource}}])


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def workload_pool(project_id: str) -> str:
    """The Workload Identity pool of a project's GKE clusters."""
    return f"{project_id}.svc.id.goog"


def _unique_id(seed: str) -> str:
    # Google's uniqueIds are 21 decimal digits starting with 1; derive one so that reseeding gives the same id.
    return "1" + str(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:10], "big") % 10**20).zfill(20)


# ---- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    project_id: str
    number: str
    display_name: str
    created: float

    @property
    def resource(self) -> str:
        return f"projects/{self.project_id}"


@dataclass(frozen=True)
class ServiceAccountKey:
    key_id: str
    key_type: str  # USER_MANAGED | SYSTEM_MANAGED
    valid_after: float
    valid_before: str  # RFC 3339; user-managed keys without expiry end in year 9999
    public_pem: str = ""


@dataclass(frozen=True)
class ServiceAccount:
    project_id: str
    account_id: str
    display_name: str = ""
    description: str = ""
    disabled: bool = False
    keys: tuple[ServiceAccountKey, ...] = ()

    @property
    def email(self) -> str:
        return f"{self.account_id}@{self.project_id}.iam.gserviceaccount.com"

    @property
    def unique_id(self) -> str:
        return _unique_id(self.email)

    @property
    def resource(self) -> str:
        return f"projects/{self.project_id}/serviceAccounts/{self.email}"


@dataclass(frozen=True)
class NodePool:
    name: str
    metadata_mode: str  # GKE_METADATA | GCE_METADATA


@dataclass(frozen=True)
class Cluster:
    project_id: str
    location: str
    name: str
    workload_identity: bool
    node_pools: tuple[NodePool, ...]
    created: float = field(default_factory=time.time)

    @property
    def resource(self) -> str:
        return f"projects/{self.project_id}/locations/{self.location}/clusters/{self.name}"

    @property
    def issuer(self) -> str:
        """GKE's issuer of service-account tokens: the cluster's URL on the container API."""
        return f"https://container.googleapis.com/v1/{self.resource}"

    @property
    def runs_gke_metadata(self) -> bool:
        return self.workload_identity and any(p.metadata_mode == "GKE_METADATA" for p in self.node_pools)


@dataclass
class _Policy:
    """One resource's IAM policy and when each unconditional (role, member) pair was added (on the clock)."""

    bindings: list[dict[str, Any]] = field(default_factory=list)
    etag: str = EMPTY_POLICY_ETAG
    added: dict[tuple[str, str], float] = field(default_factory=dict)

    def version(self) -> int:
        return 3 if any("condition" in b for b in self.bindings) else 1

    def render(self) -> dict[str, Any]:
        body: dict[str, Any] = {"version": self.version(), "etag": self.etag}
        if self.bindings:
            body["bindings"] = copy.deepcopy(self.bindings)
        return body


# ---- the state --------------------------------------------------------------------------------------


class GcpState:
    """Every project, service account, policy and cluster; thread-safe (the servers and Python callers share it)."""

    def __init__(self, *, propagation_delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.propagation_delay = propagation_delay
        self.clock = clock
        self.lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._accounts: dict[str, ServiceAccount] = {}  # by email
        self._policies: dict[str, _Policy] = {}  # by resource name
        self._clusters: dict[tuple[str, str, str], Cluster] = {}
        self._etags = itertools.count(int.from_bytes(secrets.token_bytes(3), "big") << 8)
        self.blind_writes = 0

    # ---- projects ---------------------------------------------------------------------------------

    def add_project(self, project_id: str, number: str, display_name: str = "") -> Project:
        if not _PROJECT_ID.match(project_id) or not number.isdigit():
            raise ValueError(f"not a project id and number: {project_id!r}, {number!r}")
        with self.lock:
            existing = self._projects.get(project_id)
            if existing is not None:
                return existing
            project = Project(project_id, number, display_name or project_id, time.time())
            self._projects[project_id] = project
            return project

    def find_project(self, id_or_number: str) -> Project | None:
        with self.lock:
            return self._projects.get(id_or_number) or next(
                (p for p in self._projects.values() if p.number == id_or_number), None)

    def project(self, id_or_number: str) -> Project:
        """Google answers 403 for a project the caller cannot see, which includes one that does not exist."""
        found = self.find_project(id_or_number)
        if found is None:
            raise GcpError(403, "PERMISSION_DENIED", "The caller does not have permission")
        return found

    # ---- service accounts ---------------------------------------------------------------------------

    def add_service_account(self, project_id: str, account_id: str, *, display_name: str = "",
                            disabled: bool = False) -> ServiceAccount:
        if not _ACCOUNT_ID.match(account_id):
            raise ValueError(f"service account ids are 6-30 of [a-z0-9-], starting with a letter: {account_id!r}")
        with self.lock:
            if project_id not in self._projects:
                raise ValueError(f"no project {project_id!r} in the sandbox")
            existing = self._accounts.get(f"{account_id}@{project_id}.iam.gserviceaccount.com")
            system_key = ServiceAccountKey(secrets.token_hex(20), "SYSTEM_MANAGED", time.time(),
                                           rfc3339(time.time() + 2 * 365 * 86400))
            account = ServiceAccount(project_id, account_id, display_name, disabled=disabled,
                                     keys=existing.keys if existing else (system_key,))
            self._accounts[account.email] = account
            return account

    def set_disabled(self, email: str, disabled: bool) -> None:
        with self.lock:
            self._accounts[email] = replace(self.service_account(email), disabled=disabled)

    def add_key(self, email: str, key: ServiceAccountKey) -> None:
        with self.lock:
            account = self.service_account(email)
            self._accounts[email] = replace(account, keys=(*account.keys, key))

    def find_service_account(self, email_or_id: str) -> ServiceAccount | None:
        with self.lock:
            found = self._accounts.get(email_or_id.lower())
            if found is None and email_or_id.isdigit():
                found = next((a for a in self._accounts.values() if a.unique_id == email_or_id), None)
            return found

    def service_account(self, email_or_id: str, project: str = "-") -> ServiceAccount:
        found = self.find_service_account(email_or_id)
        # An explicit project must be the account's own (by id or number); "-" lets IAM infer it.
        if found is not None and project != "-":
            owner = self.find_project(project)
            if owner is None or owner.project_id != found.project_id:
                found = None
        if found is None:
            raise GcpError(404, "NOT_FOUND", "Unknown service account")
        return found

    # ---- clusters ---------------------------------------------------------------------------------

    def put_cluster(self, project_id: str, location: str, name: str, *, workload_identity: bool,
                    metadata_modes: Sequence[str]) -> Cluster:
        if not _LOCATION.match(location) or not _CLUSTER_NAME.match(name):
            raise ValueError(f"not a GKE location and cluster name: {location!r}, {name!r}")
        bad = [m for m in metadata_modes if m not in METADATA_MODES]
        if bad or not metadata_modes:
            raise ValueError(f"metadata modes are {' or '.join(METADATA_MODES)}, one per node pool: {bad}")
        if not workload_identity and "GKE_METADATA" in metadata_modes:
            # GKE refuses this too: the GKE metadata server needs the cluster's workload pool.
            raise ValueError("GKE_METADATA node pools need Workload Identity on the cluster")
        pools = tuple(NodePool("default-pool" if i == 0 else f"pool-{i + 1}", mode)
                      for i, mode in enumerate(metadata_modes))
        with self.lock:
            if project_id not in self._projects:
                raise ValueError(f"no project {project_id!r} in the sandbox")
            cluster = Cluster(project_id, location, name, workload_identity, pools)
            self._clusters[(project_id, location, name)] = cluster
            return cluster

    def replace_cluster(self, cluster: Cluster) -> None:
        with self.lock:
            self._clusters[(cluster.project_id, cluster.location, cluster.name)] = cluster

    def find_cluster(self, project: str, location: str, name: str) -> Cluster | None:
        owner = self.find_project(project)
        if owner is None:
            return None
        with self.lock:
            if location == "-":  # GKE's wildcard: any location of the project
                return next((c for (p, _, n), c in self._clusters.items()
                             if p == owner.project_id and n == name), None)
            return self._clusters.get((owner.project_id, location, name))

    def clusters(self) -> list[Cluster]:
        with self.lock:
            return list(self._clusters.values())

    def cluster_by_issuer(self, issuer: str) -> Cluster | None:
        return next((c for c in self.clusters() if c.issuer == issuer), None)

    def pool_exists(self, pool: str) -> bool:
        """A pool exists once its project has a cluster with Workload Identity on."""
        return any(c.workload_identity and workload_pool(c.project_id) == pool for c in self.clusters())

    # ---- members ----------------------------------------------------------------------------------

    def check_member(self, member: str) -> None:
        """IAM's syntax rules on a policy member, and the existence checks it makes on pools and accounts."""
        if member in ("allUsers", "allAuthenticatedUsers"):
            return
        if _FEDERATION_MEMBER.match(member):
            return
        if member.startswith("deleted:"):
            rest, _, uid = member.removeprefix("deleted:").partition("?uid=")
            kind, _, email = rest.partition(":")
            if kind in ("user", "group", "serviceAccount") and _EMAIL.match(email) and uid.isdigit():
                return
            raise invalid_argument(f"Invalid deleted member: {member}.")
        kind, sep, value = member.partition(":")
        if not sep:
            raise invalid_argument(f"Invalid principal: {member}. Principals need a type prefix such as user:, "
                                   "group:, serviceAccount: or domain:.")
        pool_member = _POOL_MEMBER.match(member)
        if pool_member:
            self._check_pool_member(member, *pool_member.groups())
            return
        if kind in ("user", "group") and _EMAIL.match(value):
            return
        if kind == "domain" and _DOMAIN.match(value):
            return
        if kind in ("projectOwner", "projectEditor", "projectViewer") and _PROJECT_ID.match(value):
            return
        if kind == "serviceAccount" and _EMAIL.match(value):
            domain = value.split("@", 1)[1]
            project = domain.removesuffix(".iam.gserviceaccount.com")
            # IAM knows every account of the projects it holds: naming a missing one is an error there.
            if domain.endswith(".iam.gserviceaccount.com") and self.find_project(project) is not None \
                    and self.find_service_account(value) is None:
                raise invalid_argument(f"Service account {value} does not exist.")
            return
        raise invalid_argument(f"Invalid principal: {member}.")

    def _check_pool_member(self, member: str, pool: str, namespace: str, account: str) -> None:
        if not self.pool_exists(pool):
            raise invalid_argument(f"Identity Pool does not exist ({pool}). Please check that you specified a valid "
                                   "resource name as returned in the `name` attribute in the configuration API.")
        if not _DNS_LABEL.match(namespace) or not _DNS_SUBDOMAIN.match(account):
            raise invalid_argument(f"Invalid principal: {member}. The namespace must be a DNS label and the "
                                   "Kubernetes service account a DNS subdomain name.")

    # ---- policies ----------------------------------------------------------------------------------

    def _policy(self, resource: str) -> _Policy:
        return self._policies.setdefault(resource, _Policy())

    def _new_etag(self) -> str:
        # Google's policy etags are 8 bytes, base64: "BwX..." for the ones written by IAM.
        return base64.b64encode(b"\x07\x05" + (0xC00000000000 | next(self._etags)).to_bytes(6, "big")).decode()

    def get_policy(self, resource: str) -> dict[str, Any]:
        with self.lock:
            return self._policy(resource).render()

    def set_policy(self, resource: str, policy: Mapping[str, Any], update_mask: str | None = None
                   ) -> dict[str, Any]:
        """setIamPolicy: etag check (409 ABORTED), member and role rules, merged bindings, a new etag."""
        fields = {f.strip() for f in (update_mask or "bindings,etag").split(",") if f.strip()}
        unknown = fields - {"bindings", "etag", "version", "auditConfigs"}
        if unknown:
            raise invalid_argument(f"Invalid update mask field(s): {', '.join(sorted(unknown))}.")
        bindings = self._normalized_bindings(policy.get("bindings", []), policy.get("version"))
        with self.lock:
            current = self._policy(resource)
            etag = policy.get("etag")
            if etag is None or etag == "":
                self.blind_writes += 1  # Google overwrites without a check; keyless must never rely on that
            elif etag != current.etag:
                raise GcpError(409, "ABORTED", "There were concurrent policy changes. Please retry the whole "
                                               "read-modify-write with exponential backoff.")
            if "bindings" in fields:
                self._store(current, bindings)
            current.etag = self._new_etag()
            return current.render()

    def _normalized_bindings(self, raw: Any, version: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            raise invalid_argument("Invalid JSON payload received. policy.bindings must be a list.")
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for binding in raw:
            if not isinstance(binding, dict):
                raise invalid_argument("Invalid JSON payload received. Each binding must be an object.")
            role = binding.get("role")
            members = binding.get("members") or []
            if not isinstance(role, str) or not _ROLE.match(role):
                raise invalid_argument(f"Role ({role}) does not exist in the resource's hierarchy.")
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise invalid_argument(f"Invalid members of role {role}: a list of strings is required.")
            condition = binding.get("condition")
            if condition is not None:
                if not isinstance(condition, dict) or not condition.get("expression") or not condition.get("title"):
                    raise invalid_argument("A condition needs a title and an expression.")
                if version != 3:
                    raise invalid_argument("Conditions are only supported in policies of version 3; set "
                                           "policy.version to 3.")
            for member in members:
                self.check_member(member)
            if not members:
                continue  # Google drops bindings without members
            key = (role, repr(sorted(condition.items())) if condition else "")
            entry = merged.setdefault(key, {"role": role, "members": []})
            if condition:
                entry["condition"] = dict(condition)
            entry["members"] = sorted(set(entry["members"]) | set(members))
        return list(merged.values())

    def _store(self, policy: _Policy, bindings: list[dict[str, Any]]) -> None:
        now = self.clock()
        pairs = {(b["role"], m) for b in bindings if "condition" not in b for m in b["members"]}
        # A pair that stays keeps its time; a new one starts propagating now; a removed one stops at once.
        policy.added = {pair: policy.added.get(pair, now) for pair in pairs}
        policy.bindings = bindings

    def add_member(self, resource: str, role: str, member: str) -> None:
        """An outside writer adds one member (as a console user would): the etag moves."""
        self.check_member(member)
        with self.lock:
            policy = self._policy(resource)
            bindings = copy.deepcopy(policy.bindings)
            entry = next((b for b in bindings if b["role"] == role and "condition" not in b), None)
            if entry is None:
                bindings.append({"role": role, "members": [member]})
            elif member not in entry["members"]:
                entry["members"] = sorted([*entry["members"], member])
            self._store(policy, bindings)
            policy.etag = self._new_etag()

    def holds(self, resources: Iterable[str], member: str, roles: Iterable[str]) -> tuple[bool, bool]:
        """(granted at all, granted and propagated): whether `member` holds one of `roles` on one of `resources`."""
        wanted = set(roles)
        now = self.clock()
        granted = effective = False
        with self.lock:
            for resource in resources:
                policy = self._policies.get(resource)
                if policy is None:
                    continue
                for (role, who), added in policy.added.items():
                    if who == member and role in wanted:
                        granted = True
                        effective = effective or now - added >= self.propagation_delay
        return granted, effective

    def project_roles(self, project_id: str, member: str) -> set[str]:
        with self.lock:
            policy = self._policies.get(f"projects/{project_id}")
            return {role for role, who in (policy.added if policy else {}) if who == member}
