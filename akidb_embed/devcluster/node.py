"""The local cluster's node: upstream kubelet, containerd, kube-proxy and kube-router.

Everything node-side runs inside one network namespace, `akidb-node`, entered with
`nsenter --net` only (not `ip netns exec`, whose private mount namespace would hide the
kubelet's volume mounts from containerd):

    host                       | netns akidb-node
    akidb-h0 10.244.255.1/30 --+-- akidb-n0 10.244.255.2/30 (node InternalIP)
    route 10.244.0.0/24 and    |   bridge akidb0 10.244.0.1/24, pods 10.244.0.0/24
    10.96.0.0/16 via .255.2    |   (CNI bridge + host-local), Services 10.96.0.0/16
                               |   (kube-proxy, iptables mode), NetworkPolicy (kube-router)

The API server listens on 10.244.255.1, so pods reach it through the `kubernetes`
Service. Nothing leaves the machine: the namespace's only link is the veth to the host,
and the AKIDB-GUARD chain (mangle POSTROUTING, where neither kube-proxy nor kube-router
write) drops every packet not bound for 10.244.0.0/16, 10.96.0.0/16 or loopback.

There is one node per machine (the names and addresses above are fixed): the machine
lock /run/akidb-embed/node.json names the state folder that owns it. `cleanup()` removes
everything the node made, and is also what `up` runs first after a crash.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from akidb_embed.devcluster import build

NETNS = "akidb-node"
HOST_VETH = "akidb-h0"
NODE_VETH = "akidb-n0"
BRIDGE = "akidb0"
HOST_IP = "10.244.255.1"
NODE_IP = "10.244.255.2"
LINK_CIDR = "10.244.255.0/30"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CNI_NETWORK = "akidb-pods"
CGROUP_ROOT = "akidb-embed"
CGROUP_FS = Path("/sys/fs/cgroup")
GUARD_CHAIN = "AKIDB-GUARD"
PAUSE_IMAGE = "localhost/akidb-embed/pause:1"
TOOLBOX_IMAGE = "localhost/akidb-embed/toolbox:1"
BUSYBOX = Path("/bin/busybox")
NODE_LABELS = {
    "akidb.io/accelerator": "jetson-thor",
    "nvidia.com/gpu.product": "NVIDIA-Jetson-Thor",
}
# Extended resources the node advertises (what a Jetson's device plugin would).
NODE_EXTENDED_RESOURCES = {"nvidia.com/gpu": "1"}
MACHINE_LOCK = Path("/run/akidb-embed/node.json")
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
# Start order; stopped in reverse.
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "kube-router")
# Machine-wide paths the tools write whatever their configuration says.
_SHIM_SOCKETS = Path("/run/containerd/s")
_CNI_RESULTS = Path("/var/lib/cni/results")
_CONTAINER_LOG_LINKS = Path("/var/log/containers")

Progress = Callable[[str], None]

_PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void stop(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop); signal(SIGTERM, stop); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


class NodeError(RuntimeError):
    """The node could not be prepared or started; the message says what to do."""


def run(
    argv: list[str], check: bool = True, netns: bool = False
) -> subprocess.CompletedProcess[str]:
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{NETNS}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_machine() -> None:
    """Fail clearly when this machine cannot run the node."""
    if os.geteuid() != 0:
        raise NodeError(
            "the local node (kubelet, containerd, network namespaces) needs root; run as root"
        )
    missing: list[str | Path] = [
        p
        for p in (
            RUNC,
            CNI_BIN_DIR / "bridge",
            CNI_BIN_DIR / "host-local",
            CNI_BIN_DIR / "loopback",
        )
        if not os.access(p, os.X_OK)
    ]
    missing += [
        t for t in ("iptables", "ipset", "ip", "nsenter", "gcc", "busybox") if not shutil.which(t)
    ]
    if missing:
        raise NodeError(
            f"missing on this machine: {', '.join(map(str, missing))}. Install the Debian "
            "packages with `make node-packages` (runc containernetworking-plugins iptables "
            "ipset iproute2 gcc libc6-dev busybox-static)."
        )


@dataclass
class NodePaths:
    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "node"

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def pod_logs(self) -> Path:
        return self.state_dir / "logs" / "pods"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def crictl_config(self) -> Path:
        return self.root / "crictl.yaml"


# -- machine lock ---------------------------------------------------------------------------
def lock_owner() -> Path | None:
    try:
        return Path(json.loads(MACHINE_LOCK.read_text())["state_dir"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def take_lock(state_dir: Path, owner_alive: Callable[[Path], bool]) -> None:
    """Claim the machine's node for `state_dir`; refuse while another live cluster holds it."""
    owner = lock_owner()
    if owner is not None and owner.resolve() != state_dir.resolve() and owner_alive(owner):
        raise NodeError(
            f"the machine's node is used by the cluster in {owner} (one node per machine: "
            f"fixed netns {NETNS} and addresses). Stop it with "
            f"`akidb-embed cluster down --state-dir {owner}`, then retry."
        )
    MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    MACHINE_LOCK.write_text(json.dumps({"state_dir": str(state_dir.resolve())}) + "\n")


