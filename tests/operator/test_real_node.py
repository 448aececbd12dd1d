"""What ships, running on the real node: images built here, pods as they are specified.

manifests/overlays/local is applied as is (images `localhost/akidb-embed-*:local`, which
`import_images` points at this tree's content-hash tags), except that the node folders
(model store, HF cache, TensorRT cache, source root) are this session's, prepared for
UID 10001 as docs/IMAGES.md says. The node is a real kubelet + containerd, so every
check below is made by the kubelet, runc and the kernel, not by this project.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from akidb_embed import k8s
from akidb_embed.devcluster import images as images_mod
from tests.operator.local_stack import chown_tree, copy_source, render_overlay

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NS = k8s.DEFAULT_NAMESPACE
MINILM = "all-minilm-l6-v2"
GATEWAY = "app.kubernetes.io/name=akidb-gateway"
OPERATOR = "app.kubernetes.io/name=akidb-operator"


@dataclass
class Stack:
    cluster: Any
    images: images_mod.ImageSet
    folders: dict[str, Path]

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.cluster.kubectl(*args, **kw)

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["pods", "-n", NS] + (["-l", selector] if selector else [])
        return self.cluster.get_json(*args)["items"]

    def ready_pod(self, selector: str) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            for pod in self.pods(selector):
                conds = (pod.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    return pod
            return None

        return self.cluster.wait_for(ready, 180, f"a ready pod {selector}")

    def em(self, name: str) -> dict[str, Any]:
        return self.cluster.get_json("em", name, "-n", NS)

    def wait_status(
        self, name: str, key: str, value: str | tuple[str, ...], timeout: float = 600
    ) -> Any:
        wanted = (value,) if isinstance(value, str) else value

        def reached() -> dict[str, Any] | None:
            body = self.em(name)
            status = body.get("status") or {}
            current = status.get("observedGeneration") == body["metadata"]["generation"]
            return body if current and status.get(key) in wanted else None

        return self.cluster.wait_for(reached, timeout, f"{name} {key}={value}")

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.cluster.get_json(
            "events", "-n", NS, "--field-selector", f"involvedObject.name={name}"
        )["items"]

    def embed(self, model: str, text: str, timeout: float = 300) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://{self.cluster.node_ip}:30080/v1/embeddings",
            data=json.dumps({"model": model, "input": [text]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))

    def create_model(self, name: str, **spec: Any) -> None:
        body = {
            "apiVersion": k8s.API_VERSION,
            "kind": k8s.KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "family": "bge",
                "dimension": 32,
                "maxLength": 128,
                "pooling": "cls",
                "executionProviders": ["CPU"],
                "precision": "fp32",
                "resources": {"memory": "512Mi"},
                **spec,
            },
        }
        self.cluster.apply(json.dumps(body))


@pytest.fixture(scope="module")
def stack(
    cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    minilm_checkpoint: Path,
    tiny_bert_checkpoint: Path,
) -> Iterator[Stack]:
    from akidb_embed.conversion.source import seed_hf_cache

    assert cluster.images is not None, "the cluster fixture imported no project images"
    kubectl = cluster.kubectl
    if kubectl("get", "namespace", NS, check=False).returncode == 0:
        kubectl("delete", "namespace", NS, "--wait=true", "--timeout=150s", timeout=180)
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    base = tmp_path_factory.mktemp("node-folders")
    folders = {k: base / k for k in ("store", "hf", "trt", "sources")}
    images_mod.prepare_node_folders(folders["store"], folders["hf"], folders["trt"])
    seed_hf_cache(
        "sentence-transformers/all-MiniLM-L6-v2", minilm_checkpoint, folders["hf"] / "hub"
    )
    chown_tree(folders["hf"])
    copy_source(tiny_bert_checkpoint, folders["sources"] / "tiny")  # root-owned, a+r

    cluster.apply(render_overlay(folders, kubectl))
    handle = Stack(cluster, cluster.images, folders)
    handle.ready_pod(OPERATOR)
    handle.ready_pod(GATEWAY)
    yield handle
    kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _image_ids(stack: Stack) -> dict[str, set[str]]:
    """Each project image's identities as the node's CRI reports them."""
    ids: dict[str, set[str]] = {}
    for role, ref in stack.images.refs().items():
        info = json.loads(stack.cluster.crictl("inspecti", "-o", "json", ref).stdout)["status"]
        ids[role] = {info["id"], *(info.get("repoDigests") or [])}
    return ids


def test_minilm_is_converted_in_the_converter_image_and_served(stack: Stack) -> None:
    body = stack.wait_status(MINILM, "phase", "Standby", timeout=900)
    assert Path(body["status"]["artifact"]["path"]).is_relative_to(stack.folders["store"])
    jobs = stack.cluster.get_json("jobs", "-n", NS, "-l", f"{k8s.LABEL_MODEL}={MINILM}")["items"]
    (container,) = jobs[-1]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == images_mod.local_ref(stack.images.converter)
    # The artifact, written by UID 10001 into the prepared store, is what the server loads.
    out = stack.embed(MINILM, "hello from the real node")
    assert len(out["data"][0]["embedding"]) == 384
    assert stack.ready_pod(f"{k8s.LABEL_MODEL}={MINILM}")["spec"]["containers"][0][
        "image"
    ] == images_mod.local_ref(stack.images.server)


def test_every_project_pod_runs_an_image_built_here(stack: Stack) -> None:
    stack.ready_pod(f"{k8s.LABEL_MODEL}={MINILM}")
    ids = _image_ids(stack)
    every = set().union(*ids.values())
    seen_roles = set()
    for pod in stack.pods():
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            assert cs["imageID"] in every or cs["imageID"].split("@")[-1] in every, (
                pod["metadata"]["name"],
                cs["imageID"],
                ids,
            )
            seen_roles |= {role for role, role_ids in ids.items() if cs["imageID"] in role_ids}
    assert {"operator", "server"} <= seen_roles


def test_gateway_runs_as_10001_with_a_read_only_root(stack: Stack) -> None:
    pod = stack.ready_pod(GATEWAY)["metadata"]["name"]

    def sh(script: str) -> subprocess.CompletedProcess[str]:
        return stack.kubectl("exec", "-n", NS, pod, "--", "sh", "-c", script, check=False)

    ident = sh("id -u; id -g")
    assert ident.returncode == 0 and ident.stdout.split() == ["10001", "10001"], ident
    denied = sh("echo x > /probe")
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr + denied.stdout
    assert sh("echo x > /tmp/probe && cat /tmp/probe").stdout.strip() == "x"
    # No way back to root: no capabilities at all, no privilege escalation.
    status = sh("grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status").stdout
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert fields == {"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}


@pytest.mark.parametrize("selector", [OPERATOR, GATEWAY])
def test_operator_and_gateway_use_in_cluster_config(stack: Stack, selector: str) -> None:
    pod = stack.ready_pod(selector)
    for c in pod["spec"]["containers"]:
        names = {e["name"] for e in c.get("env") or []}
        assert "KUBECONFIG" not in names
    volumes = json.dumps(pod["spec"].get("volumes") or [])
    assert "kubeconfig" not in volumes.lower()
    name = pod["metadata"]["name"]
    out = stack.kubectl(
        "exec", "-n", NS, name, "--", "sh", "-c",
        'echo "KUBECONFIG=${KUBECONFIG:-}"; ls /var/run/secrets/kubernetes.io/serviceaccount;'
        ' echo "$KUBERNETES_SERVICE_HOST"',
    ).stdout.split()  # fmt: skip
    assert out[0] == "KUBECONFIG=" and "token" in out
    assert out[-1].startswith("10.96.")  # the `kubernetes` Service, through kube-proxy


def test_conversion_from_a_path_below_the_source_root(stack: Stack) -> None:
    stack.create_model("tiny-path", source={"path": str(stack.folders["sources"] / "tiny")})
    stack.wait_status("tiny-path", "phase", "Standby", timeout=600)
    out = stack.embed("tiny-path", "a checkpoint mounted read-only at a fixed path")
    assert len(out["data"][0]["embedding"]) == 32


@pytest.mark.parametrize("where", ["/etc", "sibling"])
def test_a_source_outside_the_root_is_refused_and_never_mounted(stack: Stack, where: str) -> None:
    path = "/etc" if where == "/etc" else f"{stack.folders['sources']}X/tiny"
    name = f"outside-{where.strip('/')}"
    stack.create_model(name, source={"path": path})
    body = stack.wait_status(name, "reason", "SourceRefused", timeout=60)
    assert body["status"]["phase"] == "Failed"
    assert "outside the source root" in body["status"]["message"]
    conds = {c["type"]: c for c in body["status"]["conditions"]}
    assert conds["Converted"]["status"] == "False"
    assert conds["Converted"]["reason"] == "SourceRefused"
    assert any(e["reason"] == "SourceRefused" for e in stack.events(name))
    jobs = stack.cluster.get_json("jobs", "-n", NS, "-l", f"{k8s.LABEL_MODEL}={name}")["items"]
    assert jobs == []
    stack.kubectl("delete", "em", name, "-n", NS)


def test_a_model_pod_over_its_memory_limit_is_oom_killed_and_recovers(stack: Stack) -> None:
    name = "minilm-oom"
    # Same source and precision as the overlay's MiniLM: the same artifact, no conversion.
    spec = {
        "source": {"repo": "sentence-transformers/all-MiniLM-L6-v2"},
        "family": "sentence-transformers",
        "dimension": 384,
        "maxLength": 256,
        "pooling": "mean",
        "normalize": True,
        "resources": {"memory": "64Mi"},
    }
    # Converted (a model served by an earlier test stays resident: Ready).
    stack.wait_status(MINILM, "phase", ("Standby", "Ready"), timeout=900)
    stack.create_model(name, **spec)
    stack.wait_status(name, "phase", "Standby", timeout=300)
    stack.kubectl(
        "patch", "em", name, "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"requestedAt": k8s.now_rfc3339()}}),
    )  # fmt: skip

    def oom_killed() -> bool:
        for pod in stack.pods(f"{k8s.LABEL_MODEL}={name}"):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                    if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                        return True
        return False

    stack.cluster.wait_for(oom_killed, 180, f"{name}'s server to be OOMKilled")
    # Recovery: a realistic limit (a new generation) and the same model serves.
    spec["resources"] = {"memory": "768Mi"}
    stack.create_model(name, **spec)
    out = stack.embed(name, "after the OOM kill")
    assert len(out["data"][0]["embedding"]) == 384
    pod = stack.ready_pod(f"{k8s.LABEL_MODEL}={name}")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "768Mi"
