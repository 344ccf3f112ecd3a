"""A stand-in for Porter's own deploy: creates an app's Deployments and CronJobs in the sandbox cluster."""

from __future__ import annotations

from typing import cast

from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob

from keyless.porter.model import App, ServiceType

IMAGE = "registry.sandbox.local/porter/app:latest"


def _manifest(app: str, service: str, kind: ServiceType, namespace: str, replicas: int) -> dict[str, object]:
    labels = {"porter.run/app-name": app, "porter.run/service-name": service}
    pod = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": service, "image": IMAGE}]}}
    meta = {"name": f"{app}-{service}", "namespace": namespace, "labels": labels}
    if kind is ServiceType.JOB:
        pod["spec"]["restartPolicy"] = "Never"  # type: ignore[index]
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
                "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": pod}}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": pod}}


def deploy_workloads(client: Client, app_name: str, app: App, namespace: str) -> list[str]:
    """Create each service's workload if it is missing (as a Porter deploy would); answers what was created."""
    created: list[str] = []
    for service in app.services:
        manifest = _manifest(app_name, service.name, service.kind, namespace, service.instances or 1)
        name = f"{app_name}-{service.name}"
        try:
            if service.kind is ServiceType.JOB:
                client.get(CronJob, name=name, namespace=namespace)
            else:
                client.get(Deployment, name=name, namespace=namespace)
            continue
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        if service.kind is ServiceType.JOB:
            client.create(cast(CronJob, CronJob.from_dict(manifest)))
        else:
            client.create(cast(Deployment, Deployment.from_dict(manifest)))
        created.append(f"{manifest['kind']} {namespace}/{name}")
    return created
