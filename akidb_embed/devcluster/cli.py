"""`akidb-embed cluster ...`: the local development cluster (see docs/LOCAL-CLUSTER.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster import build

    try:
        path = build.ensure_binaries(force=args.force)
        node_path = build.ensure_node_binaries(force=args.force)
    except build.BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    print(node_path)
    return 0


def _up(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster.build import BuildError
    from akidb_embed.devcluster.cluster import ClusterError, DevCluster
    from akidb_embed.devcluster.node import NodeError

    cluster = DevCluster(args.state_dir)
    try:
        status = cluster.up(timeout_s=args.timeout)
    except (ClusterError, BuildError, NodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(status.describe())
    return 0


def _down(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster.cluster import DevCluster

    DevCluster(args.state_dir).down(purge=args.purge)
    return 0


def _status(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster.cluster import DevCluster

    status = DevCluster(args.state_dir).status()
    print(status.describe())
    return 0 if status.running and status.ready else 3


def _kubeconfig(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster.cluster import DevCluster

    cluster = DevCluster(args.state_dir)
    if not cluster.kubeconfig.exists():
        print(
            f"error: no cluster in {cluster.state_dir} (run `akidb-embed cluster up`)",
            file=sys.stderr,
        )
        return 1
    print(cluster.kubeconfig)
    return 0


def _images(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster import images

    try:
        built = images.ensure_images(progress=print)
        if args.ctr_address:
            images.import_images(built, args.ctr or "ctr", args.ctr_address)
    except (images.ImageBuildError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for row in images.describe(built):
        print(f"{row['role']:<10} {row['ref']}  {row['size']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cluster build|up|down|status|kubeconfig`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="cluster state folder (default $AKIDB_DEVCLUSTER_DIR or "
        "$XDG_STATE_HOME/akidb-embed/devcluster, i.e. ~/.local/state/akidb-embed/devcluster)",
    )
    parser = sub.add_parser(
        "cluster",
        help="local Kubernetes cluster: upstream control plane + one real node (needs root)",
        description="A real local Kubernetes cluster built from the Go module proxy: etcd, "
        "kube-apiserver, kube-controller-manager, kube-scheduler, and one Jetson-labelled node "
        "(kubelet, containerd, kube-proxy, kube-router's NetworkPolicy firewall) in its own "
        "network namespace. See docs/LOCAL-CLUSTER.md.",
    )
    cmds = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    p = cmds.add_parser(
        "build",
        help="build (or reuse) the control plane, kubectl, and the node's kubelet, kube-proxy, "
        "containerd, crictl and kube-router; prints the two folders",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(handler=_build)

    p = cmds.add_parser("up", parents=[common], help="start the cluster (reuses a running one)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for readiness")
    p.set_defaults(handler=_up)

    p = cmds.add_parser(
        "down",
        parents=[common],
        help="stop everything the cluster started and remove what its node made",
    )
    p.add_argument("--purge", action="store_true", help="also delete the state folder")
    p.set_defaults(handler=_down)

    p = cmds.add_parser("status", parents=[common], help="show components, pids and log files")
    p.set_defaults(handler=_status)

    p = cmds.add_parser("kubeconfig", parents=[common], help="print the admin kubeconfig's path")
    p.set_defaults(handler=_kubeconfig)

    p = cmds.add_parser(
        "images",
        help="build (cached by content) the operator, model-server and converter images",
        description="Build the repo's Dockerfiles with buildah on a debootstrap base, offline "
        "from a wheelhouse; optionally import them into a containerd. See docs/IMAGES.md.",
    )
    p.add_argument("--ctr-address", default=None, help="containerd socket to import into")
    p.add_argument("--ctr", default=None, help="ctr binary (default: ctr on PATH)")
    p.set_defaults(handler=_images)
