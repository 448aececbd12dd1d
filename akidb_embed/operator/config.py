"""Operator settings: command-line flags, each also read from an AKIDB_* variable."""

from __future__ import annotations

import argparse
import os
import posixpath
from dataclasses import dataclass, field

from akidb_embed import k8s
from akidb_embed.operator.placement import Limits
from akidb_embed.units import memory_bytes, parse_duration

DEFAULT_HF_CACHE = "/var/lib/akidb/hf-cache"
# Where spec.source.path may point: an admin-chosen folder on the node, nothing else.
DEFAULT_SOURCE_ROOT = "/var/lib/akidb/sources"
# Writable TensorRT engine caches, one folder per artifact key (the store is read-only).
DEFAULT_TRT_CACHE = "/var/lib/akidb/trt-cache"
DEFAULT_IMAGE = "ghcr.io/akidb/akidb-embed-server:0.1.0"
DEFAULT_CONVERTER_IMAGE = "ghcr.io/akidb/akidb-embed-converter:0.1.0"
DEFAULT_LEASE = "akidb-operator"


def parse_selector(text: str) -> dict[str, str]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'} (a node selector)."""
    selector: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid node selector {part!r} (expected key=value)")
        selector[key] = value
    return selector


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = k8s.DEFAULT_NAMESPACE
    capacity: int = 3
    memory_budget: int | None = 24 * 2**30
    min_residency: float = 30.0
    model_store: str = k8s.DEFAULT_MODEL_STORE
    hf_cache: str = DEFAULT_HF_CACHE
    source_root: str = DEFAULT_SOURCE_ROOT
    trt_cache: str = DEFAULT_TRT_CACHE
    node_selector: dict[str, str] = field(
        default_factory=lambda: {k8s.NODE_LABEL_ACCELERATOR: k8s.NODE_ACCELERATOR_VALUE}
    )
    server_image: str = DEFAULT_IMAGE
    converter_image: str = DEFAULT_CONVERTER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    hf_offline: bool = False
    tick: float = 5.0  # seconds between idle-timeout checks
    demand_ttl: float = 60.0  # a requestedAt not re-marked for this long has expired
    lease: str = DEFAULT_LEASE  # the leader-election Lease (coordination.k8s.io)
    lease_duration: float = 3.0
    lease_renew: float = 1.0
    standalone: bool = False  # no leader election (one process, development only)
    # Client-side timeouts of every API call (connect, read) and each watch's length.
    api_connect_timeout: float = 5.0
    api_read_timeout: float = 15.0
    watch_timeout: float = 60.0
    # Spec handlers writing at once. kopf runs one per model, all at once at start-up:
    # 1000 models queued 1000 writes on the client's pool, and the waits ran into the
    # connect timeout. Placement decisions are not limited by this.
    spec_concurrency: int = 8
    liveness: str = "http://0.0.0.0:8081/healthz"
    convert_timeout: int = 7200
    convert_memory: str = "1Gi"
    # Extra environment for model-server and conversion pods (e.g. a proxy, a token).
    pod_env: dict[str, str] = field(default_factory=dict)

    @property
    def limits(self) -> Limits:
        return Limits(
            capacity=self.capacity,
            memory_budget=self.memory_budget,
            min_residency=self.min_residency,
            demand_ttl=self.demand_ttl,
        )


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AKIDB_{name}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = OperatorConfig()
    add = parser.add_argument
    add("--namespace", default=_env("NAMESPACE", d.namespace), help="namespace to manage")
    add(
        "--capacity",
        type=int,
        default=int(_env("CAPACITY", str(d.capacity))),
        help="most model-server pods on the node, Terminating ones included (default 3)",
    )
    add(
        "--memory-budget",
        default=_env("MEMORY_BUDGET", "24Gi"),
        help="memory for model pods on the node, a quantity; 'none' for no limit (24Gi)",
    )
    add(
        "--min-residency",
        default=_env("MIN_RESIDENCY", "30s"),
        help="a model used this recently is not evicted for another (default 30s)",
    )
    add("--model-store", default=_env("MODEL_STORE", d.model_store), help="artifact store")
    add("--hf-cache", default=_env("HF_CACHE", d.hf_cache), help="Hugging Face cache on node")
    add(
        "--source-root",
        default=_env("SOURCE_ROOT", d.source_root),
        help="node folder that spec.source.path must lie in (mounted read-only)",
    )
    add(
        "--trt-cache",
        default=_env("TRT_CACHE", d.trt_cache),
        help="node folder for TensorRT engine caches, one per artifact (writable)",
    )
    add(
        "--node-selector",
        default=_env("NODE_SELECTOR", f"{k8s.NODE_LABEL_ACCELERATOR}={k8s.NODE_ACCELERATOR_VALUE}"),
        help="node selector of model and conversion pods (key=value[,key=value])",
    )
    add("--server-image", default=_env("SERVER_IMAGE", d.server_image))
    add(
        "--converter-image",
        default=_env("CONVERTER_IMAGE", d.converter_image),
        help="image of conversion Jobs (torch, transformers, onnx: the convert extra)",
    )
    add(
        "--image-pull-policy",
        choices=("Always", "IfNotPresent", "Never"),
        default=_env("IMAGE_PULL_POLICY", d.image_pull_policy),
        help="imagePullPolicy of model and conversion pods (Never for node-local images)",
    )
    add(
        "--hf-offline",
        action=argparse.BooleanOptionalAction,
        default=_env("HF_OFFLINE", "0").lower() in ("1", "true", "yes"),
        help="conversion jobs use only the node's Hugging Face cache (HF_HUB_OFFLINE=1)",
    )
    add("--tick", default=_env("TICK", "5s"), help="idle-timeout check interval (5s)")
    add(
        "--demand-ttl",
        default=_env("DEMAND_TTL", "60s"),
        help="a demand (status.requestedAt) not re-marked for this long expires (60s)",
    )
    add("--lease", default=_env("LEASE", d.lease), help="leader-election Lease name")
    add("--lease-duration", default=_env("LEASE_DURATION", "3s"), help="Lease duration (3s)")
    add("--lease-renew", default=_env("LEASE_RENEW", "1s"), help="Lease renewal period (1s)")
    add(
        "--standalone",
        action=argparse.BooleanOptionalAction,
        default=_env("STANDALONE", "0").lower() in ("1", "true", "yes"),
        help="run without leader election (one process; development only)",
    )
    add(
        "--api-timeout",
        default=_env("API_TIMEOUT", "5s,15s"),
        help="connect,read timeouts of every Kubernetes API call (5s,15s)",
    )
    add(
        "--watch-timeout",
        default=_env("WATCH_TIMEOUT", "60s"),
        help="each watch ends after this long and is restarted (60s)",
    )
    add(
        "--spec-concurrency",
        type=int,
        default=int(_env("SPEC_CONCURRENCY", str(d.spec_concurrency))),
        help="models whose Deployment / conversion Job are written at once (8); "
        "placement decisions are not limited by it",
    )
    add("--liveness", default=_env("LIVENESS", d.liveness), help="kopf liveness endpoint")
    add(
        "--pod-env",
        action="append",
        default=[e for e in _env("POD_ENV", "").split(",") if e],
        help="NAME=VALUE added to model-server and conversion pods (repeatable)",
    )


