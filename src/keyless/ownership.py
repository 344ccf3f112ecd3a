"""Every mark keyless puts on what it owns, and reading it back: AWS tags, Azure credential names, Kubernetes labels."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from keyless import names


@dataclass(frozen=True, slots=True)
class Owner:
    """What keyless records on an object it creates (tags, labels or a name it reserves)."""

    app: str
    service: str
    target: str


# --- AWS: tags on Pod Identity associations ----------------------------------------------------------

TAG_MANAGED_BY = "keyless.dev/managed-by"
TAG_APP = "keyless.dev/app"
TAG_SERVICE = "keyless.dev/service"
TAG_TARGET = "keyless.dev/target"
MANAGED_BY_KEYLESS = "keyless"


def ownership_tags(owner: Owner) -> dict[str, str]:
    """The tags that mark an association as keyless's, and for which app, service and target."""
    return {TAG_MANAGED_BY: MANAGED_BY_KEYLESS, TAG_APP: owner.app, TAG_SERVICE: owner.service,
            TAG_TARGET: owner.target}


def owner_from_tags(tags: Mapping[str, str] | None) -> Owner | None:
    """The owner recorded by ownership_tags, or None unless every tag is there."""
    tags = tags or {}
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY_KEYLESS:
        return None
    app, service, target = tags.get(TAG_APP), tags.get(TAG_SERVICE), tags.get(TAG_TARGET)
    if not (app and service and target):
        return None
    return Owner(app=app, service=service, target=target)


# --- Azure: federated credentials take no tags, so the name is the mark --------------------------------


def owner_from_credential_name(name: str, target: str) -> Owner | None:
    """The owner keyless recorded in a credential's name, when keyless named it for `target`; else None.

    A keyless name for another target is someone else's business, exactly like a hand-made credential."""
    parsed = names.parse_federated_credential_name(name)
    if parsed is None:
        return None
    app, service, hashed = parsed
    if hashed != names.target_hash(target):
        return None
    return Owner(app=app, service=service, target=target)


# --- Kubernetes: labels on service accounts ---------------------------------------------------------------

MANAGER = "keyless"  # the label value and the server-side apply field manager

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
APP_LABEL = "keyless.dev/app"
SERVICE_LABEL = "keyless.dev/service"
TARGET_LABEL = "keyless.dev/target"
PORTER_APP_LABEL = "porter.run/app-name"
PORTER_SERVICE_LABEL = "porter.run/service-name"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """`text` if Kubernetes accepts it as a label value, else a stable shortened form (same input, same output)."""
    if len(text) <= names.DNS_LABEL_MAX and _LABEL_VALUE.match(text):
        return text
    suffix = names.short_hash(text)
    head = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[: names.DNS_LABEL_MAX - len(suffix) - 1].strip("-_.")
    return f"{head}-{suffix}" if head else suffix


def ownership_labels(app: str, service: str, target: str) -> dict[str, str]:
    """Labels that mark an account as keyless's for one app, service and target (plus Porter's own)."""
    return {
        MANAGED_BY_LABEL: MANAGER,
        APP_LABEL: label_value(app),
        SERVICE_LABEL: label_value(service),
        TARGET_LABEL: label_value(target),
        PORTER_APP_LABEL: label_value(app),
        PORTER_SERVICE_LABEL: label_value(service),
    }


def lock_labels(app: str, target: str) -> dict[str, str]:
    """Labels that mark a Lease as keyless's apply lock for one app on one target."""
    return {MANAGED_BY_LABEL: MANAGER, APP_LABEL: label_value(app), TARGET_LABEL: label_value(target)}


def labelled_for(labels: Mapping[str, str], app: str, target: str) -> bool:
    """Whether the labels mark an object as keyless's for this app on this target."""
    return labels.get(APP_LABEL) == label_value(app) and labels.get(TARGET_LABEL) == label_value(target)


def labelled_elsewhere(labels: Mapping[str, str], app: str, target: str) -> bool:
    """Whether keyless labelled the object for another app or target (two names can collide)."""
    return (APP_LABEL in labels or TARGET_LABEL in labels) and not labelled_for(labels, app, target)


# --- Kubernetes: KeylessApps the control plane hands to the operator -----------------------------------------

CONTROL_PLANE_MANAGER = "keyless-control-plane"  # the label value and the server-side apply field manager
HANDED_OVER_BY_ANNOTATION = "keyless.dev/handed-over-by"  # who handed it over, as the control plane's audit log says
HANDED_OVER_REVISION_ANNOTATION = "keyless.dev/porter-yaml-revision"  # the control plane's revision of porter.yaml


def handover_labels(app: str) -> dict[str, str]:
    """Labels that mark a KeylessApp as written by the control plane for one of its apps."""
    return {MANAGED_BY_LABEL: CONTROL_PLANE_MANAGER, APP_LABEL: label_value(app)}


def handed_over_by_control_plane(labels: Mapping[str, str], app: str) -> bool:
    """Whether the labels mark a KeylessApp as the control plane's for this app (else a person or GitOps made it)."""
    return labels.get(MANAGED_BY_LABEL) == CONTROL_PLANE_MANAGER and labels.get(APP_LABEL) == label_value(app)
