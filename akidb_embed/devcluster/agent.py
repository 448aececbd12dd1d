"""The local node agent: plays the kubelet for one simulated Jetson Thor node.

It registers the Node, keeps its Lease and Ready condition fresh, and runs each pod
bound to the node as local processes (container command + args; the image is ignored):
own 127.x pod IP, env with the downward API and $(VAR) expansion, a kubeconfig for the
pod's ServiceAccount token, probes, restarts with back-off, status reports, and SIGTERM
then SIGKILL on deletion. NodePort Services and hostPorts are forwarded from host
addresses (see proxy.py). Started by `akidb-embed cluster up`; run it by hand with
`python -m akidb_embed.devcluster.agent --state-dir DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import functools
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from akidb_embed.devcluster import agent_state, kubelet_api, podspec, procs
from akidb_embed.devcluster.cluster import ClusterConfig
from akidb_embed.devcluster.kubeapi import ApiError, KubeApi, Obj, reflect
from akidb_embed.devcluster.pki import Pki
from akidb_embed.devcluster.proxy import Backend, Forwarder, Resolver

log = logging.getLogger("akidb_embed.devcluster.agent")

NODE_LABELS = {
    "kubernetes.io/arch": "arm64",
    "kubernetes.io/os": "linux",
    "akidb.io/accelerator": "jetson-thor",
    "nvidia.com/gpu.product": "NVIDIA-Jetson-Thor",
}
LEASE_DURATION_S = 40
HEARTBEAT_S = 10
TOKEN_SECONDS = 7 * 24 * 3600
RUNTIME_VERSION = "akidb-devcluster://0.1"
# Inherited by pod processes from the agent's environment (caches, locale, temp dir).
INHERITED_ENV = ("HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "XDG_CACHE_HOME")
INHERITED_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "OMP_", "LC_")


def now_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ConfigError(Exception):
    """The pod cannot start as specified (reported as CreateContainerConfigError)."""


class IpAllocator:
    def __init__(self, subnet: str) -> None:
        self.net = ipaddress.ip_network(subnet)
        self.node_ip = str(self.net.network_address + 1)
        self.used: dict[str, str] = {}  # ip -> pod uid

    def reserve(self, uid: str, ip: str | None) -> bool:
        if (
            ip
            and ip != self.node_ip
            and ipaddress.ip_address(ip) in self.net
            and self.used.get(ip, uid) == uid
        ):
            self.used[ip] = uid
            return True
        return False

    def allocate(self, uid: str, preferred: str | None = None) -> str:
        for ip, owner in self.used.items():
            if owner == uid:
                return ip
        if self.reserve(uid, preferred):
            return str(preferred)
        for addr in self.net.hosts():
            ip = str(addr)
            if ip == self.node_ip or ip.endswith((".0", ".255")) or ip in self.used:
                continue
            self.used[ip] = uid
            return ip
        raise ConfigError(f"pod subnet {self.net} is exhausted")

    def release(self, uid: str) -> None:
        for ip in [ip for ip, owner in self.used.items() if owner == uid]:
            del self.used[ip]


class Probe:
    """One readiness or liveness probe of a running container."""

    def __init__(self, kind: str, spec: Obj, runner: ContainerRunner) -> None:
        self.kind = kind
        self.spec = spec
        self.runner = runner

    async def once(self) -> bool:
        spec = self.spec
        pod = self.runner.worker
        timeout = float(spec.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                host = get.get("host") or pod.ip
                port = podspec.resolve_port(pod.pod, self.runner.spec, get.get("port", 80))
                scheme = str(get.get("scheme", "HTTP")).lower()
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", []) or []}
                url = f"{scheme}://{host}:{port}{get.get('path', '/')}"
                async with pod.agent.http.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), ssl=False
                ) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in spec:
                sock = spec["tcpSocket"]
                port = podspec.resolve_port(pod.pod, self.runner.spec, sock["port"])
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(sock.get("host") or pod.ip, port), timeout
                )
                writer.close()
                return True
            if "exec" in spec:
                proc = await asyncio.create_subprocess_exec(
                    *spec["exec"]["command"],
                    env=self.runner.env,
                    cwd=self.runner.cwd,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    return await asyncio.wait_for(proc.wait(), timeout) == 0
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    return False
            log.warning("%s: unsupported %s probe %s; treating as success", pod, self.kind, spec)
            return True
        except (OSError, TimeoutError, aiohttp.ClientError, KeyError) as exc:
            log.debug("%s %s probe of %s failed: %s", pod, self.kind, self.runner.name, exc)
            return False

    async def run(self) -> None:
        spec = self.spec
        await asyncio.sleep(float(spec.get("initialDelaySeconds") or 0))
        period = float(spec.get("periodSeconds") or 10)
        need_ok = int(spec.get("successThreshold") or 1)
        need_fail = int(spec.get("failureThreshold") or 3)
        ok_streak = fail_streak = 0
        while True:
            if await self.once():
                ok_streak, fail_streak = ok_streak + 1, 0
            else:
                ok_streak, fail_streak = 0, fail_streak + 1
            if self.kind == "readiness":
                if ok_streak >= need_ok:
                    self.runner.set_ready(True)
                elif fail_streak >= need_fail:
                    self.runner.set_ready(False)
            elif self.kind == "startup" and ok_streak >= 1:
                return
            elif fail_streak >= need_fail:
                log.info(
                    "%s: %s probe failed %d times; restarting", self.runner, self.kind, fail_streak
                )
                await self.runner.kill_for_restart()
                return
            await asyncio.sleep(period)


class ContainerRunner:
    """Runs one container as a local process group, restarting it per restartPolicy."""

    def __init__(self, worker: PodWorker, spec: Obj, init: bool, previous: Obj | None) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.restart_count = int((previous or {}).get("restartCount", 0))
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.ready = False
        self.started = False
        self.proc: asyncio.subprocess.Process | None = None
        self.env: dict[str, str] = {}
        self.variables: dict[str, str] = {}
        self.cwd: str = str(worker.dir)
        self.exit_code: int | None = None
        self.done = False  # terminated and will not be restarted
        self._stopping = False
        self._wake = asyncio.Event()
        previous_state = (previous or {}).get("state") or {}
        # A container that was running before the agent restarted counts as restarted.
        if "running" in previous_state:
            self.restart_count += 1
        # The API server refuses to move a terminated container back (restartPolicy Never).
        if "terminated" in previous_state:
            self.state = previous_state
            self.last_state = (previous or {}).get("lastState") or {}
            # Finished for good before the agent restarted: do not run it again.
            code = int(previous_state["terminated"].get("exitCode", 0))
            policy = worker.restart_policy
            if init and policy == "Always":
                policy = "OnFailure"
            if not podspec.should_restart(policy, code):
                self.done = True
                self.exit_code = code

    def __str__(self) -> str:
        return f"{self.worker}/{self.name}"

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            out["containerID"] = f"local://{self.worker.uid}/{self.name}/{self.proc.pid}"
        return out

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready and "running" in self.state:
            self.ready = ready
            self.worker.changed()

    def _argv(self) -> list[str]:
        variables = self.variables
        command = [podspec.expand(a, variables) for a in self.spec.get("command") or []]
        args = [podspec.expand(a, variables) for a in self.spec.get("args") or []]
        if not command:
            raise ConfigError(
                f"container {self.name!r} has no command: the local node runs command + args "
                "and cannot know an image's entrypoint"
            )
        exe = shutil.which(command[0], path=self.env.get("PATH"))
        if exe is None:
            raise ConfigError(f"executable {command[0]!r} not found in PATH={self.env['PATH']}")
        return [exe, *command[1:], *args]

    async def _start(self) -> asyncio.subprocess.Process:
        self.env, self.variables = await self.worker.container_env(self.spec)
        self.cwd = self.spec.get("workingDir") or str(self.worker.dir)
        Path(self.cwd).mkdir(parents=True, exist_ok=True)
        argv = self._argv()
        log_path = self.worker.log_dir / f"{self.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        with contextlib.suppress(RuntimeError):
            procs.PidRecord.of(proc.pid, argv[0]).save(self.record_path)
        log.info("%s: started pid %d: %s", self, proc.pid, " ".join(argv)[:300])
        return proc

    @property
    def record_path(self) -> Path:
        return agent_state.proc_record_path(self.worker.agent.agent_dir, self.worker.uid, self.name)

    async def run(self, restart_policy: str) -> int:
        """Run until the container ends for good (or is stopped); return its exit code."""
        cfg = self.worker.agent.cfg
        if self.done:
            return self.exit_code or 0
        while not self._stopping:
            try:
                self.proc = await self._start()
            except (ConfigError, ApiError, OSError) as exc:
                reason = (
                    "CreateContainerConfigError"
                    if isinstance(exc, ConfigError)
                    else ("RunContainerError")
                )
                log.warning("%s: %s", self, exc)
                self.state = {"waiting": {"reason": reason, "message": str(exc)}}
                self.worker.changed()
                await self._sleep(5)
                continue
            started_at = now_time()
            began = time.monotonic()
            self.state = {"running": {"startedAt": started_at}}
            self.started = self.ready = False
            self.worker.changed()
            probes = asyncio.create_task(self._probe())
            code = await self.proc.wait()
            probes.cancel()
            # Like a container's cgroup: nothing the container started outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.record_path.unlink(missing_ok=True)
            # A process killed by a signal reports 128 + signal, as in a container.
            self.exit_code = code if code >= 0 else 128 - code
            self.ready = False
            self.started = False
            terminated = {
                "exitCode": self.exit_code,
                "reason": "Completed" if self.exit_code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": now_time(),
                "containerID": f"local://{self.worker.uid}/{self.name}/{self.proc.pid}",
            }
            log.info("%s: exited with %d", self, self.exit_code)
            if self._stopping or not podspec.should_restart(restart_policy, self.exit_code):
                self.state = {"terminated": terminated}
                self.done = True
                self.worker.changed()
                return self.exit_code
            self.last_state = {"terminated": terminated}
            if time.monotonic() - began > 600:
                self.worker.crashes[self.name] = 0  # ran long enough: reset back-off
            crashes = self.worker.crashes.get(self.name, 0)
            delay = podspec.backoff_delay(crashes, cfg.backoff_base_s, cfg.backoff_max_s)
            self.worker.crashes[self.name] = crashes + 1
            self.state = {"terminated": terminated}
            if delay > 0:
                self.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:g}s restarting failed container="
                        f"{self.name} pod={self.worker.pod_name}",
                    }
                }
            self.worker.changed()
            await self._sleep(delay)
            if self._stopping:
                self.state = {"terminated": terminated}
                self.done = True
                self.worker.changed()
                return self.exit_code
            self.restart_count += 1
        self.done = True
        return self.exit_code if self.exit_code is not None else 0

    async def _probe(self) -> None:
        """Startup probe first (if any); then readiness and liveness, as the kubelet does."""
        if self.init:
            return
        if self.spec.get("startupProbe"):
            await Probe("startup", self.spec["startupProbe"], self).run()
            if self.proc is None or self.proc.returncode is not None:
                return
        self.started = True
        self.ready = not self.spec.get("readinessProbe")
        self.worker.changed()
        probes = [
            Probe(kind, self.spec[key], self).run()
            for kind, key in (("readiness", "readinessProbe"), ("liveness", "livenessProbe"))
            if self.spec.get(key)
        ]
        await asyncio.gather(*probes)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _signal_and_wait(self, grace_s: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), max(grace_s, 0.1))
        except TimeoutError:
            log.info("%s: still running after %gs grace; SIGKILL", self, grace_s)
        # Whatever is left of the group (the leader or children it started).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        self._wake.set()
        await self._signal_and_wait(grace_s)

    async def kill_for_restart(self) -> None:
        grace = float(self.worker.pod["spec"].get("terminationGracePeriodSeconds") or 30)
        await self._signal_and_wait(grace)


class PodWorker:
    """Everything about one pod bound to this node."""

    def __init__(self, agent: NodeAgent, pod: Obj) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.dir = agent_state.pod_dir(agent.agent_dir, self.uid)
        self.log_dir = (
            agent.state_dir / "logs" / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid}"
        )
        status = pod.get("status", {})
        self.ip = ""
        self.start_time: str = status.get("startTime") or now_time()
        self.crashes: dict[str, int] = {}
        self.init_runners: list[ContainerRunner] = []
        self.runners: list[ContainerRunner] = []
        self.initialized = False
        self.prepared = False
        self.prepare_error: str | None = None
        self.terminal_phase: str | None = (
            status.get("phase") if status.get("phase") in ("Succeeded", "Failed") else None
        )
        self._conditions: dict[str, Obj] = {
            c["type"]: c for c in status.get("conditions", []) or []
        }
        self._last_sent: Obj | None = None
        self._dirty = asyncio.Event()
        self._terminating = False
        self._tasks: list[asyncio.Task[Any]] = []
        previous = {c["name"]: c for c in status.get("containerStatuses", []) or []}
        previous_init = {c["name"]: c for c in status.get("initContainerStatuses", []) or []}
        spec = pod["spec"]
        for c in spec.get("initContainers", []) or []:
            self.init_runners.append(ContainerRunner(self, c, True, previous_init.get(c["name"])))
        for c in spec.get("containers", []):
            self.runners.append(ContainerRunner(self, c, False, previous.get(c["name"])))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def changed(self) -> None:
        self._dirty.set()
        self.agent.forwards_changed()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_loop()))
        if self.terminal_phase is None:
            self._tasks.append(asyncio.create_task(self._run()))
        if self.pod["metadata"].get("deletionTimestamp"):
            self.update(self.pod)

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self._terminating:
            self._terminating = True
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            self._tasks.append(asyncio.create_task(self._terminate(float(grace))))

    # -- preparation ------------------------------------------------------------------------
    async def _prepare(self) -> None:
        self.ip = self.agent.ips.allocate(self.uid, self.pod.get("status", {}).get("podIP"))
        (self.dir / "volumes").mkdir(parents=True, exist_ok=True)
        self._prepare_volumes()
        await self._write_service_account_kubeconfig()
        self.prepared = True

    def _prepare_volumes(self) -> None:
        for vol in self.pod["spec"].get("volumes", []) or []:
            if "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                kind = vol["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "Directory" and not path.is_dir():
                    raise ConfigError(f"hostPath {path} of volume {vol['name']!r} is not a folder")
            elif "emptyDir" in vol:
                (self.dir / "volumes" / vol["name"]).mkdir(parents=True, exist_ok=True)
        # No mount namespace: a mount is only where the process sees it if the paths agree.
        sources = {
            v["name"]: v["hostPath"]["path"]
            for v in self.pod["spec"].get("volumes", []) or []
            if "hostPath" in v
        }
        for c in self.pod["spec"].get("containers", []):
            for m in c.get("volumeMounts", []) or []:
                src = sources.get(m["name"])
                if src is not None and src.rstrip("/") != m["mountPath"].rstrip("/"):
                    log.warning(
                        "%s: volume %s mounted at %s but its hostPath is %s; the local node does "
                        "not remap paths",
                        self,
                        m["name"],
                        m["mountPath"],
                        src,
                    )

    async def _write_service_account_kubeconfig(self) -> None:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        resp = await self.agent.api.post(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
        )
        token = resp["status"]["token"]
        (self.dir / "token").write_text(token)
        ca_data = base64.b64encode(self.agent.ca_path.read_bytes()).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.agent.cfg.server,
                        "certificate-authority-data": ca_data,
                    },
                }
            ],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "local",
                    "context": {"cluster": "local", "user": sa, "namespace": self.namespace},
                }
            ],
            "current-context": "local",
        }
        path = self.dir / "kubeconfig"
        path.write_text(json.dumps(kubeconfig, indent=2))
        path.chmod(0o600)

    async def _lookup(self, kind: str, name: str, key: str, optional: bool) -> str | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        try:
            obj = await self.agent.api.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404 and optional:
                return None
            raise ConfigError(f"{kind} {name!r}: {exc}") from exc
        if kind == "Secret" and key in obj.get("data", {}):
            return base64.b64decode(obj["data"][key]).decode()
        if key in obj.get("data", {}):
            return str(obj["data"][key])
        if optional:
            return None
        raise ConfigError(f"{kind} {name!r} has no key {key!r}")

    async def container_env(self, container: Obj) -> tuple[dict[str, str], dict[str, str]]:
        """(process environment, variables that $(VAR) in command and args may use)."""
        cfg = self.agent.cfg
        env: dict[str, str] = {
            k: v
            for k, v in os.environ.items()
            if k in INHERITED_ENV or k.startswith(INHERITED_ENV_PREFIXES)
        }
        env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), os.environ.get("PATH", "")])
        env["HOSTNAME"] = self.pod_name
        env["KUBECONFIG"] = str(self.dir / "kubeconfig")
        env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(cfg.apiserver_port)
        env["KUBERNETES_SERVICE_PORT_HTTPS"] = str(cfg.apiserver_port)
        variables = {k: env[k] for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
        for source in container.get("envFrom", []) or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef")
            if not ref:
                continue
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            plural = "configmaps" if kind == "ConfigMap" else "secrets"
            try:
                obj = await self.agent.api.get(
                    f"/api/v1/namespaces/{self.namespace}/{plural}/{ref['name']}"
                )
            except ApiError as exc:
                if exc.status == 404 and ref.get("optional"):
                    continue
                raise ConfigError(f"{kind} {ref['name']!r}: {exc}") from exc
            for key, raw in (obj.get("data") or {}).items():
                text = base64.b64decode(raw).decode() if kind == "Secret" else str(raw)
                env[prefix + key] = variables[prefix + key] = text
        for item in container.get("env", []) or []:
            name = item["name"]
            if "value" in item:
                value: str | None = podspec.expand(str(item["value"]), variables)
            elif "valueFrom" in item:
                src = item["valueFrom"]
                if "fieldRef" in src:
                    try:
                        value = podspec.field_ref(
                            self.pod, src["fieldRef"]["fieldPath"], self.ip, self.agent.ips.node_ip
                        )
                    except KeyError as exc:
                        raise ConfigError(str(exc)) from exc
                elif "secretKeyRef" in src:
                    ref = src["secretKeyRef"]
                    value = await self._lookup(
                        "Secret", ref["name"], ref["key"], bool(ref.get("optional"))
                    )
                elif "configMapKeyRef" in src:
                    ref = src["configMapKeyRef"]
                    value = await self._lookup(
                        "ConfigMap", ref["name"], ref["key"], bool(ref.get("optional"))
                    )
                else:
                    log.info("%s: env %s: %s is not supported here; skipped", self, name, list(src))
                    value = None
            else:
                value = ""
            if value is not None:
                env[name] = variables[name] = value
        return env, variables

    # -- life cycle -------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self.prepared and not self._terminating:
            try:
                await self._prepare()
                self.prepare_error = None
            except (ConfigError, ApiError, OSError) as exc:
                log.warning("%s: cannot prepare pod: %s", self, exc)
                self.prepare_error = str(exc)
                for r in self.runners:
                    r.state = {
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                    }
                self.changed()
                await asyncio.sleep(3)
        if self._terminating:
            return
        self.changed()
        for runner in self.init_runners:
            policy = "OnFailure" if self.restart_policy == "Always" else self.restart_policy
            code = await runner.run(policy)
            if self._terminating:
                return
            if code != 0:
                self.terminal_phase = "Failed"
                self.changed()
                return
        self.initialized = True
        self.changed()
        codes = await asyncio.gather(*(r.run(self.restart_policy) for r in self.runners))
        if not self._terminating:
            self.terminal_phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
            log.info("%s: all containers ended: %s", self, self.terminal_phase)
            self.changed()

    async def _terminate(self, grace_s: float) -> None:
        log.info("%s: deleting (grace %gs)", self, grace_s)
        await asyncio.gather(*(r.stop(grace_s) for r in self.init_runners + self.runners))
        await self.flush_status()
        try:
            await self.agent.api.delete(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self, exc)
        self.cleanup()

    async def stop_processes(self, grace_s: float) -> None:
        """Stop the processes only (the agent is shutting down; the pod stays in the API)."""
        self._terminating = True
        await asyncio.gather(*(r.stop(grace_s) for r in self.init_runners + self.runners))

    def cleanup(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.agent.ips.release(self.uid)
        # Keep the logs (under logs/pods/) for debugging; drop the token and scratch dirs.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.agent.workers.pop(self.uid, None)
        self.agent.forwards_changed()

    # -- status -----------------------------------------------------------------------------
    def _condition(self, kind: str, ok: bool) -> Obj:
        status = "True" if ok else "False"
        old = self._conditions.get(kind)
        if old and old.get("status") == status:
            return old
        cond = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now_time(),
        }
        self._conditions[kind] = cond
        return cond

    def is_ready(self) -> bool:
        return (
            self.terminal_phase is None
            and not self._terminating
            and self.initialized
            and all(r.ready for r in self.runners)
        )

    def build_status(self) -> Obj:
        if self.terminal_phase:
            phase = self.terminal_phase
        elif self.initialized and any(
            "running" in r.state or r.restart_count or "terminated" in r.state for r in self.runners
        ):
            phase = "Running"
        else:
            phase = "Pending"
        ready = self.is_ready()
        conditions = [
            self._condition("PodReadyToStartContainers", self.prepared),
            self._condition("Initialized", self.initialized or phase in ("Succeeded", "Failed")),
            self._condition("ContainersReady", ready),
            self._condition("Ready", ready),
        ]
        scheduled = self._conditions.get("PodScheduled") or {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": self.start_time,
        }
        conditions.insert(0, scheduled)
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.agent.ips.node_ip,
            "hostIPs": [{"ip": self.agent.ips.node_ip}],
            "startTime": self.start_time,
            "containerStatuses": [r.status() for r in self.runners],
        }
        if self.init_runners:
            status["initContainerStatuses"] = [r.status() for r in self.init_runners]
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.prepare_error:
            status["message"] = self.prepare_error
        return status

    async def flush_status(self) -> None:
        status = self.build_status()
        if status == self._last_sent:
            return
        try:
            await self.agent.api.merge_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
            self._last_sent = status
        except ApiError as exc:
            if exc.status == 404:
                return
            log.warning("%s: status update failed: %s", self, exc)
            self._dirty.set()
            await asyncio.sleep(1)

    async def _status_loop(self) -> None:
        self._dirty.set()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce bursts of changes
            self._dirty.clear()
            await self.flush_status()


class NodeAgent:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.cfg = ClusterConfig.load(state_dir / "config.json")
        self.agent_dir = state_dir / "agent"
        self.ca_path = state_dir / "pki" / "ca.crt"
        self.node_name = self.cfg.node_name
        self.ips = IpAllocator(self.cfg.pod_subnet)
        self.workers: dict[str, PodWorker] = {}
        self.services: dict[str, Obj] = {}
        self.forwarder = Forwarder()
        self._forwards_dirty = asyncio.Event()
        self._api: KubeApi | None = None
        self._started_at = now_time()
        self._http: aiohttp.ClientSession | None = None

    @property
    def api(self) -> KubeApi:
        assert self._api is not None
        return self._api

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    # -- node -------------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        mem_ki = podspec.parse_memory_ki(Path("/proc/meminfo").read_text())
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_ki}Ki",
            "pods": "110",
            "nvidia.com/gpu": "1",
            "ephemeral-storage": f"{shutil.disk_usage(self.state_dir).total // 1024}Ki",
        }
        now = now_time()

        def cond(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "local node agent"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "local node agent"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "local node agent"),
                cond("Ready", "True", "KubeletReady", "local node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.ips.node_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "architecture": "arm64",
                "operatingSystem": "linux",
                "osImage": "akidb-embed local node (simulated Jetson Thor)",
                "kernelVersion": os.uname().release,
                "kubeletVersion": self.cfg.kube_version,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": RUNTIME_VERSION,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register_node(self) -> None:
        labels = {**NODE_LABELS, "kubernetes.io/hostname": self.node_name}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
        }
        try:
            await self.api.post("/api/v1/nodes", node)
            log.info("registered node %s", self.node_name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.api.merge_patch(
                f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": labels}}
            )
        await self.api.merge_patch(
            f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()}
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        try:
            await self.api.merge_patch(
                path, {"spec": {"renewTime": now_micro(), "holderIdentity": self.node_name}}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node_name,
                            "uid": node["metadata"]["uid"],
                        }
                    ],
                },
                "spec": {
                    "holderIdentity": self.node_name,
                    "leaseDurationSeconds": LEASE_DURATION_S,
                    "renewTime": now_micro(),
                },
            }
            await self.api.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )

    async def heartbeat(self) -> None:
        while True:
            try:
                await self._renew_lease()
                await self.api.merge_patch(
                    f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()}
                )
            except ApiError as exc:
                if exc.status == 404:
                    log.warning("node %s vanished; registering again", self.node_name)
                    with contextlib.suppress(ApiError):
                        await self.register_node()
                else:
                    log.warning("heartbeat failed: %s", exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    # -- pods -------------------------------------------------------------------------------
    async def _on_pod_sync(self, pods: list[Obj]) -> None:
        # Keep pods' existing IPs (after an agent restart) before any new pod takes one.
        for pod in pods:
            self.ips.reserve(pod["metadata"]["uid"], pod.get("status", {}).get("podIP"))

    async def _on_pod_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                # Force-deleted (or deleted after we were done): make sure nothing runs.
                await worker.stop_processes(0)
                worker.cleanup()
            return
        if worker is None:
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            log.info("pod %s bound to this node", worker)
            worker.start()
        else:
            worker.update(pod)

    # -- forwarding -------------------------------------------------------------------------
    def forwards_changed(self) -> None:
        self._forwards_dirty.set()

    async def _on_service_event(self, kind: str, svc: Obj) -> None:
        key = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = svc
        self.forwards_changed()

    def _service_backends(self, svc: Obj, port: Obj) -> Resolver:
        def resolve() -> list[Backend]:
            backends = []
            for w in self.workers.values():
                if w.namespace != svc["metadata"]["namespace"] or not w.is_ready():
                    continue
                if not podspec.selector_matches(
                    svc["spec"].get("selector"), w.pod["metadata"].get("labels")
                ):
                    continue
                try:
                    target = podspec.resolve_port(
                        w.pod, None, port.get("targetPort") or port["port"]
                    )
                except KeyError:
                    continue
                backends.append((w.ip, target))
            return backends

        return resolve

    def desired_forwards(self) -> dict[tuple[str, int], tuple[str, Resolver]]:
        desired: dict[tuple[str, int], tuple[str, Resolver]] = {}
        hosts = [self.cfg.host_address, self.ips.node_ip]
        for key, svc in self.services.items():
            if svc["spec"].get("type") not in ("NodePort", "LoadBalancer"):
                continue
            for port in svc["spec"].get("ports", []):
                if port.get("nodePort") and port.get("protocol", "TCP") == "TCP":
                    what = f"service {key} port {port.get('name') or port['port']}"
                    for host in hosts:
                        desired[(host, int(port["nodePort"]))] = (
                            what,
                            self._service_backends(svc, port),
                        )
        for w in list(self.workers.values()):
            if not w.ip or w.terminal_phase:
                continue
            for c in w.pod["spec"].get("containers", []):
                for p in c.get("ports", []) or []:
                    if p.get("hostPort") and p.get("protocol", "TCP") == "TCP":
                        backend: Backend = (w.ip, int(p["containerPort"]))
                        resolver: Resolver = functools.partial(list, [backend])
                        for host in {p.get("hostIP") or self.cfg.host_address, self.ips.node_ip}:
                            desired[(host, int(p["hostPort"]))] = (
                                f"pod {w} port {p['containerPort']}",
                                resolver,
                            )
        return desired

    async def forward_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._forwards_dirty.wait(), 5)
            self._forwards_dirty.clear()
            await self.forwarder.reconcile(self.desired_forwards())

    # -- kubelet API (kubectl logs) ---------------------------------------------------------
    def locate_log(self, namespace: str, pod: str, container: str) -> tuple[Path | None, bool]:
        for w in self.workers.values():
            if w.namespace == namespace and w.pod_name == pod:
                running = not w.terminal_phase and any(
                    r.name == container and not r.done for r in w.init_runners + w.runners
                )
                return w.log_dir / f"{container}.log", running
        # A pod this agent no longer tracks: its newest log folder, if any.
        folders = sorted(
            (self.state_dir / "logs" / "pods").glob(f"{namespace}_{pod}_*"),
            key=lambda p: p.stat().st_mtime,
        )
        return (folders[-1] / f"{container}.log" if folders else None), False

    # -- main -------------------------------------------------------------------------------
    async def run(self) -> None:
        leftovers = agent_state.stop_recorded_pod_processes(self.agent_dir, grace_s=5)
        for line in leftovers:
            log.info("cleanup from a previous run: %s", line)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pki = self.state_dir / "pki"
        async with KubeApi(
            self.cfg.server, self.ca_path, pki / "admin.crt", pki / "admin.key"
        ) as api:
            self._api = api
            self._http = aiohttp.ClientSession()
            pki_files = Pki(pki)
            kubelet = None
            if self.cfg.kubelet_port and pki_files.kubelet_cert.exists():
                kubelet = await kubelet_api.serve(
                    self.locate_log,
                    self.ips.node_ip,
                    self.cfg.kubelet_port,
                    pki_files.kubelet_cert,
                    pki_files.kubelet_key,
                    self.ca_path,
                )
            try:
                await self.register_node()
                tasks = [
                    asyncio.create_task(self.heartbeat()),
                    asyncio.create_task(
                        reflect(
                            api,
                            "/api/v1/pods",
                            self._on_pod_event,
                            params={"fieldSelector": f"spec.nodeName={self.node_name}"},
                            on_sync=self._on_pod_sync,
                        )
                    ),
                    asyncio.create_task(reflect(api, "/api/v1/services", self._on_service_event)),
                    asyncio.create_task(self.forward_loop()),
                ]
                log.info(
                    "node agent for %s running (pod subnet %s)", self.node_name, self.cfg.pod_subnet
                )
                await stop.wait()
                log.info("shutting down: stopping pod processes")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*(w.stop_processes(5) for w in list(self.workers.values())))
                await self.forwarder.close()
            finally:
                await self._http.close()
                if kubelet is not None:
                    await kubelet.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="akidb-embed local node agent")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(NodeAgent(args.state_dir).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
