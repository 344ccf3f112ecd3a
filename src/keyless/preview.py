"""What keyless will create for one connection of a service, filled in with its values: the dashboard's info box."""

from __future__ import annotations

from collections.abc import Mapping

from keyless import clouds
from keyless.clouds import ConnectionPreview, PreviewContext, PreviewDocument
from keyless.targets import AnyTarget

__all__ = ["ConnectionPreview", "PreviewDocument", "preview_connection"]


def preview_connection(
    app: str, service: str, connection: Mapping[str, str], target_name: str | None, target: AnyTarget | None
) -> ConnectionPreview:
    """The preview of `connection` (porter.yaml spelling: `type` and its fields) of `service` in `app`, for
    `target` when it is of the connection's cloud; values that depend on a target are `<placeholders>` else.
    Fields not filled in yet are placeholders too, so the box can be shown while a person types."""
    entry = clouds.by_connection_type(connection.get("type", ""))
    target_entry = clouds.for_target(target) if target is not None else None
    on_cloud = target_entry is not None and target_entry.cloud is entry.cloud
    return entry.preview(PreviewContext(
        app=app, service=service, connection=connection, target_name=target_name,
        target=target if on_cloud else None, cloud_name=entry.name, cluster_kind=entry.cluster_kind,
        other_cloud_name=target_entry.name if target_entry is not None and not on_cloud else None,
    ))
