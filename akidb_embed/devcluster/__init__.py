"""Local development cluster: upstream control plane + one real node (kubelet, containerd).

Python API (used by `akidb-embed demo` and the test fixture)::

    from akidb_embed.devcluster import DevCluster, kubectl_path
    cluster = DevCluster()          # state dir: $AKIDB_DEVCLUSTER_DIR or ~/.local/state/...
    cluster.up()                    # builds binaries on first use; idempotent
    cluster.kubeconfig, cluster.server, cluster.status(), cluster.down()

Importing this package is cheap; `cryptography` and `aiohttp` load only when needed.
"""

from __future__ import annotations

from akidb_embed.devcluster.build import KUBE_VERSION, BuildError, ensure_binaries, kubectl_path
from akidb_embed.devcluster.cluster import ClusterError, ClusterStatus, DevCluster

__all__ = [
    "KUBE_VERSION",
    "BuildError",
    "ClusterError",
    "ClusterStatus",
    "DevCluster",
    "ensure_binaries",
    "kubectl_path",
]
