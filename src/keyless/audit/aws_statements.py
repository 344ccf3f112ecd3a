"""What one IAM policy statement really grants: its actions, the reach of its resources, and its conditions."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keyless.audit.iam_actions import ActionCatalog, ActionInfo
from keyless.iam_policy import as_list, pattern_regex

# Condition keys that, tested with a positive operator, really narrow a grant to some resources or callers.
_SCOPING_KEYS = ("iam:passedtoservice", "aws:resourceaccount", "aws:resourceorgid", "aws:resourceorgpaths",
                 "aws:sourceaccount", "aws:sourcearn", "aws:principaltag/", "aws:resourcetag/")
_SERVICE_RESOURCE_TAG = re.compile(r"^[a-z0-9-]+:resourcetag/", re.IGNORECASE)
# Positive operators only: a negated operator, IfExists or ForAllValues is also true when the key is absent.
_SCOPING_OPERATORS = frozenset({"stringequals", "stringequalsignorecase", "stringlike", "arnequals", "arnlike"})
_SET_PREFIXES = ("forallvalues:", "foranyvalue:")
# Global keys that carry several values; every other global key carries one.
_MULTIVALUED_GLOBAL = frozenset({"aws:tagkeys", "aws:calledvia", "aws:principalservicenameslist",
                                 "aws:principalorgpaths", "aws:resourceorgpaths", "aws:sourceorgpaths"})
_SINGLE_VALUED_GLOBAL = frozenset({
    "aws:sourceip", "aws:sourcevpc", "aws:sourcevpce", "aws:username", "aws:userid", "aws:principalarn",
    "aws:principalaccount", "aws:principalorgid", "aws:principaltype", "aws:principalisawsservice",
    "aws:requestedregion", "aws:securetransport", "aws:multifactorauthpresent", "aws:multifactorauthage",
    "aws:currenttime", "aws:epochtime", "aws:sourcearn", "aws:sourceaccount", "aws:sourceorgid",
    "aws:resourceaccount", "aws:resourceorgid", "aws:viaawsservice", "aws:calledviafirst", "aws:calledvialast",
    "aws:referer", "aws:useragent", "aws:tokenissuetime", "aws:federatedprovider", "aws:sourceidentity",
    "aws:ec2instancesourcevpc", "aws:ec2instancesourceprivateipv4", "aws:vpcsourceip",
})
_SINGLE_VALUED_GLOBAL_PREFIXES = ("aws:requesttag/", "aws:resourcetag/", "aws:principaltag/")
_VARIABLE = re.compile(r"\$\{[^}]*\}")
USERNAME_VARIABLE = "${aws:username}"


@dataclass(frozen=True, slots=True)
class Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    def describe(self) -> str:
        shown = self.values[0] if len(self.values) == 1 else json.dumps(list(self.values))
        return f"{self.key} {self.operator} {shown}"


def conditions(statement: Mapping[str, Any]) -> list[Condition]:
    block = statement.get("Condition")
    if not isinstance(block, Mapping):
        return []
    return [Condition(str(operator), str(key), tuple(str(v) for v in as_list(values)))
            for operator, tests in block.items() if isinstance(tests, Mapping) for key, values in tests.items()]


def _is_scoping_key(key: str) -> bool:
    lowered = key.lower()
    return lowered.startswith(_SCOPING_KEYS) or bool(_SERVICE_RESOURCE_TAG.match(lowered))


def scoping_conditions(statement: Mapping[str, Any]) -> list[Condition]:
    """The conditions that really limit where or by whom the statement's grant can be used."""
    return [c for c in conditions(statement)
            if c.operator.lower().removeprefix("foranyvalue:") in _SCOPING_OPERATORS and _is_scoping_key(c.key)
            and c.values and not any(v.strip("*") == "" for v in c.values)]


def self_scoped(statement: Mapping[str, Any]) -> bool:
    """Every Resource is the caller's own IAM user's: a role session has no aws:username, so it reaches nothing."""
    resources = [str(r) for r in as_list(statement.get("Resource"))]
    return bool(resources) and all(USERNAME_VARIABLE in r.lower() for r in resources)


# --- actions ------------------------------------------------------------------------------------------


def granted(statement: Mapping[str, Any], catalog: ActionCatalog) -> dict[str, ActionInfo]:
    """Every known action the statement's Action names, or, for NotAction, every known action it does not name."""
    found: dict[str, ActionInfo] = {}
    if "NotAction" in statement:
        excluded = [pattern_regex(str(p)) for p in as_list(statement["NotAction"])]
        for info in catalog.expand("*"):
            if not any(r.fullmatch(info.action) for r in excluded):
                found.setdefault(info.action.lower(), info)
        return found
    for pattern in as_list(statement.get("Action")):
        for info in catalog.expand(str(pattern)):
            found.setdefault(info.action.lower(), info)
    return found


def _names(catalog: ActionCatalog) -> tuple[frozenset[str], Mapping[str, tuple[str, ...]]]:
    # Only reached for a name that matched nothing, which is rare; expand("*") is cached by the catalogue.
    by_service: dict[str, list[str]] = {}
    for info in catalog.expand("*"):
        by_service.setdefault(info.service, []).append(info.action)
    return frozenset(by_service), {service: tuple(actions) for service, actions in by_service.items()}


