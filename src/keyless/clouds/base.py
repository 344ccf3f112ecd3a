"""The shape of one cloud's registry entry, and the values every cloud shares: the Cloud name, identities, previews."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keyless import names


class Cloud(enum.StrEnum):
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"


# On service accounts keyless records the bound identity in readable form (role ARN, group/name of the
# managed identity, Google account email); on pod templates the same key holds the identity fingerprint.
IDENTITY_ANNOTATION = "keyless.dev/identity"
# Written on the service account BEFORE keyless writes a binding that lives on an identity (Azure credentials,
# GCP members), and cleared once the service's apply is done: an apply killed in between leaves it, so the next
# plan looks on those identities too and no binding keyless made can outlive its connection unseen.
PENDING_ANNOTATION = "keyless.dev/pending-identities"
# The journal: the id of the cloud binding keyless last applied for the account (an EKS association id, ...).
# `--refresh=false` trusts it against the cloud's list pages instead of reading each binding again; the planner
# keeps it equal to what it observed, and apply writes the id a create answered with.
BINDING_ANNOTATION = "keyless.dev/binding"


# --- previews: what a connection makes keyless create, for the dashboard's info box ----------------------

Language = Literal["json", "yaml", "text"]


@dataclass(frozen=True, slots=True)
class PreviewDocument:
    """One document of a preview, shown as a code block: `language` says how to highlight `body`."""

    label: str
    language: Language
    body: str


@dataclass(frozen=True, slots=True)
class ConnectionPreview:
    """What a connection makes keyless create, and what the person has to provide themselves."""

    title: str
    summary: str
    documents: tuple[PreviewDocument, ...]


@dataclass(frozen=True, slots=True)
class PreviewContext:
    """One connection of a service, the target it is previewed for (None: not one of its cloud), and placeholders."""

    app: str
    service: str
    connection: Mapping[str, str]  # porter.yaml spelling: `type` and its fields
    target_name: str | None
    target: Any | None  # the target when it is on the connection's cloud
    cloud_name: str  # of the connection's cloud ("AWS")
    cluster_kind: str  # of the connection's cloud ("EKS")
    other_cloud_name: str | None = None  # the target's cloud when it is another one

    def field(self, model: type[Any], attribute: str, placeholder: str) -> str:
        """The value of a connection field, by its porter.yaml spelling (the model's alias), or `placeholder`."""
        spelling = model.model_fields[attribute].alias or attribute
        return self.connection.get(spelling, "").strip() or placeholder

    @property
    def service_account(self) -> str:
        return names.service_account_name(self.app, self.service)

    def target_label(self) -> str:
        """The target's name where it is the one the values are for, else a placeholder."""
        if self.target_name and self.other_cloud_name is None:
            return self.target_name
        return "<target name>"

    def namespace(self) -> str:
        return str(self.target.namespace) if self.target is not None else "<namespace of the target>"

    def cluster(self) -> str:
        return str(self.target.cluster) if self.target is not None else f"<{self.cluster_kind} cluster of the target>"

    def which_target(self) -> str:
        """The sentence of the summary saying which target the values are for."""
        if self.target is not None:
            return (f"Values for target {self.target_name or '?'!r} ({self.cluster_kind} cluster "
                    f"{self.target.cluster}, namespace {self.target.namespace}).")
        elsewhere = ""
        if self.other_cloud_name is not None:
            elsewhere = (f"Target {self.target_name or '?'!r} is on {self.other_cloud_name}, where this connection "
                         "does nothing. ")
        return (f"{elsewhere}It takes effect when the app is deployed to a target on {self.cloud_name}; "
                "values in <angle brackets> come from that target.")


def preview_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


# --- the entry -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionField:
    """One field a person fills in for a connection: its porter.yaml spelling and its label in the dashboard."""

    name: str
    label: str


@dataclass(frozen=True)
class CloudEntry:
    """Everything keyless knows about one cloud, in one place; the rest of keyless reads it from here."""

    cloud: Cloud
    name: str  # as people name the cloud: "AWS", "Azure", "Google Cloud"
    cluster_kind: str  # "EKS", "AKS", "GKE"
    mechanism: str  # "EKS Pod Identity"
    # porter.yaml
    connection_type: str  # "awsRole"
    connection_model: type[Any]  # the pydantic model of the connection
    connection_fields: tuple[ConnectionField, ...]
    connection_title: str  # the dashboard section: "IAM Role Connection"
    access_words: str  # "this IAM role": what the pods gain access through
    identity_of: Callable[[Any], Any]  # connection model -> identity value
    # targets file
    target_model: type[Any]
    # identities and the cloud object that binds them
    # The identity value: a frozen dataclass with `key` (the fields identities are compared on), `spelled_once`
    # (one spelling for sharing checks), `describe()` (readable, and recorded on the account) and
    # `annotations(service)` (what the cloud's webhook reads on the service account).
    identity_type: type[Any]
    binding_kind: str  # "Pod Identity association"
    # Kubernetes side
    annotation_keys: frozenset[str]  # every service-account annotation keyless writes for this cloud
    stale_annotations: Mapping[str, str]  # annotations that contradict keyless's binding, with why
    pod_labels: Mapping[str, str]  # labels the cloud's webhook needs on pods
    # planner traits, stated rather than inferred from a provider
    one_binding_per_service_account: bool  # the cloud keys bindings on the account: someone else's is in the way
    updates_in_place: bool  # an identity change is an update of the binding, else a replace
    marks_adopted: bool  # an adopted binding can carry keyless's mark (AWS tags); else it is used as found
    # Bindings live on the identity (Azure credentials, GCP members): keyless finds its own by the identities its
    # service accounts record, so it records an identity before it writes a binding there.
    found_through_identity: bool
    # the dashboard
    example_values: Callable[[str, str, Any | None], dict[str, str]]  # (app, service, target) -> field examples
    preview: Callable[[PreviewContext], ConnectionPreview]
    # I/O, named by import path so this entry stays in the pure core; the engine loads them
    provider: str  # "keyless.providers.aws:AwsProvider"
    auditor: str
