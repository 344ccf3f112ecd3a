"""What the operator's integration tests share: the operator installed from its manifests and replicas running in
this process as the operator's own service account."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from e2e_support import Sandbox, run_cli

from keyless.kube.home import HomeCluster
from keyless.operator.controller import OperatorOptions, run_operator
from keyless.operator.reconcile import Reconciler

OPERATOR_NAMESPACE = "keyless-system"
OPERATOR_CONTEXT = "keyless-operator@sandbox-eks"


@contextmanager
def operator_replicas(sandbox: Sandbox, env: dict[str, str], apply_manifests: Callable[[str], None],
                      holder_prefix: str, namespaces: Sequence[str] = ()) -> Iterator[list[str]]:
    """`keyless operator manifests` installed with `apply_manifests` (the Deployment aside: its replicas are threads
    here), and two replicas running as the operator's service account; answers their holder names."""
    stack, _ = sandbox
    code, manifests = run_cli("operator", "manifests", "--namespace", OPERATOR_NAMESPACE)
    assert code == 0, manifests
    documents = manifests.split("\n---\n")
    assert any("kind: Deployment" in d for d in documents)
    apply_manifests("\n---\n".join(d for d in documents if "kind: Deployment" not in d))
    assert stack.eks is not None
    # `kubectl create token keyless-operator -n keyless-system`, in a context of its own.
    token = stack.eks.mint_token(OPERATOR_NAMESPACE, "keyless-operator", expiration_seconds=7200)
    stack.eks.write_kubeconfig(env["KUBECONFIG"], OPERATOR_CONTEXT, token=token, make_current=False)
    stop = threading.Event()
    threads, holders = [], []
    for index in (1, 2):
        home = HomeCluster(OPERATOR_CONTEXT)
        holder = f"{holder_prefix}/{index}"
        reconciler = Reconciler(Path(env["KEYLESS_TARGETS"]), holder, home.config_map_value)
        options = OperatorOptions(namespaces=tuple(namespaces), refresh_interval=600.0, tick=1.0)
        ready = threading.Event()
        thread = threading.Thread(target=asyncio.run, args=(run_operator(reconciler, home, options, stop_flag=stop,
                                                                         ready_flag=ready),),
                                  name=f"operator-{index}", daemon=True)
        thread.start()
        assert ready.wait(30), "the operator did not start"
        threads.append(thread)
        holders.append(holder)
    try:
        yield holders
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
