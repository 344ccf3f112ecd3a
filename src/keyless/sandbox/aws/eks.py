"""The EKS state moto lacks (pod identity associations, add-ons, Auto Mode), thread-safe, with EKS's rules."""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from keyless.sandbox.aws.eks_model import (
    DEFAULT_ASSOCIATION_QUOTA,
    KNOWN_ADDONS,
    MAX_TAGS,
    POD_IDENTITY_AGENT_ADDON,
    Addon,
    Association,
    BindingChange,
    ClusterRef,
    CreateRequest,
    EksError,
    RoleBinding,
    decode_token,
    encode_token,
    new_association_id,
    parse_role_arn,
    validate_names,
    validate_tags,
)
from keyless.sandbox.knobs import Settling

__all__ = ["DEFAULT_ASSOCIATION_QUOTA", "POD_IDENTITY_AGENT_ADDON", "EksState"]


class EksState:
    """Thread-safe store behind the EKS front: the servers' event loop and the Kubernetes webhook share it."""

    def __init__(
        self,
        *,
        association_quota: int = DEFAULT_ASSOCIATION_QUOTA,
        association_delay: float = 1.0,
        addon_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        settling: Callable[[str], Settling | None] = lambda _: None,
    ) -> None:
        """``settling`` draws how one association write (named by a key) reaches the Pod Identity agent; where it
        answers None, writes take ``association_delay`` and never flap."""
        self.association_quota = association_quota
        self.association_delay = association_delay
        self.settling = settling
        self._write_counts: collections.Counter[str] = collections.Counter()
        self.addon_delay = addon_delay
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._seq = 0
        self._associations: dict[tuple[str, str], dict[str, Association]] = {}
        self._tokens: dict[tuple[str, str, str], tuple[CreateRequest, str]] = {}
        self._addons: dict[tuple[str, str], dict[str, Addon]] = {}
        self._auto_mode: dict[tuple[str, str], dict[str, Any]] = {}

    # ---- pod identity associations -------------------------------------------------------------

    def check_create(self, cluster: ClusterRef, body: Mapping[str, Any]) -> tuple[CreateRequest, str | None]:
        """Validate a CreatePodIdentityAssociation body before IAM is consulted."""
        namespace, service_account = validate_names(body.get("namespace"), body.get("serviceAccount"))
        role_arn = body.get("roleArn")
        role_account, _ = parse_role_arn(role_arn)
        if role_account != cluster.account:
            raise EksError(
                "InvalidParameterException",
                "roleArn must be in the same account as the cluster; use targetRoleArn to reach another account",
            )
        target = body.get("targetRoleArn") or None
        if target is not None:
            parse_role_arn(target, "targetRoleArn")
        disable = body.get("disableSessionTags", False)
        if not isinstance(disable, bool):
            raise EksError("InvalidParameterException", "disableSessionTags must be a boolean")
        policy = self._check_policy(body.get("policy") or None, disable)
        tags = validate_tags(body.get("tags"))
        binding = RoleBinding(
            role_arn=str(role_arn),
            target_role_arn=target,
            disable_session_tags=disable,
            policy=policy,
            external_id=self._external_id(cluster, namespace, service_account) if target else None,
        )
        token = body.get("clientRequestToken")
        request = CreateRequest(namespace, service_account, binding, tuple(sorted(tags.items())))
        return request, token if isinstance(token, str) and token else None

    @staticmethod
    def _check_policy(policy: object, disable_session_tags: bool) -> str | None:
        if policy is None:
            return None
        if not isinstance(policy, str):
            raise EksError("InvalidParameterException", "policy must be a JSON string")
        try:
            json.loads(policy)
        except ValueError as exc:
            raise EksError("InvalidParameterException", "policy is not valid JSON") from exc
        if not disable_session_tags:
            raise EksError("InvalidParameterException", "disableSessionTags must be true when a policy is set")
        return policy

    @staticmethod
    def _external_id(cluster: ClusterRef, namespace: str, service_account: str) -> str:
        return f"{cluster.region}/{cluster.account}/{cluster.name}/{namespace}/{service_account}"

    def replay(self, cluster: ClusterRef, request: CreateRequest, token: str | None) -> Association | None:
        """The association an earlier create with the same clientRequestToken made, if any."""
        if token is None:
            return None
        with self._lock:
            seen = self._tokens.get((cluster.region, cluster.name, token))
            if seen is None:
                return None
            previous, association_id = seen
            if previous != request:
                raise EksError(
                    "InvalidParameterException",
                    "The clientRequestToken was already used with different request parameters",
                )
            found = self._associations.get((cluster.region, cluster.name), {}).get(association_id)
        if found is None:
            raise EksError("InvalidRequestException", "The association created with this token was deleted")
        return found

    def create_association(
        self,
        cluster: ClusterRef,
        request: CreateRequest,
        token: str | None,
        *,
        owner_arn: str | None = None,
    ) -> Association:
        with self._lock:
            table = self._associations.setdefault((cluster.region, cluster.name), {})
            for existing in table.values():
                if (existing.namespace, existing.service_account) == (request.namespace, request.service_account):
                    raise EksError(
                        "ResourceInUseException",
                        f"Association already exists: {existing.association_id}",
                        clusterName=cluster.name,
                    )
            if len(table) >= self.association_quota:
                raise EksError(
                    "ResourceLimitExceededException",
                    f"Cluster {cluster.name} already has {len(table)} pod identity associations, "
                    f"the maximum is {self.association_quota}",
                    clusterName=cluster.name,
                )
            self._seq += 1
            association_id = new_association_id()
            now = self._wall()
            settling = self._settling(cluster.region, cluster.name, request.namespace, request.service_account)
            start = self._clock()
            association = Association(
                cluster=cluster,
                namespace=request.namespace,
                service_account=request.service_account,
                association_id=association_id,
                association_arn=(
                    f"arn:aws:eks:{cluster.region}:{cluster.account}:podidentityassociation/"
                    f"{cluster.name}/{association_id}"
                ),
                binding=request.binding,
                tags=MappingProxyType(dict(request.tags)),
                created_at=now,
                modified_at=now,
                owner_arn=owner_arn,
                seq=self._seq,
                effective_from=start + settling.delay,
                previous=None,
                outages=_shifted(settling, start),
            )
            table[association_id] = association
            if token is not None:
                self._tokens[(cluster.region, cluster.name, token)] = (request, association_id)
            return association

    def _settling(self, region: str, cluster: str, namespace: str, service_account: str) -> Settling:
        """How this write of the service account's association reaches the agent (drawn from the knobs' seed, else
        the fixed association delay); the caller holds the lock."""
        key = f"{region}/{cluster}/{namespace}/{service_account}"
        self._write_counts[key] += 1
        drawn = self.settling(f"{key}#{self._write_counts[key]}")
        return drawn if drawn is not None else Settling(self.association_delay)

    def describe_association(self, region: str, cluster: str, association_id: str) -> Association:
        with self._lock:
            found = self._associations.get((region, cluster), {}).get(association_id)
        if found is None:
            raise EksError(
                "ResourceNotFoundException",
                f"No Pod Identity Association found for id {association_id} in cluster {cluster}",
                clusterName=cluster,
            )
        return found

    def update_association(self, region: str, cluster: str, association_id: str, change: BindingChange) -> Association:
        with self._lock:
            table = self._associations.get((region, cluster), {})
            current = table.get(association_id)
            if current is None:
                raise EksError(
                    "ResourceNotFoundException",
                    f"No Pod Identity Association found for id {association_id} in cluster {cluster}",
                    clusterName=cluster,
                )
            if current.owner_arn is not None:
                raise EksError(
                    "InvalidRequestException",
                    f"Pod Identity Association {association_id} is owned by {current.owner_arn}; "
                    "update it through the add-on (UpdateAddon)",
                    clusterName=cluster,
                )
            old = current.binding
            role_arn = old.role_arn if change.role_arn is None else change.role_arn
            target = old.target_role_arn if change.target_role_arn is None else (change.target_role_arn or None)
            disable = old.disable_session_tags if change.disable_session_tags is None else change.disable_session_tags
            policy = old.policy if change.policy is None else (change.policy or None)
            policy = self._check_policy(policy, disable)
            binding = RoleBinding(
                role_arn=role_arn,
                target_role_arn=target,
                disable_session_tags=disable,
                policy=policy,
                external_id=(
                    self._external_id(current.cluster, current.namespace, current.service_account) if target else None
                ),
            )
            now = self._clock()
            settling = self._settling(region, cluster, current.namespace, current.service_account)
            updated = replace(
                current,
                binding=binding,
                modified_at=self._wall(),
                # Until the change propagates, pods keep getting what they got before it.
                previous=current.effective(now),
                effective_from=now + settling.delay,
                outages=_shifted(settling, now),
            )
            table[association_id] = updated
            return updated

    def delete_association(
        self, region: str, cluster: str, association_id: str, *, as_owner: str | None = None
    ) -> Association:
        with self._lock:
            table = self._associations.get((region, cluster), {})
            current = table.get(association_id)
            if current is None:
                raise EksError(
                    "ResourceNotFoundException",
                    f"No Pod Identity Association found for id {association_id} in cluster {cluster}",
                    clusterName=cluster,
                )
            if current.owner_arn is not None and current.owner_arn != as_owner:
                raise EksError(
                    "InvalidRequestException",
                    f"Pod Identity Association {association_id} is owned by {current.owner_arn}; "
                    "delete or update the add-on instead",
                    clusterName=cluster,
                )
            del table[association_id]
            return current

    def list_associations(
        self,
        region: str,
        cluster: str,
        *,
        namespace: str | None,
        service_account: str | None,
        max_results: int,
        next_token: str | None,
    ) -> tuple[list[Association], str | None]:
        after = decode_token(next_token) if next_token else 0
        with self._lock:
            rows = sorted(self._associations.get((region, cluster), {}).values(), key=lambda a: a.seq)
        rows = [
            a
            for a in rows
            if a.seq > after
            and (namespace is None or a.namespace == namespace)
            and (service_account is None or a.service_account == service_account)
        ]
        page = rows[:max_results]
        token = encode_token(page[-1].seq) if len(rows) > max_results else None
        return page, token

    def effective_binding(
        self, region: str, cluster: str, namespace: str, service_account: str
    ) -> tuple[Association, RoleBinding] | None:
        now = self._clock()
        with self._lock:
            for association in self._associations.get((region, cluster), {}).values():
                if (association.namespace, association.service_account) == (namespace, service_account):
                    binding = association.effective(now)
                    return None if binding is None else (association, binding)
        return None

    # ---- add-ons ---------------------------------------------------------------------------------

    def create_addon(self, cluster: ClusterRef, body: Mapping[str, Any]) -> tuple[Addon, list[CreateRequest]]:
        """Validate and record an add-on; the caller then creates the associations it owns."""
        name = body.get("addonName")
        if not isinstance(name, str) or name not in KNOWN_ADDONS:
            raise EksError("InvalidParameterException", f"Addon {name} specified is not supported", addonName=str(name))
        version = body.get("addonVersion") or KNOWN_ADDONS[name]
        namespace_config = body.get("namespaceConfig") or {}
        namespace = namespace_config.get("namespace", "kube-system") if isinstance(namespace_config, Mapping) else ""
        tags = validate_tags(body.get("tags"))
        owned: list[CreateRequest] = []
        for item in body.get("podIdentityAssociations") or []:
            if not isinstance(item, Mapping):
                raise EksError("InvalidParameterException", "podIdentityAssociations entries must be objects")
            request, _ = self.check_create(
                cluster,
                {"namespace": namespace, "serviceAccount": item.get("serviceAccount"), "roleArn": item.get("roleArn")},
            )
            owned.append(request)
        with self._lock:
            table = self._addons.setdefault((cluster.region, cluster.name), {})
            if name in table:
                raise EksError(
                    "ResourceInUseException",
                    f"Addon {name} already exists in cluster {cluster.name}",
                    clusterName=cluster.name,
                    addonName=name,
                )
            now = self._wall()
            addon = Addon(
                cluster=cluster,
                name=name,
                version=str(version),
                arn=f"arn:aws:eks:{cluster.region}:{cluster.account}:addon/{cluster.name}/{name}/{uuid.uuid4()}",
                namespace=str(namespace),
                tags=MappingProxyType(tags),
                created_at=now,
                modified_at=now,
                service_account_role_arn=body.get("serviceAccountRoleArn"),
                configuration_values=body.get("configurationValues"),
                association_arns=(),
                active_from=self._clock() + self.addon_delay,
            )
            table[name] = addon
        return addon, owned

    def attach_addon_associations(self, addon: Addon, arns: tuple[str, ...]) -> Addon:
        with self._lock:
            updated = replace(addon, association_arns=arns)
            self._addons[(addon.cluster.region, addon.cluster.name)][addon.name] = updated
            return updated

    def describe_addon(self, region: str, cluster: str, name: str) -> Addon:
        with self._lock:
            found = self._addons.get((region, cluster), {}).get(name)
        if found is None:
            raise EksError(
                "ResourceNotFoundException",
                f"No addon: {name} found in cluster: {cluster}",
                clusterName=cluster,
                addonName=name,
            )
        return found

    def list_addons(self, region: str, cluster: str) -> list[str]:
        with self._lock:
            return sorted(self._addons.get((region, cluster), {}))

    def delete_addon(self, region: str, cluster: str, name: str) -> Addon:
        addon = self.describe_addon(region, cluster, name)
        with self._lock:
            for association in list(self._associations.get((region, cluster), {}).values()):
                if association.owner_arn == addon.arn:
                    del self._associations[(region, cluster)][association.association_id]
            self._addons.get((region, cluster), {}).pop(name, None)
        return replace(addon, deleting=True)

    def has_addon(self, region: str, cluster: str, name: str) -> bool:
        with self._lock:
            return name in self._addons.get((region, cluster), {})

    def now(self) -> float:
        return self._clock()

    # ---- tags on our own ARNs --------------------------------------------------------------------

    def _find_arn(self, arn: str) -> tuple[tuple[str, str], str, bool] | None:
        for key, table in self._associations.items():
            for association in table.values():
                if association.association_arn == arn:
                    return key, association.association_id, True
        for key, addons in self._addons.items():
            for addon in addons.values():
                if addon.arn == arn:
                    return key, addon.name, False
        return None

    def owns_arn(self, arn: str) -> bool:
        return ":podidentityassociation/" in arn or ":addon/" in arn

    def tags_for(self, arn: str) -> dict[str, str]:
        with self._lock:
            found = self._find_arn(arn)
            if found is None:
                raise EksError("NotFoundException", f"Resource {arn} not found")
            key, ident, is_association = found
            if is_association:
                return dict(self._associations[key][ident].tags)
            return dict(self._addons[key][ident].tags)

    def retag(self, arn: str, add: Mapping[str, str], remove: tuple[str, ...] = ()) -> None:
        with self._lock:
            found = self._find_arn(arn)
            if found is None:
                raise EksError("NotFoundException", f"Resource {arn} not found")
            key, ident, is_association = found
            current = self._associations[key][ident].tags if is_association else self._addons[key][ident].tags
            merged = {k: v for k, v in {**current, **add}.items() if k not in remove}
            if len(merged) > MAX_TAGS:
                raise EksError("BadRequestException", f"A resource can have at most {MAX_TAGS} tags")
            frozen = MappingProxyType(merged)
            if is_association:
                self._associations[key][ident] = replace(self._associations[key][ident], tags=frozen)
            else:
                self._addons[key][ident] = replace(self._addons[key][ident], tags=frozen)

    # ---- clusters --------------------------------------------------------------------------------

    def set_auto_mode(self, region: str, cluster: str, config: Mapping[str, Any]) -> None:
        with self._lock:
            self._auto_mode[(region, cluster)] = dict(config)

    def auto_mode(self, region: str, cluster: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._auto_mode.get((region, cluster))

    def forget_cluster(self, region: str, cluster: str) -> None:
        """Deleting a cluster deletes its associations and add-ons with it, as in EKS."""
        with self._lock:
            self._associations.pop((region, cluster), None)
            self._addons.pop((region, cluster), None)
            self._auto_mode.pop((region, cluster), None)
            for key in [k for k in self._tokens if k[:2] == (region, cluster)]:
                del self._tokens[key]


def _shifted(settling: Settling, start: float) -> tuple[tuple[float, float], ...]:
    return tuple((start + begin, start + end) for begin, end in settling.outages)
