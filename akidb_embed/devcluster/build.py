"""Build the upstream Kubernetes binaries (control plane and node) from the Go module proxy.

`k8s.io/kubernetes` cannot be `go install`ed: its go.mod requires every staging module
at v0.0.0 and replaces it with a ./staging path that is not in the module zip. So we
generate a wrapper module (in the cache folder, never in this repo) whose go.mod
replaces each staging module with the published v0.X.Y that matches v1.X.Y, and build
the cmd packages from there. etcd gets its own wrapper so neither raises the other's
dependency versions. Results are cached per user, keyed by version.

The node (see node.py) needs more: kubelet and kube-proxy from the same kind of wrapper,
containerd (+ its runc shim and ctr), crictl and kube-router, each from its own wrapper
module, built as static binaries (CGO_ENABLED=0) into `node-bin/`, one stamp per group,
so a failed group is retried alone and the control plane is never rebuilt for the node.
runc and the CNI plugins come from Debian (see the Makefile's `node-packages`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = ("etcd", *KUBE_COMPONENTS)

CONTAINERD_VERSION = "v2.2.9"
CRI_TOOLS_VERSION = "v1.37.0"
KUBE_ROUTER_VERSION = "v2.1.0"


@dataclass(frozen=True)
class NodeGroup:
    """Node binaries built together from one wrapper module."""

    name: str
    module: str
    version: str
    # cmd package -> binary name
    packages: tuple[tuple[str, str], ...]
    tags: str = ""
    ldflags: str = "-s -w"
    # Extra `require` lines for the wrapper go.mod (dependency bumps the build needs).
    bumps: tuple[tuple[str, str], ...] = ()

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(b for _, b in self.packages)

    @property
    def key(self) -> str:
        return f"{self.module}@{self.version} {self.tags} {self.bumps}"


NODE_GROUPS = (
    # kubelet/kube-proxy need the Kubernetes wrapper go.mod: built by _build_kube_node.
    NodeGroup(
        "kubelet",
        "k8s.io/kubernetes",
        KUBE_VERSION,
        (
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
            ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
        ),
    ),
    NodeGroup(
        "containerd",
        "github.com/containerd/containerd/v2",
        CONTAINERD_VERSION,
        (
            ("github.com/containerd/containerd/v2/cmd/containerd", "containerd"),
            (
                "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
                "containerd-shim-runc-v2",
            ),
            ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
        ),
        tags="no_btrfs no_devmapper no_zfs",
        ldflags=(
            f"-s -w -X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}"
        ),
    ),
    NodeGroup(
        "crictl",
        "sigs.k8s.io/cri-tools",
        CRI_TOOLS_VERSION,
        (("sigs.k8s.io/cri-tools/cmd/crictl", "crictl"),),
        ldflags=f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={CRI_TOOLS_VERSION}",
    ),
    NodeGroup(
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2",
        KUBE_ROUTER_VERSION,
        (("github.com/cloudnativelabs/kube-router/v2/cmd/kube-router", "kube-router"),),
        ldflags=(
            "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version="
            f"{KUBE_ROUTER_VERSION}"
        ),
    ),
)
NODE_BINARIES = tuple(b for g in NODE_GROUPS for b in g.binaries)

# Where Go usually lives when it is not on PATH.
_GO_FALLBACKS = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """The binaries could not be built; the message says why and what to do."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "akidb-embed" / "kube"


def cache_dir(version: str = KUBE_VERSION) -> Path:
    return cache_root() / version


def bin_dir(version: str = KUBE_VERSION) -> Path:
    return cache_dir(version) / "bin"


def _stamp(version: str) -> Path:
    return cache_dir(version) / "complete"


def binary_path(name: str, version: str = KUBE_VERSION) -> Path:
    return bin_dir(version) / name


def kubectl_path(version: str = KUBE_VERSION) -> Path:
    """The kubectl built for the pinned release (build it first with `ensure_binaries`)."""
    return binary_path("kubectl", version)


def node_bin_dir(version: str = KUBE_VERSION) -> Path:
    return cache_dir(version) / "node-bin"


def node_binary_path(name: str, version: str = KUBE_VERSION) -> Path:
    return node_bin_dir(version) / name


def _node_stamp(group: NodeGroup, version: str) -> Path:
    return node_bin_dir(version) / f".{group.name}.done"


def _node_group_built(group: NodeGroup, version: str) -> bool:
    stamp = _node_stamp(group, version)
    return (
        stamp.is_file()
        and stamp.read_text().splitlines()[:1] == [group.key]
        and all(os.access(node_binary_path(b, version), os.X_OK) for b in group.binaries)
    )


def node_is_built(version: str = KUBE_VERSION) -> bool:
    return all(_node_group_built(g, version) for g in NODE_GROUPS)


def is_built(version: str = KUBE_VERSION) -> bool:
    return _stamp(version).is_file() and all(
        os.access(binary_path(b, version), os.X_OK) for b in BINARIES
    )


