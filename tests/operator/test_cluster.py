"""The operator on the real local cluster, running as a pod under its own ServiceAccount.

The overlay manifests/overlays/local is rendered with kustomize and applied as is,
except that the node folders (model store, Hugging Face cache, TensorRT caches, source
root) are this session's, laid out as a real node has them: owned by UID 10001, tiny
sources under the source root. Models are real: all-MiniLM-L6-v2 is converted by a Job
from a seeded, offline HF cache; the LRU tests use tiny BERT checkpoints by path.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from akidb_embed import k8s
from akidb_embed.devcluster import images
from tests.operator.local_stack import chown_tree, copy_source, render_overlay

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NS = k8s.DEFAULT_NAMESPACE
CAPACITY = 3
MIN_RESIDENCY = 5.0  # the local overlay's AKIDB_MIN_RESIDENCY
MODEL_SERVER = f"{k8s.LABEL_NAME}={k8s.MODEL_SERVER_APP}"


@dataclass
class Deployed:
    cluster: Any
    store: Path
    tiny: Path
    names: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.cluster.kubectl(*args, **kw)

    def em(self, name: str) -> dict[str, Any]:
        return self.cluster.get_json("em", name, "-n", NS)

    def phase(self, name: str) -> str:
        return (self.em(name).get("status") or {}).get("phase", "")

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        return self.cluster.wait_for(
            lambda: self.em(name) if self.phase(name) == phase else None,
            timeout,
            f"{name} to be {phase}",
        )

    def demand(self, name: str) -> None:
        """What the gateway does when a request arrives for a model that is not ready."""
        patch = {"status": {"requestedAt": k8s.now_rfc3339()}}
        self.kubectl(
            "patch", "em", name, "-n", NS, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def served(self, name: str) -> None:
        """The gateway's recency flush after serving a request."""
        patch = {"status": {"lastRequestTime": k8s.now_rfc3339()}}
        self.kubectl(
            "patch", "em", name, "-n", NS, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def create_tiny(self, name: str, **spec: Any) -> None:
        body = {
            "apiVersion": k8s.API_VERSION,
            "kind": k8s.KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "source": {"path": str(self.tiny)},
                "family": "bge",
                "dimension": 32,
                "maxLength": 128,
                "pooling": "cls",
                "executionProviders": ["CPU"],
                "resources": {"memory": "256Mi"},
                **spec,
            },
        }
        self.cluster.apply(json.dumps(body))
        self.names.append(name)

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.cluster.get_json(
            "events", "-n", NS, "--field-selector", f"involvedObject.name={name}"
        )["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def model_pods(self) -> list[dict[str, Any]]:
        return self.cluster.get_json("pods", "-n", NS, "-l", MODEL_SERVER)["items"]

    def delete_models(self, *names: str) -> None:
        for name in names:
            self.kubectl("delete", "em", name, "-n", NS, "--wait=true", "--timeout=60s")
        self.cluster.wait_for(
            lambda: (
                not any(
                    p["metadata"]["labels"].get(k8s.LABEL_MODEL) in names for p in self.model_pods()
                )
            ),
            60,
            f"pods of {names} to be gone",
        )


@pytest.fixture(scope="module")
def deployed(
    cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    minilm_checkpoint: Path,
    tiny_bert_checkpoint: Path,
) -> Iterator[Deployed]:
    from akidb_embed.conversion.source import seed_hf_cache

    kubectl = cluster.kubectl
    if kubectl("get", "namespace", NS, check=False).returncode == 0:  # a reused cluster
        kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s", timeout=150)
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    # Node folders as a real node has them: written by UID 10001, sources under the root.
    base = tmp_path_factory.mktemp("node-folders")
    folders = {k: base / k for k in ("store", "hf", "trt", "sources")}
    images.prepare_node_folders(folders["store"], folders["hf"], folders["trt"])
    seed_hf_cache(
        "sentence-transformers/all-MiniLM-L6-v2", minilm_checkpoint, folders["hf"] / "hub"
    )
    chown_tree(folders["hf"])
    tiny = folders["sources"] / "tiny"
    copy_source(tiny_bert_checkpoint, tiny)
    cluster.apply(render_overlay(folders, kubectl))
    cluster.wait_for(
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for p in cluster.get_json(
                "pods", "-n", NS, "-l", "app.kubernetes.io/name=akidb-operator"
            )["items"]
            for c in (p.get("status") or {}).get("conditions") or []
        ),
        90,
        "the operator pod to be ready",
    )
    handle = Deployed(cluster, folders["store"], tiny)
    # Convert the tiny checkpoint once: the other tiny models share its artifact key, so
    # their Jobs find it and exit at once ("already converted").
    handle.create_tiny("tiny-seed")
    handle.wait_phase("tiny-seed", "Standby", timeout=240)
    yield handle
    kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_operator_runs_under_its_own_least_privilege_service_account(deployed: Deployed) -> None:
    pods = deployed.cluster.get_json(
        "pods", "-n", NS, "-l", "app.kubernetes.io/name=akidb-operator"
    )["items"]
    assert {p["spec"]["serviceAccountName"] for p in pods} == {"akidb-operator"}
    sa = f"system:serviceaccount:{NS}:akidb-operator"

    def can(verb: str, resource: str) -> bool:
        proc = deployed.kubectl("auth", "can-i", verb, resource, "-n", NS, "--as", sa, check=False)
        return proc.stdout.strip() == "yes"

    assert can("patch", "embeddingmodels.akidb.io/status")
    assert can("create", "jobs.batch") and can("patch", "deployments.apps")
    assert not can("delete", "deployments.apps")
    assert not can("create", "pods") and not can("get", "secrets")
    assert can("watch", "pods")  # namespaced read is allowed...
    assert can("delete", "pods")  # finished (Failed/Succeeded) model pods
    assert can("update", "leases.coordination.k8s.io")  # the leader Lease
    proc = deployed.kubectl("auth", "can-i", "list", "pods", "-A", "--as", sa, check=False)
    assert proc.stdout.strip() == "no"  # ...but no pods cluster-wide
    # Cluster-wide only: read nodes and patch their status (the extended resources).
    for verb, resource, allowed in [
        ("patch", "nodes --subresource=status", "yes"),
        ("list", "nodes", "yes"),
        ("patch", "nodes", "no"),
        ("delete", "nodes", "no"),
    ]:
        args = ["auth", "can-i", verb, *resource.split(), "--as", sa]
        proc = deployed.kubectl(*args, check=False)
        assert proc.stdout.strip() == allowed, (verb, resource, proc.stdout)


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"pooling": "max"}, "spec.pooling", "supported values"),
        ({"precision": "fp8"}, "spec.precision", "supported values"),
        ({"executionProviders": ["CPU", "ROCm"]}, "spec.executionProviders[1]", "supported"),
        ({"matryoshkaDimensions": [64, 256]}, "spec.dimension", "matryoshkaDimensions"),
        ({"resources": {"memory": "0"}}, "spec.resources.memory", "positive quantity"),
        ({"resources": {"memory": "-1Gi"}}, "spec.resources.memory", "positive quantity"),
        ({"source": {"repo": "just-a-name"}}, "spec.source.repo", "org/name"),
        ({"source": {"path": "relative/dir"}}, "spec.source.path", "absolute path"),
        ({"source": {"repo": "a/b", "path": "/x"}}, "spec.source", "exactly one of"),
        ({"maxBatchSize": 0}, "spec.maxBatchSize", "greater than or equal to 1"),
        ({"idleTimeout": "ten minutes"}, "spec.idleTimeout", "duration"),
    ],
)
def test_invalid_resources_are_refused_naming_the_field(
    deployed: Deployed, spec: dict[str, Any], field: str, message: str
) -> None:
    body = {
        "apiVersion": k8s.API_VERSION,
        "kind": k8s.KIND,
        "metadata": {"name": "invalid", "namespace": NS},
        "spec": {
            "source": {"repo": "org/model"},
            "dimension": 128,
            "resources": {"memory": "512Mi"},
            **spec,
        },
    }
    proc = deployed.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    if proc.returncode == 0:
        deployed.kubectl("delete", "em", "invalid", "-n", NS, "--wait=false")
    assert proc.returncode != 0
    assert field in proc.stderr and message in proc.stderr, proc.stderr


