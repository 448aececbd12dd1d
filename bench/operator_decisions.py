"""How fast the operator decides, and how that grows with the number of EmbeddingModels.

Two measurements:

1. The pure placement policy (`placement.decide`) with 10, 100 and 1000 models, in
   process: a quiet node (nothing to do), a free-slot activation, and a full node where
   a demand needs an LRU eviction.
2. Against the real local API server (`--cluster`): N plain EmbeddingModels (already
   converted, so no conversion Jobs; their pods select a node that does not exist, so
   they stay Pending and only the decision is timed), the real operator as a process,
   and the time from a demand (status.requestedAt, as the gateway writes it) to the
   activation's Deployment update (spec.replicas 0 -> 1, seen through a watch).

    python -m bench.operator_decisions              # policy only
    python -m bench.operator_decisions --cluster    # + the real API server (minutes)

Writes bench/results/operator_decisions.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from akidb_embed import k8s
from akidb_embed.operator.placement import (
    READY,
    STANDBY,
    Activate,
    Evict,
    Limits,
    ModelView,
    PodView,
    decide,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "operator_decisions.json"
SIZES = (10, 100, 1000)
MI = 2**20


def _models(n: int, active: int, now: float, rng: random.Random) -> list[ModelView]:
    models = []
    for i in range(n):
        ready = i < active
        models.append(
            ModelView(
                f"model-{i:04d}",
                phase=READY if ready else STANDBY,
                memory=512 * MI,
                idle_timeout=1800.0,
                last_request=now - rng.uniform(60, 600) if ready else None,
                active_since=now - 900 if ready else None,
                requested_at=now - 950 if ready else None,
            )
        )
    return models


def _time_decide(
    models: list[ModelView], pods: list[PodView], limits: Limits, now: float
) -> tuple[float, list[Any]]:
    repeats = max(5, 20_000 // len(models))
    samples = []
    actions: list[Any] = []
    for _ in range(repeats):
        start = time.perf_counter()
        actions = decide(models, pods, limits, now)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, actions


def policy_benchmark() -> list[dict[str, Any]]:
    rng = random.Random(0)
    now = 1_000_000.0
    limits = Limits(capacity=3, memory_budget=24 * 2**30, min_residency=30)
    rows = []
    for n in SIZES:
        models = _models(n, active=3, now=now, rng=rng)
        pods = [PodView(f"{m.name}-pod", m.name, ready=True) for m in models[:3]]
        quiet_ms, quiet = _time_decide(models, pods, limits, now)
        assert quiet == [], quiet

        demanded = list(models)
        demanded[-1] = ModelView(
            models[-1].name, phase=STANDBY, memory=512 * MI, requested_at=now - 0.5
        )
        full_ms, full = _time_decide(demanded, pods, limits, now)
        assert any(isinstance(a, Evict) for a in full), full

        roomy = Limits(capacity=4, memory_budget=None, min_residency=30)
        free_ms, free = _time_decide(demanded, pods, roomy, now)
        assert any(isinstance(a, Activate) for a in free), free
        rows.append(
            {
                "models": n,
                "quiet_ms": round(quiet_ms, 4),
                "activate_ms": round(free_ms, 4),
                "evict_for_demand_ms": round(full_ms, 4),
            }
        )
    return rows


# -- against the real API server ------------------------------------------------------------


def _em(name: str) -> dict[str, Any]:
    return {
        "apiVersion": k8s.API_VERSION,
        "kind": k8s.KIND,
        "metadata": {"name": name},
        "spec": {
            "source": {"path": f"/bench/{name}"},
            "dimension": 384,
            "executionProviders": ["CPU"],
            "resources": {"memory": "64Mi"},
        },
    }


def _operator(src: Path, ns: str, n: int, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """The operator from source tree `src` (this tree, or a baseline checkout)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "akidb_embed",
            "operator",
            "--namespace",
            ns,
            "--standalone",
            "--liveness",
            "",
            "--capacity",
            str(n),
            "--memory-budget",
            "none",
            "--min-residency",
            "0s",
            "--node-selector",
            "akidb.io/accelerator=bench-none",
        ],
        env={**env, "PYTHONPATH": str(src)},
        cwd=str(src),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _demand(custom: Any, ns: str, name: str) -> None:
    custom.patch_namespaced_custom_object_status(
        k8s.GROUP, k8s.VERSION, ns, k8s.PLURAL, name,
        {"status": {"requestedAt": k8s.now_rfc3339()}},
    )  # fmt: skip