def release_lock(state_dir: Path) -> None:
    owner = lock_owner()
    if owner is not None and owner.resolve() == state_dir.resolve():
        MACHINE_LOCK.unlink(missing_ok=True)


# -- network --------------------------------------------------------------------------------
def _link_exists(name: str, netns: bool = False) -> bool:
    return run(["ip", "link", "show", name], check=False, netns=netns).returncode == 0


def netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def ensure_network() -> None:
    """Create (or complete) the netns, veth pair, host routes and the guard. Idempotent."""
    if not netns_exists():
        run(["ip", "netns", "add", NETNS])
    if not _link_exists(HOST_VETH):
        run(["ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH])
        run(["ip", "link", "set", NODE_VETH, "netns", NETNS])
    run(["ip", "addr", "replace", f"{HOST_IP}/30", "dev", HOST_VETH])
    run(["ip", "link", "set", HOST_VETH, "up"])
    run(["ip", "addr", "replace", f"{NODE_IP}/30", "dev", NODE_VETH], netns=True)
    run(["ip", "link", "set", NODE_VETH, "up"], netns=True)
    run(["ip", "link", "set", "lo", "up"], netns=True)
    # Every non-local packet goes to the host side, where the guard has already dropped
    # anything not for the cluster; components that look for a default route find one.
    run(["ip", "route", "replace", "default", "via", HOST_IP], netns=True)
    for cidr in (POD_SUBNET, SERVICE_CIDR):
        run(["ip", "route", "replace", cidr, "via", NODE_IP, "dev", HOST_VETH])
    for key in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"):
        run(["sysctl", "-qw", key], netns=True)
    _ensure_guard()


def _ensure_guard() -> None:
    ipt = ["iptables", "-w", "-t", "mangle"]
    if run([*ipt, "-L", GUARD_CHAIN, "-n"], check=False, netns=True).returncode != 0:
        run([*ipt, "-N", GUARD_CHAIN], netns=True)
    run([*ipt, "-F", GUARD_CHAIN], netns=True)
    for rule in (
        ["-o", "lo", "-j", "RETURN"],
        ["-d", CLUSTER_CIDR, "-j", "RETURN"],
        ["-d", SERVICE_CIDR, "-j", "RETURN"],
        ["-d", "127.0.0.0/8", "-j", "RETURN"],
        ["-j", "DROP"],
    ):
        run([*ipt, "-A", GUARD_CHAIN, *rule], netns=True)
    jump = ["POSTROUTING", "-j", GUARD_CHAIN]
    if run([*ipt, "-C", *jump], check=False, netns=True).returncode != 0:
        run([*ipt, "-I", *jump], netns=True)


def firewall_ready() -> bool:
    """kube-router's NetworkPolicy firewall has synced (its top-level chain is hooked in)."""
    out = run(["iptables", "-w", "-S", "FORWARD"], check=False, netns=True).stdout
    return "KUBE-ROUTER-FORWARD" in out


def guard_drops() -> int:
    """Packets the guard has dropped so far (its final DROP rule's counter)."""
    out = run(
        ["iptables", "-w", "-t", "mangle", "-L", GUARD_CHAIN, "-n", "-v", "-x"], netns=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP":
            return int(fields[0])
    raise NodeError(f"no DROP rule in {GUARD_CHAIN}:\n{out}")


# -- cgroups --------------------------------------------------------------------------------
def _cgroup_hierarchies() -> list[Path]:
    """The machine's cgroup hierarchies (one folder per mounted controller set)."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            # v1 controllers, and the v2 "unified" tree of a hybrid machine (runc uses it).
            if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2"):
                found.append(Path(fields[1]))
    return found


def ensure_cgroup_root() -> None:
    """The kubelet wants its --cgroup-root to exist in every hierarchy."""
    for h in _cgroup_hierarchies():
        ours = h / CGROUP_ROOT
        ours.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # empty cpusets admit no task
            if (h / knob).exists() and not (ours / knob).read_text().strip():
                (ours / knob).write_text((h / knob).read_text())


def _remove_cgroups() -> list[str]:
    done = []
    for h in _cgroup_hierarchies():
        ours = h / CGROUP_ROOT
        if not ours.is_dir():
            continue
        dirs = sorted((p for p in ours.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, ours]:
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        done.append(str(ours))
    return done


# -- configuration --------------------------------------------------------------------------
def write_configs(paths: NodePaths, node_name: str, pki_dir: Path, kubeconfigs: Path) -> None:
    for d in (paths.containerd_dir, paths.kubelet_dir, paths.cni_conf_dir, paths.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    c = paths.containerd_dir
    paths.containerd_config.write_text(
        f"""# Generated by akidb-embed (devcluster/node.py).
version = 3
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{paths.containerd_socket}"

[ttrpc]
  address = "{paths.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # The machine withholds CAP_SYS_RESOURCE: runc must not raise oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{paths.cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
    )
    cni = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_ipam_dir),
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_SUBNET[:-4] + "1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
        ],
    }
    (paths.cni_conf_dir / "10-akidb.conflist").write_text(json.dumps(cni, indent=2) + "\n")
    paths.crictl_config.write_text(
        f"runtime-endpoint: unix://{paths.containerd_socket}\n"
        f"image-endpoint: unix://{paths.containerd_socket}\ntimeout: 30\n"
    )
    sock = f"unix://{paths.containerd_socket}"
    kubelet = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine mounts cgroup v1; the kubelet refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki_dir / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki_dir / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "podLogsDir": str(paths.pod_logs),
        # No CoreDNS: nothing here resolves cluster names (see docs/LOCAL-CLUSTER.md).
        "clusterDNS": [],
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        # A small shared disk must not make the node evict pods or delete images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "registerNode": True,
    }
    paths.kubelet_config.write_text(json.dumps(kubelet, indent=2) + "\n")