def unknown_actions(statement: Mapping[str, Any], catalog: ActionCatalog) -> list[tuple[str, list[str]]]:
    """(pattern, nearest existing actions) for each Action/NotAction entry that matches no action AWS has."""
    found: list[tuple[str, list[str]]] = []
    for pattern in [*as_list(statement.get("Action")), *as_list(statement.get("NotAction"))]:
        text = str(pattern)
        if catalog.expand(text):
            continue
        services, actions = _names(catalog)
        service, sep, name = text.partition(":")
        if not sep:
            found.append((text, []))
        elif service.lower() in services:
            spelled = {a.split(":", 1)[1].lower(): a for a in actions[service.lower()]}
            near = difflib.get_close_matches(name.lower().replace("*", ""), list(spelled), n=3, cutoff=0.6)
            found.append((text, [spelled[n] for n in near]))
        else:
            near = difflib.get_close_matches(service.lower(), list(services), n=3, cutoff=0.6)
            found.append((text, [f"{n}:{name}" for n in near]))
    return found


# --- resources ----------------------------------------------------------------------------------------


def _arn_parts(arn: str) -> list[str] | None:
    parts = arn.split(":", 5)
    return parts if len(parts) == 6 and parts[0].lower() == "arn" else None


@functools.lru_cache(maxsize=8192)
def _format_regex(arn_format: str) -> re.Pattern[str]:
    pieces = _VARIABLE.split(arn_format)
    return re.compile(".+".join(re.escape(p) for p in pieces), re.IGNORECASE)


def effectively_star(resource: str, infos: Iterable[ActionInfo]) -> bool:
    """An ARN with every region, every account and every resource of its type (arn:*:cloudtrail:*:*:trail/*)."""
    parts = _arn_parts(resource)
    if parts is None or parts[3] not in ("", "*") or parts[4] not in ("", "*"):
        return False
    tail = parts[5].lower()
    if tail.strip("*") == "":
        return True
    for info in infos:
        for arn_format in info.arn_formats:
            form = _arn_parts(arn_format)
            if form is not None and _VARIABLE.sub("*", form[5]).lower() == tail:
                return True
    return False


def _can_match(resource: str, arn_format: str) -> bool:
    if resource == "*" or _format_regex(arn_format).fullmatch(resource):
        return True
    if _arn_parts(resource) is None:
        return True  # not an ARN keyless can read: say nothing
    # A wildcard may stand for a name, or for a path or ARN segment of several parts (bucket* covers bucket/key):
    # the resource can match if one of these stand-ins does.
    return any(_format_regex(arn_format).fullmatch(resource.replace("*", fill).replace("?", "x"))
               for fill in ("x", "x/x", "x:x", "x/x/x")) if ("*" in resource or "?" in resource) else False


def mismatched(statement: Mapping[str, Any], catalog: ActionCatalog) -> list[tuple[ActionInfo, list[str]]]:
    """Actions named outright (not by a pattern) that no Resource of the statement can be one of."""
    resources = [str(r) for r in as_list(statement.get("Resource"))]
    if not resources or "*" in resources:
        return []
    found: list[tuple[ActionInfo, list[str]]] = []
    for pattern in as_list(statement.get("Action")):
        text = str(pattern)
        if "*" in text or "?" in text:
            continue
        for info in catalog.expand(text):
            if info.arn_formats and not any(_can_match(r, f) for r in resources for f in info.arn_formats):
                found.append((info, list(info.arn_formats)))
    return found


# --- conditions ---------------------------------------------------------------------------------------


def _single_valued(key: str, catalog: ActionCatalog) -> bool | None:
    lowered = key.lower()
    if lowered.startswith("aws:"):
        if lowered in _MULTIVALUED_GLOBAL:
            return False
        if lowered in _SINGLE_VALUED_GLOBAL or lowered.startswith(_SINGLE_VALUED_GLOBAL_PREFIXES):
            return True
        return None
    kind = catalog.condition_key_type(key)
    if kind is None:
        return None
    return not kind.lower().startswith("arrayof")


def set_operator_misuse(statement: Mapping[str, Any], catalog: ActionCatalog) -> list[Condition]:
    """ForAllValues/ForAnyValue conditions on keys that only ever carry one value."""
    return [c for c in conditions(statement)
            if c.operator.lower().startswith(_SET_PREFIXES) and _single_valued(c.key, catalog)]


def _supports(info: ActionInfo, key: str) -> bool:
    lowered = key.lower()
    for known in info.condition_keys:
        k = known.lower()
        if k == lowered or ("/" in k and "/" in lowered and k.split("/", 1)[0] == lowered.split("/", 1)[0]):
            return True
    return False


def unset_condition_keys(statement: Mapping[str, Any],
                         infos: Sequence[ActionInfo]) -> list[tuple[Condition, list[str]]]:
    """Service condition keys that none of the statement's actions sets, with the keys they do set."""
    if not infos:
        return []
    found: list[tuple[Condition, list[str]]] = []
    for condition in conditions(statement):
        key = condition.key
        if key.lower().startswith("aws:"):
            continue  # global keys: present on every request that has them at all
        if ":" not in key:
            found.append((condition, []))
            continue
        if not any(info.condition_keys for info in infos):
            continue  # the database knows no keys for these actions: nothing to judge by
        if not any(_supports(info, key) for info in infos):
            service = key.split(":", 1)[0].lower()
            offered = sorted({k for info in infos if info.service == service for k in info.condition_keys})
            found.append((condition, offered))
    return found