def _wait_scaled(apps: Any, ns: str, name: str, timeout: float = 120) -> None:
    """Until model `name`'s Deployment has replicas >= 1 (polled every 10 ms)."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (apps.read_namespaced_deployment(f"model-{name}", ns).spec.replicas or 0) >= 1:
                return
        except ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.01)
    raise TimeoutError(f"model-{name} was not scaled up within {timeout}s")


def _logged_pass_s(path: Path) -> float | None:
    """The operator's own report of its start-up pass ("start-up pass: N models in X s")."""
    for line in path.read_text(errors="replace").splitlines():
        if "start-up pass:" in line:
            return float(line.rsplit(" in ", 1)[1].split("s")[0])
    return None


def cluster_benchmark(
    sizes: tuple[int, ...], demands: int, variants: dict[str, Path]
) -> list[dict[str, Any]]:
    from kubernetes import client, config

    from akidb_embed.devcluster import DevCluster, kubectl_path

    reuse = os.environ.get("AKIDB_BENCH_CLUSTER_DIR")
    state = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="akidb-bench-"))
    dev = DevCluster(state)
    dev.up()
    kubectl = [str(kubectl_path(dev.config().kube_version)), f"--kubeconfig={dev.kubeconfig}"]
    api_client = config.new_client_from_config(str(dev.kubeconfig))
    custom = client.CustomObjectsApi(api_client)
    apps = client.AppsV1Api(api_client)
    subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds")], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "KUBECONFIG": str(dev.kubeconfig)}
    rows = []
    try:
        for n in sizes:
            for variant, src in variants.items():
                rows.append(_one_size(n, demands, variant, src, state, kubectl, custom, apps, env))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if not reuse:
            dev.down()
    return rows