def find_go() -> str:
    found = shutil.which("go")
    if found:
        return found
    for candidate in _GO_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BuildError(
        "Go is not installed (no `go` on PATH nor in /usr/local/go/bin). The local cluster "
        "builds etcd and the Kubernetes control plane from source; install Go >= 1.26 from "
        "https://go.dev/dl/ and run `akidb-embed cluster build` again."
    )


def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _go_env(go: str) -> dict[str, str]:
    env = dict(os.environ)
    # The generated wrapper modules are not in a VCS checkout.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -buildvcs=false").strip()
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = "0"
    env["PATH"] = str(Path(go).parent) + os.pathsep + env.get("PATH", "")
    return env


def _run_go(
    go: str,
    args: list[str],
    cwd: Path,
    progress: Progress,
    what: str,
    count_lines: bool = False,
) -> str:
    """Run `go ...` niced, relaying progress; raise BuildError with the tail of its output."""
    cmd = ["nice", "-n", "10", go, *args] if shutil.which("nice") else [go, *args]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_go_env(go),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    started = time.monotonic()
    last_report = started
    for line in proc.stdout:
        lines.append(line.rstrip())
        now = time.monotonic()
        if now - last_report >= 15:
            last_report = now
            detail = f"{len(lines)} packages" if count_lines else lines[-1][:100]
            progress(f"  {what}: {int(now - started)}s, {detail}")
    rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-30:])
        hint = ""
        if re.search(r"proxy\.golang\.org|dial tcp|no such host|timeout", tail):
            hint = (
                "\nThe Go module proxy looks unreachable; check your network or GOPROXY "
                f"(currently {os.environ.get('GOPROXY', 'https://proxy.golang.org,direct')})."
            )
        raise BuildError(f"{what} failed (go {' '.join(args[:2])} ..., exit {rc}):\n{tail}{hint}")
    return "\n".join(lines)


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """Module paths that the kubernetes go.mod replaces with ./staging directories."""
    found = re.findall(r"^\s*(\S+)\s+=>\s+\./staging/\S+", kubernetes_go_mod, re.MULTILINE)
    return sorted(set(found))


def staging_version(kube_version: str) -> str:
    major, minor, patch = kube_version.lstrip("v").split(".")[:3]
    if major != "1":
        raise BuildError(f"unexpected Kubernetes version {kube_version}")
    return f"v0.{minor}.{patch}"


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    build_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return " ".join(flags)


def _fetch_kubernetes_go_mod(go: str, work: Path, version: str, progress: Progress) -> str:
    out = _run_go(
        go,
        ["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        work,
        progress,
        f"downloading k8s.io/kubernetes {version}",
    )
    match = re.search(r'"GoMod":\s*"([^"]+)"', out)
    if not match:
        raise BuildError(f"`go mod download` did not report a go.mod for k8s.io/kubernetes:\n{out}")
    return Path(match.group(1)).read_text()


def _write_kube_wrapper(go: str, version: str, work: Path, progress: Progress) -> int:
    """Write the wrapper go.mod for k8s.io/kubernetes `version`; return #staging modules."""
    work.mkdir(parents=True, exist_ok=True)
    progress(f"fetching the go.mod of k8s.io/kubernetes {version} ...")
    # Outside any module, so the download does not touch a wrapper go.mod.
    go_mod = _fetch_kubernetes_go_mod(go, cache_dir(version), version, progress)
    modules = staging_modules(go_mod)
    if not modules:
        raise BuildError("found no staging modules in the kubernetes go.mod")
    staging = staging_version(version)
    replaces = "\n".join(f"\t{m} => {m} {staging}" for m in modules)
    (work / "go.mod").write_text(
        "// Generated by akidb-embed: builds upstream Kubernetes binaries. Do not edit.\n"
        "module akidb-embed.local/kubebuild\n\n"
        "go 1.26.0\n\n"
        f"require k8s.io/kubernetes {version}\n\n"
        f"replace (\n{replaces}\n)\n"
    )
    (work / "go.sum").unlink(missing_ok=True)
    return len(modules)


def _build_kube(go: str, version: str, out_dir: Path, progress: Progress) -> None:
    work = cache_dir(version) / "kube-wrapper"
    count = _write_kube_wrapper(go, version, work, progress)
    staging = staging_version(version)
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMPONENTS]
    progress(f"resolving dependencies ({count} staging modules at {staging}) ...")
    _run_go(go, ["get", *[f"{p}@{version}" for p in pkgs]], work, progress, "resolving modules")
    progress(f"compiling {', '.join(KUBE_COMPONENTS)} (the slow part) ...")
    _run_go(
        go,
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            _kube_ldflags(version),
            "-o",
            f"{out_dir}/",
            *pkgs,
        ],
        work,
        progress,
        "compiling Kubernetes",
        count_lines=True,
    )