def argv(component: str, paths: NodePaths, node_name: str, kubeconfigs: Path) -> list[str]:
    """The command line of a node component (run inside the node's netns)."""
    b = build.node_bin_dir()
    ns = ["nsenter", f"--net=/run/netns/{NETNS}"]
    if component == "containerd":
        return [*ns, str(b / "containerd"), "--config", str(paths.containerd_config)]
    if component == "kubelet":
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        return [
            *ns,
            str(b / "kubelet"),
            f"--config={paths.kubelet_config}",
            f"--kubeconfig={kubeconfigs / 'node.kubeconfig'}",
            f"--root-dir={paths.kubelet_dir}",
            f"--hostname-override={node_name}",
            f"--node-ip={NODE_IP}",
            f"--node-labels={labels}",
            "--v=1",
        ]
    if component == "kube-proxy":
        return [
            *ns,
            str(b / "kube-proxy"),
            f"--kubeconfig={kubeconfigs / 'kube-proxy.kubeconfig'}",
            f"--hostname-override={node_name}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--nodeport-addresses={NODE_IP}/32",
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
            # Leave the machine's conntrack sysctls alone.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--v=1",
        ]
    if component == "kube-router":
        return [
            *ns,
            str(b / "kube-router"),
            f"--kubeconfig={kubeconfigs / 'kube-router.kubeconfig'}",
            f"--hostname-override={node_name}",
            # Only the NetworkPolicy firewall: routing is the bridge, Services kube-proxy.
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--enable-cni=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--metrics-port=0",
            "--health-port=20244",
            "--v=1",
        ]
    raise ValueError(component)


