"""End-to-end behaviour of the local cluster: real control plane, real kubelet node.

Test pods use the toolbox image (Debian's static busybox), imported into the node's
containerd at `up`; nothing is pulled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from akidb_embed.devcluster import KUBE_VERSION, DevCluster, build, node
from tests.fixtures.cluster import TestCluster

pytestmark = pytest.mark.cluster

# An address outside the cluster: this machine's own gateway, so a packet that got past
# the guard would really leave.
OUTSIDE = "192.0.2.1"


def _pod(
    name: str,
    ns: str,
    command: str,
    labels: dict[str, str] | None = None,
    security: str = "",
    port: int | None = None,
) -> str:
    ports = f"\n    ports: [{{containerPort: {port}}}]" if port else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {json.dumps(labels or {"app": name})}}}
spec:
  nodeSelector: {{akidb.io/accelerator: jetson-thor}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {node.TOOLBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", {json.dumps(command)}]{ports}{security}
"""


# Serves "hello from <pod>" on port 8080.
HTTPD = "mkdir -p /tmp/www && echo hello from $(hostname) > /tmp/www/index.html && " + (
    "exec httpd -f -p 8080 -h /tmp/www"
)


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _running_pod(cluster: TestCluster, ns: str, name: str, timeout: float = 90) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod = cluster.get_json("pod", name, "-n", ns)
        return pod if _ready(pod) else None

    return cluster.wait_for(running, timeout, f"pod {ns}/{name} to be Ready")


