"""End-to-end behaviour of the local cluster: real control plane, simulated Jetson node."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from akidb_embed.devcluster import KUBE_VERSION, DevCluster
from tests.fixtures.cluster import TestCluster

pytestmark = pytest.mark.cluster

# Serves "hello from <pod name>" on $(POD_IP):8080 (the process binds its own pod IP).
HTTP_SERVER = textwrap.dedent(
    """
    import http.server, os, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("hello from " + os.environ["POD_NAME"]).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
    """
)


def _free_port() -> int:
    # Outside the ephemeral and NodePort ranges, like the cluster's own ports.
    while True:
        port = random.randint(20000, 29999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def web_manifest(namespace: str, host_port: int) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeSelector: {{akidb.io/accelerator: jetson-thor}}
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: python:3.11-slim
        command: ["python", "-c", {json.dumps(HTTP_SERVER)}]
        args: ["$(POD_IP)", "8080"]
        ports: [{{name: http, containerPort: 8080, hostPort: {host_port}}}]
        env:
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        startupProbe:
          tcpSocket: {{port: http}}
          periodSeconds: 1
          failureThreshold: 30
        readinessProbe:
          httpGet: {{path: /, port: http}}
          periodSeconds: 1
        livenessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {namespace}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def _pods(cluster: TestCluster, namespace: str, selector: str) -> list[dict]:
    return list(cluster.get_json("pods", "-n", namespace, "-l", selector)["items"])


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by init counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _http_get(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def web(cluster: TestCluster) -> tuple[str, dict]:
    """A Deployment (with a hostPort) + NodePort Service, waited until its pod is Ready."""
    ns = cluster.namespace("web")
    cluster.apply(web_manifest(ns, _free_port()))

    def ready_pod() -> dict | None:
        pods = [p for p in _pods(cluster, ns, "app=web") if _ready(p)]
        return pods[0] if pods else None

    pod = cluster.wait_for(ready_pod, 60, "the web pod to be Ready")
    return ns, pod


def test_node_is_registered_like_a_jetson_thor(cluster: TestCluster) -> None:
    node = cluster.get_json("node", cluster.node_name)
    labels = node["metadata"]["labels"]
    assert labels["akidb.io/accelerator"] == "jetson-thor"
    assert labels["kubernetes.io/arch"] == "arm64"
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-Jetson-Thor"
    assert labels["kubernetes.io/hostname"] == cluster.node_name
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert node["status"]["capacity"]["pods"] == "110"
    assert _ready(node)
    assert not [t for t in node["spec"].get("taints", []) if "not-ready" in t["key"]]
    lease = cluster.get_json("lease", cluster.node_name, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == cluster.node_name


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


def test_deployment_pod_is_scheduled_runs_and_serves_http(
    cluster: TestCluster, web: tuple[str, dict]
) -> None:
    _, pod = web
    # The manifest names no node: the real scheduler bound it.
    assert pod["spec"]["nodeName"] == cluster.node_name
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.pod_subnet)
    assert pod["status"]["podIPs"] == [{"ip": ip}]
    assert pod["status"]["hostIP"] == cluster.node_ip
    assert pod["status"]["phase"] == "Running"
    kinds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        assert kinds[kind] == "True", kind
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["started"] and "running" in status["state"]
    assert _http_get(f"http://{ip}:8080/") == f"hello from {pod['metadata']['name']}"


def test_nodeport_service_is_reachable_on_localhost(
    cluster: TestCluster, web: tuple[str, dict]
) -> None:
    ns, pod = web
    svc = cluster.get_json("service", "web", "-n", ns)
    node_port = svc["spec"]["ports"][0]["nodePort"]
    expected = f"hello from {pod['metadata']['name']}"
    for host in ("127.0.0.1", cluster.node_ip):
        body = cluster.wait_for(
            lambda h=host: _http_get(f"http://{h}:{node_port}/"), 20, f"{host}:{node_port}"
        )
        assert body == expected


def test_host_port_is_forwarded_from_localhost(cluster: TestCluster, web: tuple[str, dict]) -> None:
    _, pod = web
    host_port = pod["spec"]["containers"][0]["ports"][0]["hostPort"]
    body = cluster.wait_for(
        lambda: _http_get(f"http://127.0.0.1:{host_port}/"), 20, f"127.0.0.1:{host_port}"
    )
    assert body == f"hello from {pod['metadata']['name']}"


def test_service_account_rbac_is_enforced(cluster: TestCluster) -> None:
    ns = cluster.namespace("rbac")
    # Each pod lists pods with its own KUBECONFIG; exit 0 on 200, 3 on 403.
    probe = textwrap.dedent(
        """
        import base64, json, os, ssl, sys, tempfile, urllib.request, urllib.error
        cfg = json.load(open(os.environ["KUBECONFIG"]))
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        ca = tempfile.NamedTemporaryFile(suffix=".crt", delete=False)
        ca.write(base64.b64decode(cluster["certificate-authority-data"])); ca.close()
        req = urllib.request.Request(
            cluster["server"] + "/api/v1/namespaces/" + sys.argv[1] + "/pods",
            headers={"Authorization": "Bearer " + user["token"]})
        try:
            urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca.name))
            print("status 200"); sys.exit(0)
        except urllib.error.HTTPError as e:
            print("status", e.code); sys.exit(3 if e.code == 403 else 1)
        """
    )
    pod_specs = ""
    for sa in ("nobody", "reader"):
        pod_specs += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: as-{sa}, namespace: {ns}}}
spec:
  serviceAccountName: {sa}
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: ["python", "-c", {json.dumps(probe)}, "{ns}"]
"""
    cluster.apply(
        f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: nobody, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
{pod_specs}
"""
    )

    def finished(name: str) -> dict | None:
        pod = cluster.get_json("pod", name, "-n", ns)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    reader = cluster.wait_for(lambda: finished("as-reader"), 60, "pod as-reader to finish")
    nobody = cluster.wait_for(lambda: finished("as-nobody"), 60, "pod as-nobody to finish")
    assert reader["status"]["phase"] == "Succeeded", cluster.pod_log(ns, "as-reader")
    assert "status 200" in cluster.pod_log(ns, "as-reader")
    assert nobody["status"]["phase"] == "Failed"
    assert "status 403" in cluster.pod_log(ns, "as-nobody")
    terminated = nobody["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"

    # The same through a TokenRequest token used directly (`kubectl create token`).
    token = cluster.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    req = urllib.request.Request(
        f"{cluster.server}/api/v1/namespaces/{ns}/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    import ssl

    ctx = ssl.create_default_context(cafile=str(cluster.state_dir / "pki" / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=5)
    assert err.value.code == 403


def test_env_downward_api_config_and_expansion(cluster: TestCluster) -> None:
    ns = cluster.namespace("env")
    cluster.apply(
        f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{mode: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envcheck, namespace: {ns}, labels: {{tier: x}}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: ["sh", "-c"]
    args:
    - >-
      echo name=$(MY_NAME) ns=$(MY_NS) node=$(NODE) sa=$(SA) ip=$(POD_IP) mode=$(MODE)
      pw=$PW greeting=$(GREETING) esc='$$(MY_NAME)' undefined='$(NOPE)' tier=$(TIER);
      echo kubeconfig=$KUBECONFIG; command -v akidb-embed
    env:
    - {{name: MY_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: MY_NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: SA, valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}
    - {{name: PW, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: GREETING, value: "hi-$(MY_NAME)"}}
"""
    )
    cluster.wait_for(
        lambda: cluster.get_json("pod", "envcheck", "-n", ns)["status"].get("phase") == "Succeeded",
        60,
        "pod envcheck to succeed",
    )
    out = cluster.pod_log(ns, "envcheck")
    pod = cluster.get_json("pod", "envcheck", "-n", ns)
    ip = pod["status"]["podIP"]
    assert (
        f"name=envcheck ns={ns} node={cluster.node_name} sa=default ip={ip} mode=fast pw=s3cret "
        "greeting=hi-envcheck esc=$(MY_NAME) undefined=$(NOPE) tier=x"
    ) in out
    assert "kubeconfig=" in out
    assert Path(out.split("kubeconfig=")[1].split()[0]).name == "kubeconfig"
    assert "/.venv/bin/akidb-embed" in out or "bin/akidb-embed" in out