def test_printer_columns(deployed: Deployed) -> None:
    out = deployed.kubectl("get", "em", "-n", NS).stdout.splitlines()
    assert out[0].split() == ["NAME", "DIMENSION", "PHASE", "LAST-REQUEST", "PINNED", "AGE"]
    assert any(line.startswith("all-minilm-l6-v2 ") and " 384 " in line for line in out)


def test_minilm_is_converted_by_a_job_and_reaches_standby(deployed: Deployed) -> None:
    em = deployed.wait_phase("all-minilm-l6-v2", "Standby", timeout=300)
    status = em["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Converted"]["status"] == "True"
    artifact = Path(status["artifact"]["path"])
    assert artifact.parent == deployed.store
    assert (artifact / "manifest.json").is_file() and (artifact / "model.onnx").is_file()
    assert status["artifact"]["precision"] == "fp32"
    jobs = deployed.cluster.get_json("jobs", "-n", NS, "-l", f"{k8s.LABEL_MODEL}=all-minilm-l6-v2")
    (job,) = jobs["items"]
    assert job["status"].get("succeeded") == 1
    assert job["metadata"]["ownerReferences"][0]["name"] == "all-minilm-l6-v2"
    reasons = [e["reason"] for e in deployed.events("all-minilm-l6-v2")]
    assert "ConversionStarted" in reasons and "Converted" in reasons
    dep = deployed.cluster.get_json("deployment", "model-all-minilm-l6-v2", "-n", NS)
    assert dep["spec"]["replicas"] == 0  # Standby