def _exec(
    cluster: TestCluster, ns: str, pod: str, command: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("exec", "-n", ns, pod, "--", "sh", "-c", command, check=check)


def _http_get(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def _container_pid(cluster: TestCluster, pod: dict[str, Any]) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    info = json.loads(cluster.crictl("inspect", container_id).stdout)
    return int(info["info"]["pid"])


def _ns_id(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_node_registers_ready_with_its_labels_and_own_credential(cluster: TestCluster) -> None:
    node_obj = cluster.get_json("node", cluster.node_name)
    labels = node_obj["metadata"]["labels"]
    assert labels["akidb.io/accelerator"] == "jetson-thor"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-Jetson-Thor"
    assert labels["kubernetes.io/hostname"] == cluster.node_name
    assert labels["kubernetes.io/os"] == "linux"
    assert node_obj["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert _ready(node_obj) or any(
        c["type"] == "Ready" and c["status"] == "True" for c in node_obj["status"]["conditions"]
    )
    assert not [t for t in node_obj["spec"].get("taints", []) if "not-ready" in t["key"]]
    addresses = {a["type"]: a["address"] for a in node_obj["status"]["addresses"]}
    assert addresses["InternalIP"] == cluster.node_ip == node.NODE_IP
    info = node_obj["status"]["nodeInfo"]
    assert info["kubeletVersion"] == KUBE_VERSION
    assert info["containerRuntimeVersion"] == f"containerd://{build.CONTAINERD_VERSION[1:]}"
    # The kubelet creates its Lease shortly after registering.
    lease = cluster.wait_for(
        lambda: cluster.get_json("lease", cluster.node_name, "-n", "kube-node-lease"),
        30,
        "the node's Lease",
    )
    assert lease["spec"]["holderIdentity"] == cluster.node_name

    # The kubelet's own credential: a node identity, held to its node by the Node
    # authorizer and NodeRestriction (it may not touch other nodes or read all secrets).
    node_kc = str(cluster.state_dir / "kubeconfig" / "node.kubeconfig")
    who = cluster.kubectl("--kubeconfig", node_kc, "auth", "whoami", "-o", "json")
    user = json.loads(who.stdout)["status"]["userInfo"]
    assert user["username"] == f"system:node:{cluster.node_name}"
    assert "system:nodes" in user["groups"]
    denied = cluster.kubectl(
        "--kubeconfig", node_kc, "get", "secrets", "-n", "kube-system", check=False
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_binaries_report_the_pinned_release(cluster: TestCluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert versions["serverVersion"]["gitVersion"] == KUBE_VERSION


def test_kubectl_applies_a_crd_and_serves_its_objects(cluster: TestCluster) -> None:
    cluster.apply(
        """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.akidb.io}
spec:
  group: test.akidb.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
"""
    )
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.akidb.io")
    ns = cluster.namespace("crd")
    cluster.apply(
        f"""
apiVersion: test.akidb.io/v1
kind: Widget
metadata: {{name: w1, namespace: {ns}}}
spec: {{size: 3}}
"""
    )
    assert cluster.get_json("widgets", "w1", "-n", ns)["spec"]["size"] == 3
    bad = cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=f"apiVersion: test.akidb.io/v1\nkind: Widget\nmetadata: {{name: w2, namespace: {ns}}}"
        "\nspec: {size: not-a-number}\n",
        check=False,
    )
    assert bad.returncode != 0  # the real API server validates against the schema


def test_pod_runs_in_its_own_namespaces_and_exec_logs_and_security_work(
    cluster: TestCluster,
) -> None:
    ns = cluster.namespace("pod")
    security = """
    securityContext:
      runAsUser: 10001
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
      seccompProfile: {type: RuntimeDefault}"""
    cluster.apply(_pod("box", ns, "echo started-$(id -u); exec sleep 3600", security=security))
    pod = _running_pod(cluster, ns, "box")
    status = pod["status"]["containerStatuses"][0]
    assert status["image"].endswith(node.TOOLBOX_IMAGE.split("/", 1)[1])
    assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"]
    images = json.loads(cluster.crictl("images", "-o", "json").stdout)["images"]
    toolbox = [i for i in images if node.TOOLBOX_IMAGE in i.get("repoTags", [])]
    assert toolbox and status["imageID"].endswith(toolbox[0]["id"].split(":")[-1])

    pid = _container_pid(cluster, pod)
    for kind in ("pid", "mnt", "net", "uts", "ipc"):
        assert _ns_id(pid, kind) != _ns_id("self", kind), f"the pod shares our {kind} namespace"
    # The pod's processes live in our cgroup root, so `down` can find every one of them.
    assert "/akidb-embed/kubepods" in Path(f"/proc/{pid}/cgroup").read_text()

    assert _exec(cluster, ns, "box", "id -u", check=True).stdout.strip() == "10001"
    write = _exec(cluster, ns, "box", "touch /written")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert "started-10001" in cluster.pod_log(ns, "box")
    assert pod["status"]["podIP"].startswith("10.244.0.")


def test_pods_reach_the_api_server_through_the_kubernetes_service(cluster: TestCluster) -> None:
    ns = cluster.namespace("incluster")
    cluster.apply(_pod("client", ns, "exec sleep 3600"))
    _running_pod(cluster, ns, "client")
    env = _exec(cluster, ns, "client", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT")
    assert env.stdout.strip() == "10.96.0.1:443"
    # busybox speaks no TLS the API server accepts; a plain request over the Service gets
    # Go's answer for HTTP on a TLS port: the API server itself replied, via kube-proxy.
    out = _exec(
        cluster,
        ns,
        "client",
        "printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc 10.96.0.1 443",
        check=True,
    )
    assert "Client sent an HTTP request to an HTTPS server" in out.stdout
    sa_token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert _exec(cluster, ns, "client", f"test -s {sa_token}").returncode == 0


def test_clusterip_and_nodeport_services_answer_via_kube_proxy(cluster: TestCluster) -> None:
    ns = cluster.namespace("svc")
    cluster.apply(
        _pod("web", ns, HTTPD, port=8080)
        + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
    )
    _running_pod(cluster, ns, "web")
    svc = cluster.get_json("service", "web", "-n", ns)
    cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]

    def answers(url: str) -> str | None:
        try:
            return _http_get(url)
        except (OSError, urllib.error.URLError):
            return None

    # From the host: the NodePort on the node IP, and the ClusterIP (host route to it).
    body = cluster.wait_for(
        lambda: answers(f"http://{cluster.node_ip}:{node_port}/"), 30, "the NodePort"
    )
    assert body.strip() == "hello from web"
    assert (answers(f"http://{cluster_ip}/") or "").strip() == "hello from web"
    # From another pod, through kube-proxy's ClusterIP rules.
    cluster.apply(_pod("caller", ns, "exec sleep 3600"))
    _running_pod(cluster, ns, "caller")
    out = _exec(cluster, ns, "caller", f"timeout 5 wget -q -O - http://{cluster_ip}/", check=True)
    assert out.stdout.strip() == "hello from web"


def test_network_policy_is_enforced_by_kube_router(cluster: TestCluster) -> None:
    ns = cluster.namespace("netpol")
    cluster.apply(
        _pod("server", ns, HTTPD, port=8080)
        + "---"
        + _pod("friend", ns, "exec sleep 3600", labels={"role": "friend"})
        + "---"
        + _pod("stranger", ns, "exec sleep 3600", labels={"role": "stranger"})
    )
    server_ip = _running_pod(cluster, ns, "server")["status"]["podIP"]
    for name in ("friend", "stranger"):
        _running_pod(cluster, ns, name)
    fetch = f"timeout 3 wget -q -O - http://{server_ip}:8080/"
    # Before any policy both connect.
    for name in ("friend", "stranger"):
        assert _exec(cluster, ns, name, fetch).returncode == 0
    cluster.apply(
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: only-friends, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{role: friend}}}}}}]
    ports: [{{port: 8080}}]
