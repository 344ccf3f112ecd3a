"""The dashboard's preview of a connection: what keyless creates for it, filled in with the service's values."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from ruamel.yaml import YAML

from keyless import names
from keyless.errors import UsageError
from keyless.preview import ConnectionPreview, PreviewDocument, preview_connection
from keyless.targets import AnyTarget, AwsTarget, AzureTarget, GcpTarget

AWS_TARGET = AwsTarget.model_validate({"cloud": "aws", "region": "us-east-1", "cluster": "prod",
                                       "namespace": "shop-eks"})
AZURE_TARGET = AzureTarget.model_validate({
    "cloud": "azure", "subscription": "11111111-2222-3333-4444-555555555555", "resourceGroup": "platform",
    "cluster": "prod-aks", "namespace": "shop-ns"})
GCP_TARGET = GcpTarget.model_validate({"cloud": "gcp", "project": "acme-prod-1", "location": "us-central1",
                                       "cluster": "prod-gke", "namespace": "shop-gke"})

AWS = {"type": "awsRole", "role": "shop-api-reader"}
AWS_ARN = {"type": "awsRole", "role": "arn:aws:iam::123456789012:role/teams/shop-api"}
AZURE = {"type": "azureManagedIdentity", "identityName": "shop-api-identity", "resourceGroup": "rg-shop"}
GCP = {"type": "gcpServiceAccount", "serviceAccountEmail": "shop-api@acme-data-1.iam.gserviceaccount.com"}


def _document(preview: ConnectionPreview, starts: str) -> PreviewDocument:
    return next(d for d in preview.documents if d.label.startswith(starts))


def _json(preview: ConnectionPreview, starts: str) -> Any:
    document = _document(preview, starts)
    assert document.language == "json"
    return json.loads(document.body)


# --- AWS -----------------------------------------------------------------------------------------


def test_aws_role_on_an_eks_target() -> None:
    preview = preview_connection("shop", "api", AWS, "prod-eks", AWS_TARGET)
    assert preview.title == "AWS IAM role for api"
    assert "'prod-eks'" in preview.summary
    assert "EKS cluster prod, namespace shop-eks" in preview.summary
    assert _json(preview, "Trust policy") == {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                       "Action": ["sts:AssumeRole", "sts:TagSession"]}],
    }
    association = _json(preview, "EKS Pod Identity association")
    assert association == {
        "clusterName": "prod",
        "namespace": "shop-eks",
        "serviceAccount": "shop-api",
        "roleArn": association["roleArn"],
        "tags": {"keyless.dev/managed-by": "keyless", "keyless.dev/app": "shop", "keyless.dev/service": "api",
                 "keyless.dev/target": "prod-eks"},
    }
    assert association["roleArn"].startswith("<")
    assert "shop-api-reader" in association["roleArn"]
    assert "at deploy" in association["roleArn"]


def test_aws_role_given_as_an_arn_is_shown_as_it_is() -> None:
    preview = preview_connection("shop", "api", AWS_ARN, "prod-eks", AWS_TARGET)
    assert _json(preview, "EKS Pod Identity association")["roleArn"] == AWS_ARN["role"]


def test_aws_role_without_a_target_uses_placeholders() -> None:
    preview = preview_connection("shop", "worker", AWS, None, None)
    association = _json(preview, "EKS Pod Identity association")
    assert association["clusterName"] == "<EKS cluster of the target>"
    assert association["namespace"] == "<namespace of the target>"
    assert association["serviceAccount"] == "shop-worker"
    assert association["tags"]["keyless.dev/target"] == "<target name>"
    assert "takes effect when the app is deployed to a target on AWS" in preview.summary


# --- Azure ---------------------------------------------------------------------------------------


def test_azure_identity_on_an_aks_target() -> None:
    preview = preview_connection("shop", "api", AZURE, "prod-aks", AZURE_TARGET)
    assert preview.title == "Azure managed identity for api"
    assert "'prod-aks'" in preview.summary
    assert "subscription 11111111-2222-3333-4444-555555555555" in preview.summary
    assert "shop-api-identity" in preview.summary
    document = _document(preview, "Federated identity credential")
    assert "rg-shop/shop-api-identity" in document.label
    credential = json.loads(document.body)
    assert credential == {
        "name": names.federated_credential_name("shop", "api", "prod-aks"),
        "issuer": "<the OIDC issuer URL of AKS cluster prod-aks (read at deploy)>",
        "subject": "system:serviceaccount:shop-ns:shop-api",
        "audiences": ["api://AzureADTokenExchange"],
    }
    assert credential["name"].startswith("keyless_shop_api_")


def test_azure_identity_without_a_target_uses_placeholders() -> None:
    credential = _json(preview_connection("shop", "api", AZURE, None, None), "Federated identity credential")
    assert credential["name"] == "keyless_shop_api_<target hash>"
    assert credential["issuer"] == "<the OIDC issuer URL of the target's AKS cluster (read at deploy)>"
    assert credential["subject"] == "system:serviceaccount:<namespace of the target>:shop-api"


# --- Google Cloud --------------------------------------------------------------------------------


def test_gcp_service_account_on_a_gke_target() -> None:
    preview = preview_connection("shop", "api", GCP, "prod-gke", GCP_TARGET)
    assert preview.title == "Google service account for api"
    assert "'prod-gke'" in preview.summary
    binding = _json(preview, "IAM policy binding")
    assert binding == {"role": "roles/iam.workloadIdentityUser",
                       "members": ["serviceAccount:acme-prod-1.svc.id.goog[shop-gke/shop-api]"]}
    assert GCP["serviceAccountEmail"] in _document(preview, "IAM policy binding").label
    annotation = _document(preview, "Annotation")
    assert annotation.language == "yaml"
    account = YAML(typ="safe", pure=True).load(annotation.body)
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == "shop-api"
    assert account["metadata"]["namespace"] == "shop-gke"
    assert account["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": GCP["serviceAccountEmail"]}


def test_gcp_service_account_without_a_target_uses_placeholders() -> None:
    binding = _json(preview_connection("shop", "api", GCP, None, None), "IAM policy binding")
    member = "serviceAccount:<project of the target>.svc.id.goog[<namespace of the target>/shop-api]"
    assert binding["members"] == [member]


# --- targets of another cloud, names, shapes ----------------------------------------------------


@pytest.mark.parametrize(("connection", "target_name", "target", "cloud", "placeholder"), [
    (AWS, "prod-aks", AZURE_TARGET, "Azure", "<EKS cluster of the target>"),
    (AZURE, "prod-gke", GCP_TARGET, "Google Cloud", "<namespace of the target>"),
    (GCP, "prod-eks", AWS_TARGET, "AWS", "<project of the target>"),
])
def test_a_target_of_another_cloud_fills_in_nothing_and_says_so(
    connection: dict[str, str], target_name: str, target: AnyTarget, cloud: str, placeholder: str
) -> None:
    preview = preview_connection("shop", "api", connection, target_name, target)
    assert f"Target {target_name!r} is on {cloud}, where this connection does nothing." in preview.summary
    bodies = "".join(d.body for d in preview.documents)
    assert placeholder in bodies
    assert "<namespace of the target>" in bodies
    assert target.namespace not in bodies
    assert target_name not in bodies


def test_a_long_app_and_service_name_uses_the_shortened_service_account() -> None:
    app, service = "a-thirty-one-character-app-name", "a-service-name-that-is-exactly-sixty-three-characters-long-abcd"
    account = names.service_account_name(app, service)
    assert len(account) <= 63
    assert account != f"{app}-{service}"
    aws = preview_connection(app, service, AWS, "prod-eks", AWS_TARGET)
    assert _json(aws, "EKS Pod Identity association")["serviceAccount"] == account
    azure = preview_connection(app, service, AZURE, "prod-aks", AZURE_TARGET)
    assert _json(azure, "Federated identity credential")["subject"] == f"system:serviceaccount:shop-ns:{account}"
    gcp = preview_connection(app, service, GCP, "prod-gke", GCP_TARGET)
    member = f"serviceAccount:acme-prod-1.svc.id.goog[shop-gke/{account}]"
    assert _json(gcp, "IAM policy binding")["members"] == [member]
    assert account in _document(gcp, "Annotation").body


@pytest.mark.parametrize("connection", [AWS, AWS_ARN, AZURE, GCP], ids=["aws", "aws-arn", "azure", "gcp"])
@pytest.mark.parametrize(("target_name", "target"), [
    ("prod-eks", AWS_TARGET), ("prod-aks", AZURE_TARGET), ("prod-gke", GCP_TARGET), (None, None), ("later", None),
])
def test_every_document_parses_in_its_language(
    connection: dict[str, str], target_name: str | None, target: AnyTarget | None
) -> None:
    preview = preview_connection("shop", "api", connection, target_name, target)
    assert preview.title
    assert preview.summary
    assert preview.documents
    for document in preview.documents:
        assert document.language in ("json", "yaml", "text")
        assert document.label
        if document.language == "json":
            assert isinstance(json.loads(document.body), dict)
        elif document.language == "yaml":
            assert isinstance(YAML(typ="safe", pure=True).load(document.body), dict)


def test_fields_not_filled_in_yet_are_placeholders() -> None:
    aws = preview_connection("shop", "api", {"type": "awsRole", "role": "  "}, "prod-eks", AWS_TARGET)
    assert "<IAM role>" in _json(aws, "EKS Pod Identity association")["roleArn"]
    azure = preview_connection("shop", "api", {"type": "azureManagedIdentity"}, "prod-aks", AZURE_TARGET)
    assert "<resource group>/<managed identity>" in _document(azure, "Federated identity credential").label
    gcp = preview_connection("shop", "api", {"type": "gcpServiceAccount"}, "prod-gke", GCP_TARGET)
    assert "<Google service account email>" in _document(gcp, "Annotation").body


def test_a_target_name_without_its_target_still_names_the_credential() -> None:
    credential = _json(preview_connection("shop", "api", AZURE, "prod-aks", None), "Federated identity credential")
    assert credential["name"] == names.federated_credential_name("shop", "api", "prod-aks")
    assert credential["subject"] == "system:serviceaccount:<namespace of the target>:shop-api"


@pytest.mark.parametrize("connection", [{"type": "cloudSql"}, {"type": "disk"}, {"role": "x"}])
def test_a_connection_that_binds_no_identity_has_no_preview(connection: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        preview_connection("shop", "api", connection, None, None)


def test_a_preview_is_an_immutable_value() -> None:
    preview = preview_connection("shop", "api", AWS, "prod-eks", AWS_TARGET)
    assert preview == preview_connection("shop", "api", AWS, "prod-eks", AWS_TARGET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        preview.title = "changed"  # type: ignore[misc]