def _build_etcd(
    go: str, version: str, etcd_version: str, out_dir: Path, progress: Progress
) -> None:
    work = cache_dir(version) / "etcd-wrapper"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        "// Generated by akidb-embed: builds upstream etcd. Do not edit.\n"
        "module akidb-embed.local/etcdbuild\n\n"
        "go 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {etcd_version}\n"
    )
    (work / "go.sum").unlink(missing_ok=True)
    progress(f"resolving etcd {etcd_version} ...")
    _run_go(
        go, ["get", f"go.etcd.io/etcd/server/v3@{etcd_version}"], work, progress, "etcd modules"
    )
    progress("compiling etcd ...")
    _run_go(
        go,
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out_dir / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        work,
        progress,
        "compiling etcd",
        count_lines=True,
    )


def _build_node_group(go: str, version: str, group: NodeGroup, progress: Progress) -> None:
    # Its own wrapper (not kube-wrapper): a control-plane build may run at the same time.
    work = cache_dir(version) / f"{group.name}-wrapper"
    if group.module == "k8s.io/kubernetes":
        _write_kube_wrapper(go, version, work, progress)
        ldflags = _kube_ldflags(version)
    else:
        work.mkdir(parents=True, exist_ok=True)
        bumps = "".join(f"require {m} {v}\n" for m, v in group.bumps)
        (work / "go.mod").write_text(
            f"// Generated by akidb-embed: builds {group.module}. Do not edit.\n"
            f"module akidb-embed.local/{group.name}build\n\n"
            "go 1.26.0\n\n"
            f"require {group.module} {group.version}\n{bumps}"
        )
        (work / "go.sum").unlink(missing_ok=True)
        ldflags = group.ldflags
    pkgs = [p for p, _ in group.packages]
    progress(f"resolving {group.module} {group.version} ...")
    _run_go(go, ["get", *[f"{p}@{group.version}" for p in pkgs]], work, progress, group.name)
    out = node_bin_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for pkg, binary in group.packages:
        progress(f"compiling {binary} ...")
        args = ["build", "-v", "-trimpath", "-ldflags", ldflags]
        if group.tags:
            args += ["-tags", group.tags]
        _run_go(
            go,
            [*args, "-o", str(out / f"{binary}.partial"), pkg],
            work,
            progress,
            f"compiling {binary}",
            count_lines=True,
        )
        (out / f"{binary}.partial").rename(out / binary)
    seconds = time.monotonic() - started
    _node_stamp(group, version).write_text(f"{group.key}\nbuild_seconds {seconds:.0f}\n")
    progress(f"built {', '.join(group.binaries)} in {seconds:.0f}s")


def ensure_node_binaries(
    version: str = KUBE_VERSION, progress: Progress = _print, force: bool = False
) -> Path:
    """Build (or reuse) kubelet, kube-proxy, containerd, crictl and kube-router."""
    out = node_bin_dir(version)
    if node_is_built(version) and not force:
        return out
    go = find_go()
    cache_dir(version).mkdir(parents=True, exist_ok=True)
    with (cache_dir(version) / "node-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for group in NODE_GROUPS:
            if force or not _node_group_built(group, version):
                _build_node_group(go, version, group, progress)
    return out


def ensure_binaries(
    version: str = KUBE_VERSION,
    etcd_version: str = ETCD_VERSION,
    progress: Progress = _print,
    force: bool = False,
) -> Path:
    """Build (or reuse) the binaries for `version`; return the folder holding them."""
    final = bin_dir(version)
    if is_built(version) and not force:
        return final
    go = find_go()
    cache_dir(version).mkdir(parents=True, exist_ok=True)
    with (cache_dir(version) / "build.lock").open("w") as lock:
        # Another process (a test session, `make demo`) may be building the same version.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build of Kubernetes {version} to finish ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
            if is_built(version) and not force:
                return final
        return _build_all(go, version, etcd_version, progress)


def _build_all(go: str, version: str, etcd_version: str, progress: Progress) -> Path:
    final = bin_dir(version)
    started = time.monotonic()
    progress(
        f"building etcd {etcd_version} and Kubernetes {version} from the Go module proxy into "
        f"{cache_dir(version)} (first time only; takes a while on few cores)"
    )
    partial = cache_dir(version) / "bin.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _build_etcd(go, version, etcd_version, partial, progress)
    _build_kube(go, version, partial, progress)
    missing = [b for b in BINARIES if not (partial / b).is_file()]
    if missing:
        raise BuildError(f"build finished but {', '.join(missing)} missing in {partial}")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    seconds = time.monotonic() - started
    _stamp(version).write_text(
        f"kubernetes {version}\netcd {etcd_version}\nbuild_seconds {seconds:.0f}\n"
    )
    progress(f"built in {seconds:.0f}s: {final}")
    progress(
        "  (Go's module and build caches, a few GB, are no longer needed: "
        "`go clean -cache -modcache` frees them)"
    )
    return final