"""
    )
    cluster.wait_for(
        lambda: _exec(cluster, ns, "stranger", fetch).returncode != 0,
        60,
        "kube-router to block the stranger",
    )
    allowed = _exec(cluster, ns, "friend", fetch)
    assert allowed.returncode == 0 and allowed.stdout.strip() == "hello from server"
    # Deleting the policy opens the door again.
    cluster.kubectl("delete", "networkpolicy", "only-friends", "-n", ns)
    cluster.wait_for(
        lambda: _exec(cluster, ns, "stranger", fetch).returncode == 0,
        60,
        "kube-router to lift the policy",
    )


def test_pod_traffic_to_an_outside_address_is_dropped_by_the_guard(cluster: TestCluster) -> None:
    ns = cluster.namespace("guard")
    cluster.apply(_pod("leaker", ns, "exec sleep 3600"))
    _running_pod(cluster, ns, "leaker")
    before = node.guard_drops()
    out = _exec(cluster, ns, "leaker", f"timeout 2 wget -q -O - http://{OUTSIDE}/")
    assert out.returncode != 0
    assert node.guard_drops() > before, "the packet was not stopped by the guard"


def test_second_up_reuses_the_running_cluster(cluster: TestCluster) -> None:
    before = cluster.dev.status()
    started = time.monotonic()
    after = cluster.dev.up(progress=lambda m: None)
    assert time.monotonic() - started < 20
    assert [c.pid for c in after.components] == [c.pid for c in before.components]
    assert after.running and after.node_ready


def test_another_state_dir_cannot_take_the_node(cluster: TestCluster, tmp_path: Path) -> None:
    with pytest.raises(node.NodeError, match=str(cluster.state_dir.resolve())):
        DevCluster(tmp_path / "other").up(progress=lambda m: None)
    assert cluster.dev.status().running


def _leftovers(state_dir: Path) -> list[str]:
    found = []
    if Path(f"/run/netns/{node.NETNS}").exists():
        found.append(f"netns {node.NETNS}")
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    found += [f"link {line.split()[0]}" for line in links.splitlines() if "akidb" in line]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    found += [f"route {r}" for r in routes.splitlines() if "10.244." in r or "10.96." in r]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{node.CGROUP_ROOT}")]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m.split()[4]}" for m in mounts.splitlines() if str(state_dir) in m]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(state_dir) in cmd or str(build.node_bin_dir()) in cmd:
                found.append(f"process {proc.name}: {cmd[:80]}")
    if node.MACHINE_LOCK.exists():
        found.append(str(node.MACHINE_LOCK))
    return found


def test_down_leaves_nothing_and_up_brings_it_back(cluster: TestCluster) -> None:
    ns = cluster.namespace("down")
    cluster.apply(_pod("survivor", ns, "exec sleep 3600"))
    _running_pod(cluster, ns, "survivor")
    started = time.monotonic()
    cluster.dev.down(progress=lambda m: None)
    down_s = time.monotonic() - started
    try:
        assert _leftovers(cluster.state_dir) == []
    finally:  # later tests (and other modules) need the cluster back
        started = time.monotonic()
        cluster.dev.up(progress=lambda m: None)
        up_s = time.monotonic() - started
    print(f"\ndown {down_s:.1f}s, up after down {up_s:.1f}s")
    # The pod object survived in etcd; the kubelet runs it again in a new sandbox.
    _running_pod(cluster, ns, "survivor", timeout=120)


def _kill9(cluster: TestCluster, component: str) -> None:
    rec = cluster.dev._running(component)
    assert rec is not None, f"{component} is not running"
    os.kill(rec.pid, signal.SIGKILL)
    cluster.wait_for(lambda: not rec.alive(), 10, f"{component} to die")


def test_up_after_kill_9_of_kubelet_and_containerd_recovers(cluster: TestCluster) -> None:
    ns = cluster.namespace("crash")
    _kill9(cluster, "kubelet")
    _kill9(cluster, "containerd")
    assert not cluster.dev.status().running
    cluster.dev.up(progress=lambda m: None)
    status = cluster.dev.status()
    assert status.running and status.node_ready
    cluster.apply(_pod("after", ns, HTTPD, port=8080))
    ip = _running_pod(cluster, ns, "after", timeout=120)["status"]["podIP"]
    assert cluster.wait_for(lambda: _http_get(f"http://{ip}:8080/"), 30, "the new pod").strip()