def test_deleting_a_pod_sends_sigterm_then_removes_it(cluster: TestCluster, tmp_path: Path) -> None:
    ns = cluster.namespace("term")
    marker_dir = tmp_path / "markers"
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        d = sys.argv[1]
        def on_term(signum, frame):
            open(os.path.join(d, "sigterm"), "w").write("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open(os.path.join(d, "pid"), "w").write(str(os.getpid()))
        while True:
            time.sleep(0.2)
        """
    )
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: graceful, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: markers, hostPath: {{path: "{marker_dir}", type: DirectoryOrCreate}}}}]
  containers:
  - name: main
    image: none
    command: ["python", "-c", {json.dumps(script)}, "{marker_dir}"]
    volumeMounts: [{{name: markers, mountPath: "{marker_dir}"}}]
"""
    )
    pid_file = marker_dir / "pid"
    cluster.wait_for(pid_file.exists, 60, "the pod's process to start")
    pid = int(pid_file.read_text())
    assert not _gone(pid)
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "graceful", "-n", ns, "--wait=true", timeout=60)
    assert (marker_dir / "sigterm").read_text() == "SIGTERM"
    # It exited on SIGTERM, well before the 20 s grace period would force SIGKILL.
    assert time.monotonic() - started < 15
    assert _gone(pid)
    assert cluster.kubectl("get", "pod", "graceful", "-n", ns, check=False).returncode != 0