def _one_size(
    n: int,
    demands: int,
    variant: str,
    src: Path,
    state: Path,
    kubectl: list[str],
    custom: Any,
    apps: Any,
    env: dict[str, str],
) -> dict[str, Any]:
    from kubernetes import watch

    from akidb_embed.operator.objects import model_key

    ns = f"bench-{variant}-{n}-{int(time.time())}"
    subprocess.run([*kubectl, "create", "namespace", ns], check=True, capture_output=True)
    names = [f"m{i:04d}" for i in range(n)]
    docs = "\n---\n".join(json.dumps(_em(name)) for name in names)
    subprocess.run(
        [*kubectl, "apply", "-n", ns, "-f", "-"],
        input=docs,
        text=True,
        check=True,
        capture_output=True,
    )
    stamp = k8s.now_rfc3339()
    for name in names:
        body = _em(name)
        custom.patch_namespaced_custom_object_status(
            k8s.GROUP, k8s.VERSION, ns, k8s.PLURAL, name,
            {
                "status": {
                    "phase": STANDBY,
                    "artifact": {"key": model_key(body["spec"])},
                    "conditions": [
                        {
                            "type": "Converted", "status": "True", "reason": "Converted",
                            "lastTransitionTime": stamp,
                        }
                    ],
                }
            },
        )  # fmt: skip
    rng = random.Random(n)
    order = rng.sample(names, len(names))
    first_log = state / f"operator-{ns}-1.log"
    row: dict[str, Any] = {"variant": variant, "models": n}
    with open(first_log, "w") as log:
        started = time.monotonic()
        op = _operator(src, ns, n, env, log)
        try:
            # A demand posted as the operator starts: is it queued behind the first pass?
            time.sleep(0.3)
            _demand(custom, ns, order[0])
            _wait_scaled(apps, ns, order[0])
            row["first_start_demand_s"] = round(time.monotonic() - started, 2)
            while len(apps.list_namespaced_deployment(ns).items) < n:  # every one created
                if op.poll() is not None:
                    raise RuntimeError(f"operator exited; see {first_log}")
                time.sleep(0.2)
            row["first_pass_s"] = round(time.monotonic() - started, 2)
            latencies = []
            for name in order[1 : 1 + demands]:
                w = watch.Watch()
                # No resourceVersion: after 1000 Deployment writes the one just read can
                # already be too old for the watch cache (410). The watch starts with the
                # current object, so a scale that beats it is still seen.
                t0 = time.perf_counter()
                _demand(custom, ns, name)
                for event in w.stream(
                    apps.list_namespaced_deployment,
                    ns,
                    field_selector=f"metadata.name=model-{name}",
                    timeout_seconds=30,
                ):
                    if (event["object"].spec.replicas or 0) >= 1:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        w.stop()
                time.sleep(0.2)
            row["demand_to_deployment_p50_ms"] = round(statistics.median(latencies), 1)
            row["demand_to_deployment_max_ms"] = round(max(latencies), 1)
        finally:
            op.terminate()
            op.wait(timeout=30)
    # A restart with everything in place (the common start-up): how soon is a demand
    # served, and how long is the pass over all models?
    restart_log = state / f"operator-{ns}-2.log"
    with open(restart_log, "w") as log:
        started = time.monotonic()
        op = _operator(src, ns, n, env, log)
        try:
            time.sleep(0.3)
            _demand(custom, ns, order[-1])
            _wait_scaled(apps, ns, order[-1])
            row["restart_demand_s"] = round(time.monotonic() - started, 2)
            # kopf's resume pass over the spec handlers (writes nothing when everything
            # is in place) goes on in the background; wait for its report.
            deadline = time.monotonic() + 180
            while _logged_pass_s(restart_log) is None and time.monotonic() < deadline:
                if op.poll() is not None:
                    raise RuntimeError(f"operator exited; see {restart_log}")
                time.sleep(0.5)
            row["restart_pass_s"] = _logged_pass_s(restart_log)
        finally:
            op.terminate()
            op.wait(timeout=30)
    subprocess.run([*kubectl, "delete", "namespace", ns, "--wait=false"], capture_output=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", action="store_true", help="also time the real operator")
    parser.add_argument(
        "--cluster-sizes", default="10,100,1000", help="EmbeddingModel counts for --cluster"
    )
    parser.add_argument("--demands", type=int, default=10, help="demands timed per size")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the operator of this source tree (e.g. a checkout of main), same run",
    )
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "policy": policy_benchmark(),
    }
    print("placement.decide, median ms (capacity 3; 3 models ready)")
    print(f"{'models':>7} {'quiet':>9} {'activate':>9} {'evict':>9}")
    for row in results["policy"]:
        print(
            f"{row['models']:>7} {row['quiet_ms']:>9.4f} {row['activate_ms']:>9.4f} "
            f"{row['evict_for_demand_ms']:>9.4f}"
        )
    if args.cluster:
        sizes = tuple(int(s) for s in args.cluster_sizes.split(","))
        variants = {"this": ROOT}
        if args.baseline:
            variants = {"baseline": args.baseline.resolve(), **variants}
        results["cluster"] = cluster_benchmark(sizes, args.demands, variants)
        print("\nreal API server (times from the operator process's start, s; demand ms)")
        print(
            f"{'variant':>9} {'models':>7} {'1st demand':>10} {'1st pass':>9} {'p50 ms':>8} "
            f"{'max ms':>8} {'restart demand':>14} {'restart pass':>12}"
        )
        for row in results["cluster"]:
            restart_pass = row.get("restart_pass_s")
            print(
                f"{row['variant']:>9} {row['models']:>7} {row['first_start_demand_s']:>10.2f} "
                f"{row['first_pass_s']:>9.2f} {row['demand_to_deployment_p50_ms']:>8.1f} "
                f"{row['demand_to_deployment_max_ms']:>8.1f} {row['restart_demand_s']:>14.2f} "
                f"{'-' if restart_pass is None else f'{restart_pass:.2f}':>12}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
