"""The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
one real node (containerd, kubelet, kube-proxy, kube-router; see node.py) as detached
child processes, with everything under one state folder.

Layout of the state folder:
    config.json            ports, pod subnet, node name (chosen at the first `up`)
    admin.kubeconfig       the admin credential (system:masters)
    pki/                   CA, serving/client certificates, service-account key pair
    kubeconfig/            credentials of the controllers and the node's components
    etcd-data/             etcd's data
    run/<component>.pid    pid records (pid + start time, checked before any signal)
    logs/<component>.log   component logs; logs/pods/<ns>_<pod>_<uid>/<container>/N.log
    node/                  containerd root and state, kubelet root, CNI config, pause image
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from akidb_embed.devcluster import build, node, procs

DEFAULT_NODE_NAME = "jetson-thor-0"
SERVICE_CIDR = node.SERVICE_CIDR
KUBERNETES_SERVICE_IP = "10.96.0.1"
STATE_ENV = "AKIDB_DEVCLUSTER_DIR"

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Start order; `down` stops in reverse.
COMPONENTS = (*CONTROL_PLANE, *node.COMPONENTS)

# Who may do what beyond Kubernetes' bootstrap policy: the API server calls the kubelet
# API (logs, exec), kube-router watches what NetworkPolicies select.
BOOTSTRAP_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "akidb:kube-apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "akidb:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "akidb:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "akidb:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "akidb:kube-router"}]
"""

Progress = Callable[[str], None]

# Taints the node lifecycle controller sets on a node it does not consider healthy.
_UNHEALTHY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


class ClusterError(RuntimeError):
    """The cluster could not be brought up or queried; the message says why."""


def default_state_dir() -> Path:
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "akidb-embed" / "devcluster"


# Below Linux's ephemeral range (32768+), so outgoing connections never hold our ports,
# and below the NodePort range (30000-32767).
_PORT_RANGE = (10000, 29999)


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        # As servers do: connections of a previous run in TIME_WAIT do not block the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port(taken: set[int]) -> int:
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        if port not in taken and not _port_busy(port):
            taken.add(port)
            return port
    raise ClusterError(f"found no free port in {_PORT_RANGE} on 127.0.0.1")


@dataclass
class ClusterConfig:
    node_name: str = DEFAULT_NODE_NAME
    kube_version: str = build.KUBE_VERSION
    etcd_port: int = 0
    etcd_peer_port: int = 0
    apiserver_port: int = 0
    controller_manager_port: int = 0
    scheduler_port: int = 0
    pod_subnet: str = node.POD_SUBNET
    service_cidr: str = SERVICE_CIDR
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def node_ip(self) -> str:
        return node.NODE_IP

    @property
    def server(self) -> str:
        # The host end of the node's veth: reachable from the host and from pods alike.
        return f"https://{node.HOST_IP}:{self.apiserver_port}"

    @classmethod
    def load(cls, path: Path) -> ClusterConfig:
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    log: Path