def test_a_failed_conversion_reports_the_reason(deployed: Deployed) -> None:
    # Inside the source root (outside it is refused before any Job: test_real_node.py),
    # but not a checkpoint: the converter says why and the Job fails.
    broken = deployed.tiny.parent / "not-a-checkpoint"
    broken.mkdir(exist_ok=True)
    (broken / "README").write_text("no config.json here\n")
    deployed.create_tiny("broken", source={"path": str(broken)})
    em = deployed.wait_phase("broken", "Failed", timeout=120)
    assert em["status"]["reason"] == "ConversionFailed"
    assert "no config.json" in em["status"]["message"], em["status"]["message"]
    assert "ConversionFailed" in [e["reason"] for e in deployed.events("broken")]
    deployed.delete_models("broken")


def _ready_model_names(deployed: Deployed) -> set[str]:
    return {
        p["metadata"]["labels"][k8s.LABEL_MODEL]
        for p in deployed.model_pods()
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    }


def test_lru_eviction_in_order_with_events_and_a_pinned_survivor(deployed: Deployed) -> None:
    names = ["lru-a", "lru-b", "lru-c", "lru-d", "lru-e"]
    deployed.create_tiny("lru-a", pinned=True)
    for name in names[1:]:
        deployed.create_tiny(name)
    for name in names:
        deployed.wait_phase(name, "Standby", timeout=180)

    # Fill the node: a (pinned), b, c, in that order.
    for name in names[:3]:
        deployed.demand(name)
        deployed.wait_phase(name, "Ready", timeout=60)
    time.sleep(MIN_RESIDENCY + 1)
    # Recent traffic on c; a is pinned: b is the least recently used evictable model.
    deployed.served("lru-c")

    deployed.demand("lru-d")
    deployed.wait_phase("lru-d", "Ready", timeout=60)
    assert deployed.phase("lru-b") == "Standby"
    b = deployed.em("lru-b")["status"]
    assert b["evictions"] == 1 and b["lastEvictedAt"]
    evicted = [e for e in deployed.events("lru-b") if e["reason"] == "Evicted"]
    assert evicted and "least recently used of 1)" in evicted[-1]["message"]  # c is recent
    assert evicted[-1]["message"].startswith("Evicted lru-b (idle ")
    assert evicted[-1]["message"].endswith("to activate lru-d")
    assert _ready_model_names(deployed) == {"lru-a", "lru-c", "lru-d"}

    # Next in LRU order is c (d is within its minimum residency, a is pinned).
    time.sleep(MIN_RESIDENCY + 1)
    deployed.served("lru-d")
    deployed.demand("lru-e")
    deployed.wait_phase("lru-e", "Ready", timeout=60)
    assert deployed.phase("lru-c") == "Standby"
    assert _ready_model_names(deployed) == {"lru-a", "lru-d", "lru-e"}
    assert deployed.phase("lru-a") == "Ready"
    assert not [e for e in deployed.events("lru-a") if e["reason"] in ("Evicted", "IdleTimeout")]

    # Everything else within residency and a pinned: the next demand waits, visibly.
    deployed.served("lru-d")
    deployed.served("lru-e")
    deployed.demand("lru-b")
    cond = deployed.cluster.wait_for(
        lambda: next(
            (
                c
                for c in deployed.em("lru-b")["status"].get("conditions", [])
                if c["type"] == "CapacityExhausted" and c["status"] == "True"
            ),
            None,
        ),
        20,
        "lru-b to report CapacityExhausted",
    )
    assert cond["reason"] in ("CapacityExhausted", "WaitingForEviction")
    # ... and is activated as soon as residency has passed and a slot frees.
    deployed.wait_phase("lru-b", "Ready", timeout=60)
    assert len(deployed.model_pods()) <= CAPACITY
    deployed.delete_models(*names)