def _clean_root(path: str) -> str:
    root = posixpath.normpath(path)
    if not posixpath.isabs(root) or root == "/":
        raise ValueError(f"--source-root must be an absolute folder other than /, not {path!r}")
    return root


def from_args(args: argparse.Namespace) -> OperatorConfig:
    budget_text = str(args.memory_budget).strip().lower()
    return OperatorConfig(
        namespace=args.namespace,
        capacity=args.capacity,
        memory_budget=None
        if budget_text in ("", "none", "0")
        else memory_bytes(args.memory_budget),
        min_residency=parse_duration(args.min_residency),
        model_store=args.model_store.rstrip("/") or "/",
        hf_cache=args.hf_cache,
        source_root=_clean_root(args.source_root),
        trt_cache=args.trt_cache.rstrip("/") or "/",
        node_selector=parse_selector(args.node_selector),
        server_image=args.server_image,
        converter_image=args.converter_image,
        image_pull_policy=args.image_pull_policy,
        hf_offline=args.hf_offline,
        tick=parse_duration(args.tick),
        demand_ttl=parse_duration(args.demand_ttl),
        lease=args.lease,
        lease_duration=parse_duration(args.lease_duration),
        lease_renew=parse_duration(args.lease_renew),
        standalone=args.standalone,
        api_connect_timeout=parse_duration(args.api_timeout.split(",")[0]),
        api_read_timeout=parse_duration(args.api_timeout.split(",")[-1]),
        watch_timeout=parse_duration(args.watch_timeout),
        spec_concurrency=max(1, args.spec_concurrency),
        liveness=args.liveness,
        pod_env=dict(item.split("=", 1) for item in args.pod_env if "=" in item),
    )