@dataclass
class ClusterStatus:
    state_dir: Path
    server: str | None
    kubeconfig: Path
    components: list[ComponentStatus]
    ready: bool
    node_name: str
    node_ready: bool | None

    @property
    def running(self) -> bool:
        return all(c.running for c in self.components)

    def describe(self) -> str:
        lines = [f"state dir:  {self.state_dir}"]
        if self.server:
            lines.append(f"API server: {self.server} ({'ready' if self.ready else 'not ready'})")
            lines.append(f"kubeconfig: {self.kubeconfig}")
        node = {None: "unknown", True: "Ready", False: "NotReady"}[self.node_ready]
        lines.append(f"node:       {self.node_name} ({node})")
        for c in self.components:
            state = f"running (pid {c.pid})" if c.running else "stopped"
            lines.append(f"  {c.name:<24} {state:<22} log: {c.log}")
        return "\n".join(lines)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class DevCluster:
    """One local cluster, identified by its state folder.

    `up()` is idempotent and level-triggered: running components are reused, missing ones
    started, and a node left half-dead (a component killed) is cleaned and restarted.
    `down()` stops only the processes recorded in this state folder (identity-checked)
    and removes what the node made (see `node.cleanup`).
    """

    def __init__(
        self, state_dir: Path | str | None = None, *, node_name: str = DEFAULT_NODE_NAME
    ) -> None:
        self.state_dir = Path(state_dir).expanduser() if state_dir else default_state_dir()
        self._node_name = node_name
        self.node_paths = node.NodePaths(self.state_dir)

    # -- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfig"

    def pid_path(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def config(self) -> ClusterConfig:
        if not self.config_path.exists():
            raise ClusterError(f"no cluster in {self.state_dir} (run `akidb-embed cluster up`)")
        return ClusterConfig.load(self.config_path)

    @property
    def server(self) -> str:
        return self.config().server

    # -- configuration ----------------------------------------------------------------------
    def _ensure_config(self) -> ClusterConfig:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            cfg = ClusterConfig.load(self.config_path)
        else:
            taken: set[int] = set()
            cfg = ClusterConfig(
                node_name=self._node_name,
                etcd_port=_free_port(taken),
                etcd_peer_port=_free_port(taken),
                apiserver_port=_free_port(taken),
                controller_manager_port=_free_port(taken),
                scheduler_port=_free_port(taken),
            )
        # State from before the real node: its pod subnet was a loopback range.
        cfg.pod_subnet = node.POD_SUBNET
        cfg.save(self.config_path)
        return cfg

    def _write_kubeconfig(self, path: Path, cfg: ClusterConfig, who: str) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        pki = self.pki_dir
        data = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "akidb-dev",
                    "cluster": {
                        "server": cfg.server,
                        "certificate-authority-data": b64(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": who,
                    "user": {
                        "client-certificate-data": b64(pki / f"{who}.crt"),
                        "client-key-data": b64(pki / f"{who}.key"),
                    },
                }
            ],
            "contexts": [{"name": "akidb-dev", "context": {"cluster": "akidb-dev", "user": who}}],
            "current-context": "akidb-dev",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML; every Kubernetes client reads it.
        path.write_text(json.dumps(data, indent=2) + "\n")
        path.chmod(0o600)

    # -- component command lines -------------------------------------------------------------
    def _argv(self, component: str, cfg: ClusterConfig) -> list[str]:
        b = build.bin_dir(cfg.kube_version)
        pki = self.pki_dir
        kc = self.state_dir / "kubeconfig"
        if component == "etcd":
            return [
                str(b / "etcd"),
                "--name=akidb-dev",
                f"--data-dir={self.state_dir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{cfg.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{cfg.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
                f"--initial-cluster=akidb-dev=http://127.0.0.1:{cfg.etcd_peer_port}",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ]
        if component == "kube-apiserver":
            return [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{cfg.etcd_port}",
                # On the veth's host end: pods reach it through the `kubernetes` Service,
                # whose endpoint is this advertised address (lease endpoint reconciler).
                f"--bind-address={node.HOST_IP}",
                f"--advertise-address={node.HOST_IP}",
                f"--secure-port={cfg.apiserver_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                # Only so controllers find a request-header CA; no front-proxy cert exists.
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={cfg.service_cidr}",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # `kubectl logs/exec` go through the kubelet's API on the node IP.
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                "--v=1",
            ]
        if component in ("kube-controller-manager", "kube-scheduler"):
            short = "controller-manager" if component == "kube-controller-manager" else "scheduler"
            kubeconfig = kc / f"{short}.kubeconfig"
            argv = [
                str(b / component),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--v=1",
            ]
            if component == "kube-scheduler":
                return [*argv, f"--secure-port={cfg.scheduler_port}"]
            return [
                *argv,
                f"--secure-port={cfg.controller_manager_port}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={cfg.service_cidr}",
            ]
        if component in node.COMPONENTS:
            return node.argv(component, self.node_paths, cfg.node_name, kc)
        raise ValueError(component)

    def _component_port(self, component: str, cfg: ClusterConfig) -> int | None:
        return {
            "etcd": cfg.etcd_port,
            "kube-apiserver": cfg.apiserver_port,
            "kube-controller-manager": cfg.controller_manager_port,
            "kube-scheduler": cfg.scheduler_port,
        }.get(component)

    # -- processes --------------------------------------------------------------------------
    def _record(self, component: str) -> procs.PidRecord | None:
        return procs.PidRecord.load(self.pid_path(component))

    def _running(self, component: str) -> procs.PidRecord | None:
        rec = self._record(component)
        return rec if rec is not None and rec.alive() else None

    def _start(self, component: str, cfg: ClusterConfig, progress: Progress) -> bool:
        """Start `component` unless it is running; True if it was started now."""
        if self._running(component):
            return False
        port = self._component_port(component, cfg)
        if port and _port_busy(port):
            raise ClusterError(
                f"cannot start {component}: port {port} (stored in {self.config_path}) is "
                "used by another process. Stop that process, or remove this cluster with "
                "`akidb-embed cluster down --purge` and bring up a fresh one."
            )
        argv = self._argv(component, cfg)
        env = node.component_env()
        pid = procs.spawn_detached(argv, self.log_path(component), env, self.state_dir)
        procs.PidRecord.of(pid, argv[0]).save(self.pid_path(component))
        progress(f"  started {component} (pid {pid})")
        return True

    def _wait(self, what: str, component: str, check: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            if not self._running(component):
                raise ClusterError(
                    f"{component} exited while waiting for {what}; see {self.log_path(component)}:"
                    f"\n{_tail(self.log_path(component))}"
                )
            time.sleep(0.3)
        raise ClusterError(
            f"timed out after {timeout_s:.0f}s waiting for {what}; see "
            f"{self.log_path(component)}:\n{_tail(self.log_path(component))}"
        )

    # -- API access (stdlib only, so the CLI stays light) -----------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return ctx

    def api_get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """GET `path` from the API server as admin; (status, body), status 0 if unreachable."""
        try:
            cfg = self.config()
            with urllib.request.urlopen(
                cfg.server + path, context=self._ssl(), timeout=timeout_s
            ) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, ClusterError, ssl.SSLError):
            return 0, b""

    def _etcd_healthy(self, cfg: ClusterConfig) -> bool:
        try:
            url = f"http://127.0.0.1:{cfg.etcd_port}/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def node_ready(self) -> bool | None:
        """True once the node is Ready and schedulable (no not-ready/unreachable taint)."""
        code, body = self.api_get(f"/api/v1/nodes/{self.config().node_name}")
        if code != 200:
            return None
        node = json.loads(body)
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints", []) or []
        stale = any(t["key"].startswith(_UNHEALTHY_TAINTS) for t in taints)
        return ready and not stale

    # -- public API -------------------------------------------------------------------------
    def _cluster_alive(self, state_dir: Path) -> bool:
        """Does any component recorded in `state_dir` still run (the machine lock's test)?"""
        other = DevCluster(state_dir)
        return any(other._running(c) for c in COMPONENTS)

    def _kubectl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run(
            [str(build.kubectl_path()), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args[:2])} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _write_credentials(self, cfg: ClusterConfig) -> None:
        from akidb_embed.devcluster import pki

        pki.ensure_pki(
            self.pki_dir,
            ["127.0.0.1", node.HOST_IP, KUBERNETES_SERVICE_IP],
            [node.NODE_IP],
            node_name=cfg.node_name,
        )
        self._write_kubeconfig(self.kubeconfig, cfg, "admin")
        for who in ("controller-manager", "scheduler", "node", "kube-proxy", "kube-router"):
            self._write_kubeconfig(self.kubeconfig_dir / f"{who}.kubeconfig", cfg, who)

    def _node_healthy(self) -> bool:
        return node.netns_exists() and all(self._running(c) for c in node.COMPONENTS)

    def _holds_node(self) -> bool:
        owner = node.lock_owner()
        return owner is None or owner.resolve() == self.state_dir.resolve()

    def _stop_node(self, progress: Progress) -> None:
        """Stop the node's components and remove everything the node made (only what is
        this folder's when another cluster holds the machine's node now)."""
        for component in ("kube-router", "kube-proxy", "kubelet"):
            self._stop(component, progress)
        if self._running("containerd"):
            node.remove_pods(self.node_paths, progress)
        self._stop("containerd", progress)
        node.cleanup(self.node_paths, progress, machine_wide=self._holds_node())

    def _stop_control_plane(self, progress: Progress) -> None:
        for component in reversed(CONTROL_PLANE):
            self._stop(component, progress)

    def _stop(self, component: str, progress: Progress) -> None:
        rec = self._record(component)
        if rec is not None and procs.stop(rec, grace_s=10):
            progress(f"  stopped {component} (pid {rec.pid})")
        self.pid_path(component).unlink(missing_ok=True)

    def up(self, progress: Progress = _stderr, timeout_s: float = 240.0) -> ClusterStatus:
        """Bring the cluster up (building binaries if needed); reuse what is running."""
        started = time.monotonic()
        node.check_machine()
        cfg = self._ensure_config()
        build.ensure_binaries(cfg.kube_version, progress=progress)
        build.ensure_node_binaries(cfg.kube_version, progress=progress)
        previous = node.lock_owner()
        node.take_lock(self.state_dir, self._cluster_alive)
        if previous is not None and previous.resolve() != self.state_dir.resolve():
            # Leftovers of a cluster that died without `down` (its names are ours now).
            node.cleanup(node.NodePaths(previous), progress)
        if not self._node_healthy():
            # Level-triggered repair: a half-dead node (kill -9, reboot) is rebuilt whole.
            self._stop_node(progress)
        node.ensure_network()
        node.ensure_cgroup_root()
        self._write_credentials(cfg)

        progress(f"bringing up the local cluster in {self.state_dir} ...")
        self._start("etcd", cfg, progress)
        self._wait("etcd", "etcd", lambda: self._etcd_healthy(cfg), 60)
        self._start("kube-apiserver", cfg, progress)
        self._wait(
            "the API server's /readyz",
            "kube-apiserver",
            lambda: self.api_get("/readyz")[0] == 200,
            timeout_s,
        )
        self._kubectl("apply", "-f", "-", input=BOOTSTRAP_RBAC)
        for component in ("kube-controller-manager", "kube-scheduler"):
            self._start(component, cfg, progress)

        node.write_configs(self.node_paths, cfg.node_name, self.pki_dir, self.kubeconfig_dir)
        self._start("containerd", cfg, progress)
        self._wait(
            "containerd's socket",
            "containerd",
            lambda: node.ctr(self.node_paths, "version", check=False).returncode == 0,
            60,
        )
        node.import_local_images(self.node_paths)
        for component in ("kubelet", "kube-proxy"):
            self._start(component, cfg, progress)
        self._wait(
            f"node {cfg.node_name} to be Ready", "kubelet", lambda: bool(self.node_ready()), 120
        )
        # kube-router looks its node up once at start: only after the kubelet registered it.
        self._start("kube-router", cfg, progress)
        self._wait("kube-router's firewall", "kube-router", node.firewall_ready, 60)
        # What a Jetson's device plugin would advertise (admin-patched, kept by the kubelet).
        extended = node.NODE_EXTENDED_RESOURCES
        capacity = json.dumps({"status": {"capacity": extended, "allocatable": extended}})
        self._kubectl(
            "patch", "node", cfg.node_name, "--subresource=status", "--type=merge", "-p", capacity
        )
        # Pods need the namespace's default ServiceAccount (made by the controller-manager).
        self._wait(
            "the default ServiceAccount",
            "kube-controller-manager",
            lambda: self.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            90,
        )
        progress(f"cluster up in {time.monotonic() - started:.1f}s: {cfg.server}")
        progress(f"  export KUBECONFIG={self.kubeconfig}")
        return self.status()

    def down(self, progress: Progress = _stderr, purge: bool = False) -> None:
        """Stop every process this cluster started and remove what its node made."""
        if os.geteuid() == 0:
            self._stop_node(progress)
            node.release_lock(self.state_dir)
        else:
            for component in reversed(node.COMPONENTS):
                self._stop(component, progress)
        self._stop_control_plane(progress)
        if purge and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
            progress(f"  removed {self.state_dir}")

    def status(self) -> ClusterStatus:
        components = []
        for name in COMPONENTS:
            rec = self._running(name)
            components.append(
                ComponentStatus(
                    name, rec is not None, rec.pid if rec else None, self.log_path(name)
                )
            )
        cfg = ClusterConfig.load(self.config_path) if self.config_path.exists() else None
        ready = bool(cfg) and self.api_get("/readyz", timeout_s=2)[0] == 200
        return ClusterStatus(
            state_dir=self.state_dir,
            server=cfg.server if cfg else None,
            kubeconfig=self.kubeconfig,
            components=components,
            ready=ready,
            node_name=cfg.node_name if cfg else self._node_name,
            node_ready=self.node_ready() if ready else None,
        )

    def env(self) -> dict[str, str]:
        """Environment for clients (kubectl, kopf, kubernetes-asyncio) of this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def kubectl_path(version: str = build.KUBE_VERSION) -> Path:
    return build.kubectl_path(version)
