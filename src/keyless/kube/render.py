"""`mode: render`: the Kubernetes side as files for a GitOps tool, behind the same interface as a cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from keyless.errors import CloudError
from keyless.kube.lock import AppLock, LockState, LockStatus
from keyless.kube.manifests import (
    RenderedService,
    render_manifests,
    rendered_services,
    service_account_file,
    service_account_manifest,
    service_account_path,
    workload_patch_document,
    workload_patch_path,
)
from keyless.ownership import APP_LABEL, PORTER_SERVICE_LABEL, label_value
from keyless.plan.model import (
    AccountSpec,
    Intent,
    ObjectRef,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    PodTemplateSettings,
)
from keyless.targets import KubernetesSide


class RenderedKube:
    """`mode: render`: writes manifests for a GitOps tool into `out_dir`, and reads back only what it wrote there."""

    def __init__(self, target: str, side: KubernetesSide | None = None, *, base: Path | None = None) -> None:
        side = side or KubernetesSide()
        root = base if base is not None else Path.cwd()
        self.target = target
        self.out_dir = root / (side.out_dir if side.out_dir else Path("keyless-manifests") / target)
        # Accounts as apply wrote them: the plan's, plus the binding id a create answered with (the journal).
        self._applied: dict[ObjectRef, AccountSpec] = {}

    def observe(
        self, namespace: str, app: str, service_accounts: Collection[str] = ()
    ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        """The accounts keyless rendered earlier for this app and target (so an unchanged app plans no changes);
        workloads live in the GitOps repository's own manifests, which keyless does not read."""
        folder = self._path("serviceaccounts")
        found: list[ObservedServiceAccount] = []
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            if not _written_by_keyless(path, app, self.target):
                continue
            try:
                document = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
            except (OSError, YAMLError):
                continue  # unreadable: the plan shows the account as a create, and apply rewrites the file
            metadata = document.get("metadata") if isinstance(document, dict) else None
            if not isinstance(metadata, dict) or metadata.get("namespace") != namespace or not metadata.get("name"):
                continue
            found.append(ObservedServiceAccount(
                namespace=namespace, name=str(metadata["name"]),
                annotations={str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()},
                labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}))
        return found, []

    def _path(self, relative: str) -> Path:
        path = (self.out_dir / relative).resolve()
        if not path.is_relative_to(self.out_dir.resolve()):
            raise ValueError(f"{relative!r} is outside the output directory")
        return path

    def write(self, files: Mapping[str, str]) -> list[Path]:
        """Write {relative path: text} under out_dir, each file replaced whole (never half-written); a file that
        already holds the text is left untouched, so a GitOps repository sees only what changed."""
        written: list[Path] = []
        for relative, text in sorted(files.items()):
            path = self._path(relative)
            try:
                if path.is_file() and path.read_text(encoding="utf-8") == text:
                    written.append(path)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.partial")
                partial.write_text(text, encoding="utf-8")
                partial.replace(path)
            except OSError as exc:
                raise CloudError(f"cannot write {path}: {exc.strerror or exc}",
                                 "check `kubernetes.outDir` in the targets file") from exc
            written.append(path)
        return written

    def complete(self, plan: Plan) -> None:
        """Once every action is applied: write the whole app's files as the plan carries them (each account as apply
        wrote it)."""
        actions = [replace(a, account=self._applied[a.ref]) if a.ref in self._applied else a for a in plan.actions]
        self.write_app(rendered_services(actions), app=plan.app)

    def write_app(self, services: Sequence[RenderedService], *, app: str) -> list[Path]:
        """Write every file of the app (accounts, patches, helm values); drop those of removed services."""
        files = render_manifests(services, app=app, target=self.target)
        written = self.write(files)
        keep = set(written)
        for folder in ("serviceaccounts", "patches"):
            for path in sorted(self._path(folder).glob("*.yaml")) if self._path(folder).is_dir() else []:
                if path.resolve() not in keep and _written_by_keyless(path, app, self.target):
                    path.unlink()
        return written

    def apply_service_account(self, ref: ObjectRef, spec: AccountSpec, remove_annotations: Collection[str]) -> None:
        self._applied[ref] = spec
        app = str(spec.labels.get(APP_LABEL, ""))
        manifest = service_account_manifest(ref.namespace, ref.name, spec)
        self.write({service_account_path(ref.name): service_account_file(manifest, app=app, target=self.target)})

    def record_intent(self, intent: Intent) -> None:
        # Render mode writes files for a GitOps tool and keeps no state in a cluster: nothing to record.
        return None

    def remove_annotations(self, ref: ObjectRef, keys: Collection[str]) -> None:
        # A rendered account is rewritten whole by complete(); there is nothing to strip from a file here.
        return None

    def delete_service_account(self, ref: ObjectRef) -> bool:
        path = self._path(service_account_path(ref.name))
        if not path.exists():
            return False
        path.unlink()
        return True

    def update_workload(self, workload: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        selector = {PORTER_SERVICE_LABEL: label_value(service)}
        self.write({workload_patch_path(workload.kind, workload.name): workload_patch_document(
            workload.kind, workload.name, workload.namespace, settings, selector)})

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        return True  # the GitOps tool rolls the pods when it syncs the patch

    def request_token(self, namespace: str, name: str, audience: str) -> str | None:
        return None  # no cluster to ask: the propagation check is skipped in render mode

    # Render mode has no cluster to hold a Lease in, and writes each file whole: two renders at once each write a
    # complete, consistent set, and the GitOps repository (its branches, reviews and merges) serializes what lands.
    def try_lock(self, lock: AppLock) -> LockStatus:
        return LockStatus(LockState.MINE, lock.holder)

    def renew_lock(self, lock: AppLock) -> None:
        return None

    def release_lock(self, lock: AppLock) -> None:
        return None


def _written_by_keyless(path: Path, app: str, target: str) -> bool:
    with contextlib.suppress(OSError), path.open(encoding="utf-8") as f:
        return f.readline().startswith(f"# Written by keyless for app {app!r} on target {target!r}")
    return False