def test_crashing_container_restarts_with_growing_count(cluster: TestCluster) -> None:
    ns = cluster.namespace("crash")
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: {ns}}}
spec:
  containers:
  - name: main
    image: none
    command: ["python", "-c", "import sys; print('crashing'); sys.exit(2)"]
"""
    )
    seen_reasons: set[str] = set()

    def restarts_at_least(n: int) -> dict | None:
        status = cluster.get_json("pod", "crasher", "-n", ns)["status"]
        cs = status.get("containerStatuses", [{}])[0]
        seen_reasons.update(s.get("reason", "") for s in cs.get("state", {}).values())
        return cs if cs.get("restartCount", 0) >= n else None

    first = cluster.wait_for(lambda: restarts_at_least(1), 30, "a first restart")
    later = cluster.wait_for(lambda: restarts_at_least(3), 60, "three restarts")
    assert later["restartCount"] > first["restartCount"]
    assert later["lastState"]["terminated"]["exitCode"] == 2
    cluster.wait_for(
        lambda: restarts_at_least(3) and "CrashLoopBackOff" in seen_reasons, 30, "CrashLoopBackOff"
    )
    assert cluster.pod_log(ns, "crasher").count("crashing") >= 3
    cluster.kubectl("delete", "pod", "crasher", "-n", ns, "--wait=true")


def test_job_pod_runs_to_completion(cluster: TestCluster) -> None:
    ns = cluster.namespace("job")
    cluster.apply(
        f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: once, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: none
        command: ["python", "-c", "print('job done')"]
"""
    )
    cluster.kubectl(
        "wait", "--for=condition=Complete", "job/once", "-n", ns, "--timeout=60s", timeout=70
    )
    (pod,) = cluster.get_json("pods", "-n", ns, "-l", "job-name=once")["items"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert "job done" in cluster.pod_log(ns, pod["metadata"]["name"])
    # `kubectl logs` reaches the node agent's kubelet API through the API server.
    logs = cluster.kubectl("logs", "job/once", "-n", ns).stdout
    assert logs == "job done\n"
    followed = cluster.kubectl("logs", "-f", pod["metadata"]["name"], "-n", ns, timeout=20)
    assert followed.stdout == "job done\n"  # and it returned: the container has ended


def test_second_up_reuses_the_running_cluster(cluster: TestCluster) -> None:
    before = {c.name: c.pid for c in cluster.dev.status().components}
    status = cluster.dev.up(progress=lambda _msg: None)
    assert status.running and status.ready and status.node_ready
    assert {c.name: c.pid for c in status.components} == before


def test_restarted_agent_cleans_up_and_restarts_pods(
    cluster: TestCluster, web: tuple[str, dict]
) -> None:
    ns, pod = web
    agent = next(c for c in cluster.dev.status().components if c.name == "node-agent")
    procs_dir = cluster.state_dir / "agent" / "pods" / pod["metadata"]["uid"] / "procs"
    old_pid = json.loads((procs_dir / "web.json").read_text())["pid"]
    assert agent.pid is not None
    os.kill(agent.pid, signal.SIGKILL)  # no chance to clean up after itself
    cluster.wait_for(lambda: not cluster.dev.status().components[-1].running, 10, "agent death")
    assert not _gone(old_pid)  # the pod process outlived the agent
    cluster.dev.up(progress=lambda _msg: None)

    def restarted() -> dict | None:
        (p,) = _pods(cluster, ns, "app=web")
        cs = p["status"]["containerStatuses"][0]
        return p if _ready(p) and cs["restartCount"] >= 1 else None

    fresh = cluster.wait_for(restarted, 60, "the web pod to run again")
    assert fresh["metadata"]["uid"] == pod["metadata"]["uid"]
    assert fresh["status"]["podIP"] == pod["status"]["podIP"]  # kept its IP
    assert _gone(old_pid)
    assert _http_get(f"http://{fresh['status']['podIP']}:8080/").startswith("hello from")
    # Pods that had finished (Job, RBAC probes) keep their final status under the new agent.
    time.sleep(1)
    agent_log = (cluster.state_dir / "logs" / "node-agent.log").read_text()
    assert "status update failed" not in agent_log


def test_a_second_cluster_runs_beside_and_down_stops_only_its_own(
    cluster: TestCluster, tmp_path: Path
) -> None:
    first = cluster.pod_subnet.split(".")[1]
    subnet = f"127.{(int(first) + 1) % 200 + 20}.0.0/16"
    other = DevCluster(tmp_path / "other", pod_subnet=subnet, backoff_base_s=1)
    try:
        status = other.up(progress=lambda _msg: None)
        assert status.running and status.node_ready
        assert other.server != cluster.server
        kubectl = [str(cluster.kubectl_bin), f"--kubeconfig={other.kubeconfig}"]
        pod = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "sleeper", "namespace": "default"},
                "spec": {
                    "containers": [{"name": "main", "image": "none", "command": ["sleep", "600"]}]
                },
            }
        )
        subprocess.run([*kubectl, "apply", "-f", "-"], input=pod, text=True, check=True)
        records = other.state_dir / "agent" / "pods"
        cluster.wait_for(lambda: list(records.glob("*/procs/main.json")), 60, "sleeper to run")
        (record,) = records.glob("*/procs/main.json")
        pod_pid = json.loads(record.read_text())["pid"]
        pids = [c.pid for c in other.status().components]
    finally:
        other.down(progress=lambda _msg: None)
    for pid in [pod_pid, *pids]:
        assert pid is not None and _gone(pid), pid
    assert not other.status().running
    # The session's cluster did not notice.
    assert cluster.dev.status().running
    assert cluster.kubectl("get", "node", cluster.node_name).returncode == 0


