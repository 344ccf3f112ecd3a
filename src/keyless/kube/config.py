"""Which cluster a target means: its kubeconfig file, $KUBECONFIG, ~/.kube/config or the pod's own account."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lightkube import KubeConfig, SingleConfig

from keyless.errors import CloudError
from keyless.targets import KubernetesSide


def _choose_kubeconfig(env: Mapping[str, str], context: str | None) -> KubeConfig:
    """kubectl's order: the $KUBECONFIG files, else ~/.kube/config, else the pod's in-cluster account.

    (lightkube's from_env() tries in-cluster first: keyless run from a CI pod would then talk to the
    CI cluster instead of the one $KUBECONFIG names.)
    """
    listed = [Path(p).expanduser() for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        # kubectl merges a KUBECONFIG list; keyless takes the first file that has the context.
        loaded = [KubeConfig.from_file(f) for f in listed if f.is_file()]
        chosen = next((c for c in loaded if context is None or context in c.contexts), None)
        if chosen is None:
            raise CloudError(f"no kubeconfig in $KUBECONFIG ({env['KUBECONFIG']}) has context {context!r}"
                             if context else f"no kubeconfig file in $KUBECONFIG ({env['KUBECONFIG']}) exists",
                             "check `kubernetes.context` in the targets file (`kubectl config get-contexts`)")
        return chosen
    home = Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"
    if home.is_file() or context is not None:
        return KubeConfig.from_file(home)
    return KubeConfig.from_service_account()


def load_config(side: KubernetesSide, env: Mapping[str, str] | None = None) -> SingleConfig:
    """The kubeconfig context the target names: its `kubeconfig` file, else $KUBECONFIG, ~/.kube/config, in-cluster."""
    env = os.environ if env is None else env
    context = side.context
    try:
        config = KubeConfig.from_file(side.kubeconfig) if side.kubeconfig else _choose_kubeconfig(env, context)
        single = config.get(context_name=context)
    except CloudError:
        raise
    except Exception as exc:
        # A kubeconfig goes through YAML, msgspec and lightkube's own checks, each with its own error
        # types; to a person every one of them means "this kubeconfig cannot be used".
        where = side.kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
        raise CloudError(f"cannot use the kubeconfig {where}" + (f" (context {context!r})" if context else "")
                         + f": {exc}", "set `kubernetes.kubeconfig` and `kubernetes.context` in the targets file, "
                         "or KUBECONFIG") from exc
    assert single is not None  # get() raises rather than return None when no default is given
    return single