def _holds_a_slot(pod: Any) -> bool:
    """A pod the scheduler counts against the node: bound and not finished (Terminating
    included while its containers may run; a Pending pod holds nothing yet)."""
    return bool(pod.spec.node_name) and (pod.status.phase not in ("Succeeded", "Failed"))


class PodCounter:
    """Watches model-server pods in the namespace and records the most that held a slot
    of the node at once."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config, watch

        self.api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.watch = watch.Watch()
        self.alive: set[str] = set()
        self.max_seen = 0
        self.history: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        listing = self.api.list_namespaced_pod(NS, label_selector=MODEL_SERVER)
        self.alive = {p.metadata.name for p in listing.items if _holds_a_slot(p)}
        self.max_seen = len(self.alive)
        self.version = listing.metadata.resource_version
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # a dropped stream: resume from the last version
                if self.stop.is_set():
                    return
                if getattr(exc, "status", None) == 410:  # history lost: the proof has a gap
                    self.errors.append(repr(exc))
                    return
                time.sleep(0.2)

    def _follow(self) -> None:
        for event in self.watch.stream(
            self.api.list_namespaced_pod,
            NS,
            label_selector=MODEL_SERVER,
            resource_version=self.version,
            timeout_seconds=5,
        ):
            pod = event["object"]
            self.version = pod.metadata.resource_version
            if event["type"] != "DELETED" and _holds_a_slot(pod):
                self.alive.add(pod.metadata.name)
            else:
                self.alive.discard(pod.metadata.name)
            self.max_seen = max(self.max_seen, len(self.alive))
            self.history.append((time.time(), len(self.alive)))
            if self.stop.is_set():
                return

    def close(self) -> None:
        self.stop.set()
        self.watch.stop()
        self.thread.join(timeout=10)


def test_capacity_holds_across_random_demands_two_replicas_and_restarts(deployed: Deployed) -> None:
    names = [f"rnd-{i}" for i in range(5)]
    for name in names:
        deployed.create_tiny(name)
    for name in names:
        deployed.wait_phase(name, "Standby", timeout=180)
    counter = PodCounter(deployed.cluster.kubeconfig)
    rng = random.Random(4)
    activated: set[str] = set()
    try:
        for step in range(14):
            name = rng.choice(names)
            if deployed.phase(name) != "Ready":
                deployed.demand(name)
            else:
                deployed.served(name)
            if step == 3:  # three replicas: only the holder of the Lease acts
                deployed.kubectl("scale", "deployment", "akidb-operator", "-n", NS, "--replicas=3")
            if step == 6:
                deployed.cluster.wait_for(
                    lambda: len(_running_operators(deployed)) == 3, 60, "three operator replicas"
                )
                holder = _lease_holder(deployed)
                assert holder in _running_operators(deployed)
            if step == 8:  # kill the leader (forced: no release); the other one takes over
                deployed.kubectl(
                    "delete", "pod", "-n", NS, _lease_holder(deployed), "--grace-period=0",
                    "--force", "--wait=false",
                )  # fmt: skip
            if step == 11:
                deployed.kubectl("scale", "deployment", "akidb-operator", "-n", NS, "--replicas=2")
            time.sleep(rng.uniform(0.2, 4.0))
            activated |= _ready_model_names(deployed)
        # Every demand is eventually served (all unpinned, residency 5 s).
        for name in names:
            if deployed.em(name)["status"].get("requestedAt"):
                deployed.cluster.wait_for(
                    lambda n=name: (
                        deployed.phase(n) in ("Ready", "Activating")
                        or n in activated
                        or _demand_settled(deployed.em(n))
                    ),
                    90,
                    f"{name}'s demand to be served",
                )
    finally:
        counter.close()
    assert not counter.errors, counter.errors
    assert counter.history, "the watcher saw no pod changes"
    assert counter.max_seen <= CAPACITY, counter.history
    assert len(activated) >= 3
    evictions = sum(deployed.em(n)["status"].get("evictions", 0) for n in names)
    assert evictions >= 1, "the sequence never filled the node"
    # After the restarts the remaining operator kept deciding (the demands were served).
    operators = _operator_pods(deployed)
    assert operators and all(p["status"].get("phase") == "Running" for p in operators)
    deployed.delete_models(*names)


def _operator_pods(deployed: Deployed) -> list[dict[str, Any]]:
    return deployed.cluster.get_json(
        "pods", "-n", NS, "-l", "app.kubernetes.io/name=akidb-operator"
    )["items"]


def _running_operators(deployed: Deployed) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in _operator_pods(deployed)
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    }


def _lease_holder(deployed: Deployed) -> str:
    lease = deployed.cluster.get_json("lease", "akidb-operator", "-n", NS)
    return str(lease["spec"].get("holderIdentity") or "")


def _demand_settled(em: dict[str, Any]) -> bool:
    status = em.get("status") or {}
    requested = k8s.parse_time(status.get("requestedAt")) or 0
    active = k8s.parse_time(status.get("activeSince")) or 0
    return active >= requested


def test_a_ready_model_reports_measured_performance_and_deletion_cleans_up(
    deployed: Deployed,
) -> None:
    deployed.create_tiny("short-lived")
    deployed.wait_phase("short-lived", "Standby", timeout=180)
    deployed.demand("short-lived")
    deployed.wait_phase("short-lived", "Ready", timeout=60)
    # The operator reads the pod's self-measurement (GET <podIP>:8080/info) into the
    # status; `kubectl get em -o json` (what `em()` runs) shows it.
    perf = deployed.cluster.wait_for(
        lambda: (deployed.em("short-lived").get("status") or {}).get("performance"),
        30,
        "status.performance of short-lived",
    )
    assert perf["p50Ms"] > 0 and perf["p95Ms"] >= perf["p50Ms"], perf
    assert perf["textsPerSecond"] > 0 and perf["device"] == "CPUExecutionProvider", perf
    measured = k8s.parse_time(perf["measuredAt"])
    assert measured is not None and abs(measured - time.time()) < 120, perf
    deployed.kubectl("delete", "em", "short-lived", "-n", NS, "--wait=true", "--timeout=60s")
    deployed.cluster.wait_for(
        lambda: (
            deployed.kubectl(
                "get", "deployment", "model-short-lived", "-n", NS, check=False
            ).returncode
            != 0
            and not any(
                p["metadata"]["labels"].get(k8s.LABEL_MODEL) == "short-lived"
                for p in deployed.model_pods()
            )
        ),
        60,
        "the Deployment and pod of short-lived to be garbage-collected",
    )


def test_an_idle_model_goes_back_to_standby_on_its_own(deployed: Deployed) -> None:
    deployed.create_tiny("idler", idleTimeout="3s")
    deployed.wait_phase("idler", "Standby", timeout=180)
    deployed.demand("idler")
    deployed.wait_phase("idler", "Ready", timeout=60)
    # No further traffic and no event: the periodic tick notices the idle timeout.
    em = deployed.wait_phase("idler", "Standby", timeout=30)
    assert em["status"]["evictions"] == 1
    idle = deployed.cluster.wait_for(
        lambda: [e for e in deployed.events("idler") if e["reason"] == "IdleTimeout"],
        10,
        "the IdleTimeout Event",
    )
    assert "(idleTimeout 3s)" in idle[-1]["message"]
    deployed.delete_models("idler")


# Issue 9: capacity the scheduler enforces, level-triggered repairs, fast failover ----------


def _occupying(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model pods that hold the node's resources: bound, not finished (Terminating too)."""
    return [
        p
        for p in pods
        if p["spec"].get("nodeName")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def _fill(deployed: Deployed, names: list[str]) -> None:
    for name in names:
        deployed.create_tiny(name)
    for name in names:
        deployed.wait_phase(name, "Standby", timeout=180)
    for name in names:
        deployed.demand(name)
    for name in names:
        deployed.wait_phase(name, "Ready", timeout=90)


def test_the_node_advertises_model_slots_and_memory(deployed: Deployed) -> None:
    node = deployed.cluster.wait_for(
        lambda: (
            n
            if (n := deployed.cluster.get_json("node", deployed.cluster.node_name))["status"][
                "allocatable"
            ].get("akidb.io/model-slot")
            else None
        ),
        30,
        "akidb.io/model-slot on the node",
    )
    status = node["status"]
    assert status["capacity"]["akidb.io/model-slot"] == str(CAPACITY)
    assert status["allocatable"]["akidb.io/model-memory"] == str(8 * 1024)  # 8Gi overlay
    # Removed by someone (a node re-registering): the next pass advertises it again.
    patch = {"status": {"capacity": {"akidb.io/model-slot": None}}}
    deployed.kubectl(
        "patch", "node", deployed.cluster.node_name, "--subresource=status", "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    deployed.cluster.wait_for(
        lambda: (
            deployed.cluster.get_json("node", deployed.cluster.node_name)["status"]["capacity"].get(
                "akidb.io/model-slot"
            )
            == str(CAPACITY)
        ),
        20,
        "the slots to be advertised again",
    )


def test_a_replacement_pod_stays_pending_beside_a_terminating_one(deployed: Deployed) -> None:
    names = ["cap-a", "cap-b", "cap-c"]
    _fill(deployed, names)
    (victim,) = [
        p for p in deployed.model_pods() if p["metadata"]["labels"][k8s.LABEL_MODEL] == "cap-b"
    ]
    pod = victim["metadata"]["name"]
    for p in deployed.model_pods():
        requests = p["spec"]["containers"][0]["resources"]["requests"]
        assert requests["akidb.io/model-slot"] == "1" and requests["akidb.io/model-memory"]
    # A finalizer holds the deleted pod in Terminating for as long as the test wants; the
    # ReplicaSet creates its replacement at once, as it does for any graceful deletion.
    hold = {"metadata": {"finalizers": ["akidb.io/test-hold"]}}
    deployed.kubectl("patch", "pod", pod, "-n", NS, "--type=merge", "-p", json.dumps(hold))
    deployed.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")
    try:
        replacement = deployed.cluster.wait_for(
            lambda: next(
                (
                    p
                    for p in deployed.model_pods()
                    if p["metadata"]["labels"][k8s.LABEL_MODEL] == "cap-b"
                    and p["metadata"]["name"] != pod
                ),
                None,
            ),
            20,
            "the ReplicaSet's replacement pod",
        )
        name = replacement["metadata"]["name"]
        # While the deleted pod's server still runs, the replacement may not bind; once
        # the kubelet has stopped it (phase Failed/Succeeded: it holds nothing, finalizer
        # or not) the scheduler frees its slot and the replacement may.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            pods = deployed.model_pods()
            assert len(_occupying(pods)) <= CAPACITY, [p["metadata"]["name"] for p in pods]
            old = [p for p in pods if p["metadata"]["name"] == pod]
            new = [p for p in pods if p["metadata"]["name"] == name]
            if _occupying(old) and new:
                assert not new[0]["spec"].get("nodeName"), "bound beside a running pod"
            time.sleep(0.2)
        refused = deployed.cluster.wait_for(
            lambda: [
                e["message"]
                for e in deployed.cluster.get_json(
                    "events",
                    "-n",
                    NS,
                    "--field-selector",
                    f"involvedObject.name={name},reason=FailedScheduling",
                )["items"]
            ],
            20,
            "the scheduler's FailedScheduling event for the replacement",
        )
        assert any("akidb.io/model-slot" in m for m in refused), refused
    finally:
        release = {"metadata": {"finalizers": None}}
        deployed.kubectl(
            "patch", "pod", pod, "-n", NS, "--type=merge", "-p", json.dumps(release), check=False
        )
    # Once the old pod is gone, the replacement runs and the model serves again.
    deployed.wait_phase("cap-b", "Ready", timeout=60)
    assert len(_occupying(deployed.model_pods())) <= CAPACITY
    deployed.delete_models(*names)


def _live_pods_of(deployed: Deployed, model: str) -> list[dict[str, Any]]:
    """The model's pods, not counting ones an earlier test left Terminating."""
    return [
        p
        for p in deployed.model_pods()
        if p["metadata"]["labels"][k8s.LABEL_MODEL] == model
        and not p["metadata"].get("deletionTimestamp")
    ]


def test_a_failed_pod_is_deleted_and_its_model_reaches_standby(deployed: Deployed) -> None:
    deployed.create_tiny("fail-a", idleTimeout="8s")
    deployed.wait_phase("fail-a", "Standby", timeout=180)
    deployed.demand("fail-a")
    deployed.wait_phase("fail-a", "Ready", timeout=60)
    (pod,) = _live_pods_of(deployed, "fail-a")
    name = pod["metadata"]["name"]
    # What a node-pressure eviction leaves: phase Failed, reason Evicted (a terminal phase
    # cannot change back). No controller deletes such a pod; the operator must.
    failed = {"status": {"phase": "Failed", "reason": "Evicted", "message": "test eviction"}}
    deployed.kubectl(
        "patch", "pod", name, "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps(failed),
    )  # fmt: skip
    deployed.cluster.wait_for(
        lambda: name not in {p["metadata"]["name"] for p in deployed.model_pods()},
        20,
        f"the operator to delete the Failed pod {name}",
    )
    # Its replacement serves, then idles out: the model reaches Standby (it never did
    # while a Failed pod counted as a slot forever).
    em = deployed.wait_phase("fail-a", "Standby", timeout=60)
    assert em["status"]["reason"] == "Stopped"
    assert not _live_pods_of(deployed, "fail-a")
    deployed.delete_models("fail-a")


def test_a_deployment_at_the_wrong_size_is_repaired_by_the_next_pass(deployed: Deployed) -> None:
    names = ["rep-a", "rep-b"]
    deployed.create_tiny("rep-a")
    deployed.create_tiny("rep-b")
    deployed.wait_phase("rep-a", "Standby", timeout=180)
    deployed.wait_phase("rep-b", "Standby", timeout=180)
    deployed.demand("rep-a")
    deployed.wait_phase("rep-a", "Ready", timeout=60)

    def replicas(model: str) -> int:
        dep = deployed.cluster.get_json("deployment", f"model-{model}", "-n", NS)
        return int(dep["spec"]["replicas"])

    # As if the operator's scale had failed after its status patch: Ready at 0, Standby at 1.
    deployed.kubectl("scale", "deployment", "model-rep-a", "-n", NS, "--replicas=0")
    deployed.kubectl("scale", "deployment", "model-rep-b", "-n", NS, "--replicas=1")
    deployed.cluster.wait_for(
        lambda: replicas("rep-a") == 1 and replicas("rep-b") == 0, 20, "the repairs"
    )
    deployed.wait_phase("rep-a", "Ready", timeout=60)
    deployed.cluster.wait_for(
        lambda: (
            not [
                p
                for p in deployed.model_pods()
                if p["metadata"]["labels"][k8s.LABEL_MODEL] == "rep-b"
            ]
        ),
        60,
        "rep-b's stray pod to go",
    )
    assert deployed.phase("rep-b") == "Standby"
    deployed.delete_models(*names)


def test_a_replaced_operator_acts_within_five_seconds(deployed: Deployed) -> None:
    deployed.create_tiny("fo-a")
    deployed.wait_phase("fo-a", "Standby", timeout=180)
    deployed.cluster.wait_for(
        lambda: len(_running_operators(deployed)) == 2, 90, "leader and hot standby"
    )
    old = _lease_holder(deployed)
    assert old in _running_operators(deployed)
    # Graceful deletion (as a node drain does): the old operator releases the Lease on
    # SIGTERM; the standby takes it at once, starts its watches and decides.
    started = time.time()
    deployed.kubectl("delete", "pod", old, "-n", NS, "--wait=false")
    deployed.demand("fo-a")

    def activated() -> dict[str, Any] | None:
        em = deployed.em("fo-a")
        return em if (em.get("status") or {}).get("phase") in ("Activating", "Ready") else None

    em = deployed.cluster.wait_for(
        activated,
        30,
        "the new operator to activate fo-a",
    )
    acted = k8s.parse_time(em["status"]["activeSince"]) or 0.0
    failover = acted - started
    print(f"\noperator failover: demand after deleting the leader served at +{failover:.2f}s")
    holder = _lease_holder(deployed)
    assert holder and holder != old
    assert failover <= 5.0, f"the new operator acted {failover:.1f}s after the old one left"
    deployed.delete_models("fo-a")