def test_exec_probes_drive_readiness_and_liveness_restarts(
    cluster: TestCluster, tmp_path: Path
) -> None:
    ns = cluster.namespace("probe")
    flags = tmp_path / "flags"
    flags.mkdir()
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: probed, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: none
    command: ["sleep", "600"]
    readinessProbe:
      exec: {{command: ["test", "-e", "{flags}/ready"]}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      exec: {{command: ["test", "!", "-e", "{flags}/dead"]}}
      periodSeconds: 1
      failureThreshold: 2
"""
    )

    def status() -> dict:
        return dict(cluster.get_json("pod", "probed", "-n", ns)["status"])

    cluster.wait_for(lambda: status().get("phase") == "Running", 30, "the pod to run")
    time.sleep(1.5)
    assert not _ready(cluster.get_json("pod", "probed", "-n", ns))
    (flags / "ready").touch()
    cluster.wait_for(lambda: _ready({"status": status()}), 15, "Ready after the flag")
    (flags / "ready").unlink()
    cluster.wait_for(lambda: not _ready({"status": status()}), 15, "not Ready without it")
    (flags / "dead").touch()
    cs = cluster.wait_for(
        lambda: status()["containerStatuses"][0]["restartCount"] >= 1 and status(),
        20,
        "a liveness restart",
    )["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM, as in a container
    (flags / "dead").unlink()