def component_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    # containerd finds its shim, kube-router ipset/iptables, on PATH.
    env["PATH"] = os.pathsep.join(
        [str(build.node_bin_dir()), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    return env


# -- local images (no registry, no builder) --------------------------------------------------
# Symlinked busybox applets in the toolbox image (what tests and diagnostics use).
_TOOLBOX_APPLETS = (
    "sh", "cat", "echo", "id", "ls", "mkdir", "nc", "httpd", "wget", "sleep", "touch",
    "ps", "readlink", "grep", "ip", "hostname", "true", "false", "env", "timeout", "kill",
    "ping", "test", "printf",
)  # fmt: skip


def _tar_bytes(
    files: dict[str, tuple[bytes, int]],
    links: dict[str, str] | None = None,
    dirs: dict[str, int] | None = None,
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (dirs or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(info)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def write_oci_archive(out: Path, ref: str, layer_tar: bytes, config: dict[str, object]) -> Path:
    """One-layer OCI image archive, written by hand; byte-stable for the same input, so
    re-importing an unchanged image is a no-op for containerd."""
    layer = gzip.compress(layer_tar, mtime=0)
    config_blob = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [_sha(layer_tar)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _sha(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    ).encode()
    blobs = {f"blobs/sha256/{_sha(b)[7:]}": (b, 0o644) for b in (layer, config_blob, manifest)}
    files = {
        "oci-layout": (b'{"imageLayoutVersion": "1.0.0"}', 0o644),
        "index.json": (index, 0o644),
        **blobs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_bytes(_tar_bytes(files))
    tmp.rename(out)
    return out


def build_pause_archive(out: Path) -> Path:
    """The sandbox image: a static C program (gcc -static) that waits for signals."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src, binary = out.with_suffix(".c"), out.with_suffix(".bin")
    src.write_text(_PAUSE_C)
    run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(src)])
    layer = _tar_bytes({"pause": (binary.read_bytes(), 0o755)})
    return write_oci_archive(out, PAUSE_IMAGE, layer, {"Entrypoint": ["/pause"], "User": "65535"})


def toolbox_key() -> str:
    """Content key of the toolbox image: a changed busybox or applet list, a new archive."""
    digest = hashlib.sha256(" ".join(_TOOLBOX_APPLETS).encode())
    with contextlib.suppress(OSError):
        digest.update(BUSYBOX.read_bytes())
    return digest.hexdigest()[:12]


def build_toolbox_archive(out: Path) -> Path:
    """A tiny image of Debian's static busybox (sh, nc, httpd, wget, ...) for tests."""
    if out.is_file():
        return out
    if not os.access(BUSYBOX, os.X_OK):
        raise NodeError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    layer = _tar_bytes(
        {"bin/busybox": (BUSYBOX.read_bytes(), 0o755)},
        links={f"bin/{a}": "busybox" for a in _TOOLBOX_APPLETS},
        dirs={"bin": 0o755, "tmp": 0o1777, "etc": 0o755},
    )
    return write_oci_archive(out, TOOLBOX_IMAGE, layer, {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})


def ctr_binary() -> Path:
    return build.node_binary_path("ctr")


def ctr(paths: NodePaths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        [
            str(build.node_binary_path("ctr")),
            "--address",
            str(paths.containerd_socket),
            "-n",
            "k8s.io",
            *args,
        ],
        check=check,
    )


def crictl(paths: NodePaths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        [str(build.node_binary_path("crictl")), "--config", str(paths.crictl_config), *args],
        check=check,
    )


def import_local_images(paths: NodePaths) -> None:
    """The pause (sandbox) and toolbox images into containerd's k8s.io namespace."""
    for archive in (
        build_pause_archive(paths.images_dir / "pause.oci.tar"),
        build_toolbox_archive(paths.images_dir / f"toolbox-{toolbox_key()}.oci.tar"),
    ):
        ctr(paths, "images", "import", str(archive))
    make_visible_to_cri(paths, [PAUSE_IMAGE, TOOLBOX_IMAGE])


def cri_image_refs(paths: NodePaths) -> set[str]:
    """The image names containerd's CRI plugin (what the kubelet asks) knows."""
    proc = crictl(paths, "images", "-o", "json", check=False)
    if proc.returncode != 0:
        return set()
    return {
        tag
        for image in json.loads(proc.stdout).get("images", [])
        for tag in image.get("repoTags") or []
    }


def make_visible_to_cri(paths: NodePaths, refs: list[str], timeout_s: float = 60) -> None:
    """Wait until the CRI lists every ref, re-labelling the ones it lacks.

    The CRI plugin learns of `ctr` imports from containerd's events, and an event sent
    while the plugin is still starting is lost: the kubelet then reports ErrImageNeverPull
    for an image `ctr` lists. A label update is a new event for that name."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = sorted(set(refs) - cri_image_refs(paths))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise NodeError(
                f"containerd's CRI does not list {', '.join(missing)} "
                f"{timeout_s:.0f}s after the import (see the containerd log)"
            )
        for ref in missing:
            ctr(paths, "images", "label", ref, f"akidb.io/cri-sync={time.time_ns()}", check=False)
        time.sleep(1)


# -- cleanup --------------------------------------------------------------------------------
def _mounts_under(prefixes: list[Path]) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
                found.append(point)
    return found


def _unmount_all(prefixes: list[Path]) -> int:
    count = 0
    for _ in range(5):  # nested and stacked mounts come off in rounds
        points = _mounts_under(prefixes)
        if not points:
            break
        for point in sorted(points, key=lambda p: -len(p)):
            if run(["umount", "-l", point], check=False).returncode == 0:
                count += 1
    return count


def _our_processes(paths: NodePaths) -> list[int]:
    """Processes of this state folder's node: its shims (named by its containerd socket)
    and components (their configs live under it). Never another cluster's."""
    needles = [str(paths.containerd_socket), f"{paths.root}/"]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(n in cmd for n in needles):
                pids.append(int(proc.name))
    return pids


def remove_pods(paths: NodePaths, progress: Progress) -> None:
    """While containerd runs, let it tear the pods down (CNI DEL frees their IPs)."""
    if crictl(paths, "rmp", "-fa", check=False).returncode == 0:
        progress("  removed the node's pods (crictl rmp -fa)")


def cleanup(paths: NodePaths, progress: Progress, machine_wide: bool = True) -> None:
    """Remove everything the node made; safe to run at any time, any number of times.

    `machine_wide=False` removes only what belongs to this state folder (processes,
    mounts, scratch): for a cluster that no longer holds the machine's node, whose netns,
    cgroups and shared paths now belong to the lock's owner.
    """
    for pid in _our_processes(paths):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if machine_wide:
        cgroups = _remove_cgroups()
        if cgroups:
            progress(f"  removed cgroups {', '.join(cgroups)}")
    unmounted = _unmount_all([paths.root])
    if unmounted:
        progress(f"  unmounted {unmounted} mounts under {paths.root}")
    if machine_wide:
        _cleanup_machine(paths, progress)
    # Scratch of the containerd state (sockets, netns mounts) goes; images stay cached.
    # Never recurse through something still mounted (a rootfs could hold a volume).
    if not _mounts_under([paths.containerd_dir / "state"]):
        shutil.rmtree(paths.containerd_dir / "state", ignore_errors=True)
    paths.containerd_socket.unlink(missing_ok=True)


def _cleanup_machine(paths: NodePaths, progress: Progress) -> None:
    """The machine-wide part: netns, veth, and what the tools put in fixed paths."""
    if netns_exists():
        # Takes the veth pair, the bridge, the routes and every iptables rule with it.
        run(["ip", "netns", "del", NETNS], check=False)
        progress(f"  removed netns {NETNS} (veth, bridge, iptables rules)")
    if _link_exists(HOST_VETH):
        run(["ip", "link", "del", HOST_VETH], check=False)
    with contextlib.suppress(OSError):
        for entry in _CNI_RESULTS.iterdir():
            if entry.name.startswith(f"{CNI_NETWORK}-"):
                entry.unlink()
    with contextlib.suppress(OSError):
        for link in _CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and str(os.readlink(link)).startswith(str(paths.pod_logs)):
                link.unlink()
    with contextlib.suppress(OSError):
        for sock in _SHIM_SOCKETS.iterdir():
            # Shim sockets are named by a hash; ours are the ones nobody listens on now.
            if run(["ss", "-xlH", "src", str(sock)], check=False).stdout.strip() == "":
                sock.unlink()
