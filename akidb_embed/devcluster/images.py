"""The project's container images, built here from the repo's Dockerfiles.

No registry and no Docker engine: a base image from `debootstrap --variant=minbase`
(Debian bookworm + python3), then `buildah bud` of Dockerfile.operator (operator and
gateway), Dockerfile.server and Dockerfile.converter on that base, offline: the images
install from a wheelhouse that `pip download` fills once from constraints.txt, mounted
into the build, with `--network none`.

Every tag is a hash of what goes into the image (`localhost/akidb-embed-<role>:<hash>`):
an existing tag is not rebuilt, so an unchanged tree costs a few `buildah inspect`s. The
converter (torch) keeps its dependencies in a layer of their own, which buildah's layer
cache keeps across code changes. Images reach a containerd as image archives
(`buildah push ... docker-archive:`, `ctr images import`), skipping those already there.

    images = ensure_images(progress=print)            # build or reuse -> ImageSet
    import_images(images, ctr_binary, ctr_socket)     # into containerd's k8s.io namespace
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from akidb_embed.operator.objects import APP_UID

Progress = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
ROLES = ("operator", "server", "converter")
DOCKERFILES = {
    "operator": "Dockerfile.operator",
    "server": "Dockerfile.server",
    "converter": "Dockerfile.converter",
}
# Build arguments beyond the base and the wheelhouse; the server here is the CPU build.
ROLE_ARGS: dict[str, dict[str, str]] = {"server": {"ORT_GPU": "0"}}
# What the Dockerfiles COPY: the build context holds these and nothing else.
CONTEXT_FILES = ("pyproject.toml", "constraints.txt", "README.md", "akidb_embed")
EXTRAS = "server,convert,operator,gateway"
REPOSITORY = "localhost/akidb-embed"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")
# Trimmed from the base: package caches and docs nothing in the images reads.
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
)
# The name manifests/overlays/local uses: import_images points it at the current tree's
# image in the node's containerd, so the overlay stays static.
LOCAL_TAG = "local"
WHEELS_MOUNT = "/wheels"
CACHE_ENV = "AKIDB_IMAGE_CACHE"


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the step and the tail of its log."""


@dataclass(frozen=True)
class ImageSet:
    """Image references of one tree: what manifests and the operator's flags name."""

    base: str
    operator: str
    server: str
    converter: str
    built: tuple[str, ...] = ()  # roles built by this call (the rest were cached)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, this call

    @property
    def gateway(self) -> str:
        return self.operator  # one image runs both

    def refs(self) -> dict[str, str]:
        return {"operator": self.operator, "server": self.server, "converter": self.converter}

    def operator_env(self) -> dict[str, str]:
        """The operator's settings that point model and conversion pods at these images."""
        return {
            "AKIDB_SERVER_IMAGE": self.server,
            "AKIDB_CONVERTER_IMAGE": self.converter,
            "AKIDB_IMAGE_PULL_POLICY": "Never",
        }


def local_ref(ref: str) -> str:
    return ref.rpartition(":")[0] + ":" + LOCAL_TAG


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "akidb-embed")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _context_files(repo: Path) -> Iterator[Path]:
    for name in CONTEXT_FILES:
        path = repo / name
        if path.is_file():
            yield path
            continue
        for sub in sorted(path.rglob("*")):
            if sub.is_file() and "__pycache__" not in sub.parts and sub.suffix != ".pyc":
                yield sub


def context_digest(repo: Path = REPO) -> str:
    """Hash of the files the Dockerfiles copy (names and contents)."""
    parts: list[bytes | str] = []
    for path in _context_files(repo):
        parts += [str(path.relative_to(repo)), path.read_bytes()]
    return _digest(*parts)


def base_tag() -> str:
    return (
        f"{REPOSITORY}-base:"
        + _digest(DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES, *BASE_TRIM)[:12]
    )


def role_tag(role: str, base: str, context: str, repo: Path = REPO) -> str:
    """The tag of a role's image: its Dockerfile, base, build args and context."""
    dockerfile = (repo / DOCKERFILES[role]).read_bytes()
    args = json.dumps(ROLE_ARGS.get(role, {}), sort_keys=True)
    return f"{REPOSITORY}-{role}:" + _digest(dockerfile, base, args, context)[:12]


def wheelhouse_key(repo: Path = REPO) -> str:
    return _digest(
        (repo / "constraints.txt").read_bytes(), (repo / "pyproject.toml").read_bytes(), EXTRAS
    )[:12]


class Builder:
    """buildah with its own storage under the cache folder; one build at a time."""

    def __init__(
        self, cache_dir: Path | None = None, repo: Path = REPO, progress: Progress = print
    ) -> None:
        self.cache = (cache_dir or default_cache_dir()) / "images"
        self.wheels = (cache_dir or default_cache_dir()) / "wheels"
        self.repo = repo
        self.progress = progress
        self.seconds: dict[str, float] = {}

    # -- plumbing ----------------------------------------------------------------------
    def buildah_cmd(self, *args: str) -> list[str]:
        binary = shutil.which("buildah")
        if binary is None:
            raise ImageBuildError(
                "buildah is not installed (Debian: apt-get install buildah; `make deps`)"
            )
        return [
            binary,
            "--root",
            str(self.cache / "storage"),
            "--runroot",
            str(self.cache / "run"),
            "--storage-driver",
            os.environ.get("AKIDB_IMAGE_STORAGE_DRIVER", "overlay"),
            *args,
        ]

    def _run(self, cmd: list[str], what: str, log_name: str) -> str:
        """Run a long step, its output to a log; build steps echoed as progress."""
        self.cache.joinpath("logs").mkdir(parents=True, exist_ok=True)
        log_path = self.cache / "logs" / f"{log_name}.log"
        start = time.monotonic()
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            assert proc.stdout is not None
            said = start
            for line in proc.stdout:
                log.write(line)
                now = time.monotonic()
                if line.startswith("STEP "):
                    self.progress(f"    {line.rstrip()[:120]}")
                    said = now
                elif now - said > 30:  # a long step (pip, debootstrap): a sign of life
                    self.progress(f"    ... {what} {now - start:.0f}s: {line.strip()[:90]}")
                    said = now
            rc = proc.wait()
        elapsed = time.monotonic() - start
        self.seconds[what] = round(elapsed, 1)
        if rc != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise ImageBuildError(f"{what} failed (exit {rc}; log {log_path}):\n{tail}")
        self.progress(f"  {what}: {elapsed:.1f}s")
        return log_path.read_text()

    def exists(self, ref: str) -> bool:
        proc = subprocess.run(
            self.buildah_cmd("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref),
            capture_output=True,
            text=True,
        )
        return proc.returncode == 0

    def image_size(self, ref: str) -> str:
        """Uncompressed size as buildah prints it (e.g. '268 MB')."""
        out = subprocess.run(
            self.buildah_cmd("images", "--json", ref), capture_output=True, text=True, check=True
        ).stdout
        return str(json.loads(out)[0]["size"])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.cache.mkdir(parents=True, exist_ok=True)
        with (self.cache / "build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- inputs ------------------------------------------------------------------------
    def ensure_wheelhouse(self) -> Path:
        """Every wheel the images install, from constraints.txt (downloaded once)."""
        key = wheelhouse_key(self.repo)
        marker = self.wheels / f".complete-{key}"
        if marker.exists():
            return self.wheels
        self.wheels.mkdir(parents=True, exist_ok=True)
        self.progress(f"  wheelhouse: pip download [{EXTRAS}] into {self.wheels} (once)")
        self._run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--dest",
                str(self.wheels),
                "--constraint",
                str(self.repo / "constraints.txt"),
                f"{self.repo}[{EXTRAS}]",
                # build requirements of the project itself (pip builds it in the image)
                "setuptools>=77",
                "wheel",
            ],
            "wheelhouse",
            "wheelhouse",
        )
        for stale in self.wheels.glob(".complete-*"):
            stale.unlink()
        marker.touch()
        return self.wheels

    def stage_context(self, role: str) -> Path:
        """A build context with only the files the Dockerfiles copy."""
        ctx = self.cache / "context" / role
        shutil.rmtree(ctx, ignore_errors=True)
        ctx.mkdir(parents=True)
        for path in _context_files(self.repo):
            dest = ctx / path.relative_to(self.repo)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        shutil.copy2(self.repo / DOCKERFILES[role], ctx / "Dockerfile")
        return ctx

    # -- images ------------------------------------------------------------------------
    def ensure_base(self) -> str:
        ref = base_tag()
        if self.exists(ref):
            return ref
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
        work = self.cache / "base-rootfs"
        shutil.rmtree(work, ignore_errors=True)
        self.progress(f"  base image {ref}: debootstrap {DEBIAN_SUITE} (minbase + python3)")
        self._run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(work),
                DEBIAN_MIRROR,
            ],
            "debootstrap",
            "base-debootstrap",
        )
        for rel in BASE_TRIM:
            target = work / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        tarball = self.cache / "base-rootfs.tar"
        subprocess.run(["tar", "-C", str(work), "-cf", str(tarball), "."], check=True)
        shutil.rmtree(work)
        start = time.monotonic()
        ctr = subprocess.run(
            self.buildah_cmd("from", "scratch"), capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            for args in (
                ("add", ctr, str(tarball), "/"),
                (
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    '["python3"]',
                    "--label",
                    f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} minbase "
                    f"+ {' '.join(BASE_PACKAGES)}",
                    ctr,
                ),
                ("commit", "--quiet", ctr, ref),
            ):
                subprocess.run(self.buildah_cmd(*args), capture_output=True, text=True, check=True)
        finally:
            subprocess.run(self.buildah_cmd("rm", ctr), capture_output=True)
            tarball.unlink(missing_ok=True)
        self.seconds["base commit"] = round(time.monotonic() - start, 1)
        return ref

    def ensure_role(self, role: str, base: str, context: str) -> tuple[str, bool]:
        ref = role_tag(role, base, context, self.repo)
        if self.exists(ref):
            return ref, False
        wheels = self.ensure_wheelhouse()
        ctx = self.stage_context(role)
        self.progress(f"  building {ref} from {DOCKERFILES[role]}")
        args = {
            "BASE_IMAGE": base,
            "PIP_INSTALL_ARGS": f"--no-index --find-links {WHEELS_MOUNT}",
            **ROLE_ARGS.get(role, {}),
        }
        cmd = self.buildah_cmd(
            "bud",
            "--layers",  # the converter's dependency layer outlives code changes
            "--pull=never",
            "--network",
            "none",  # offline: everything comes from the wheelhouse
            "--volume",
            f"{wheels}:{WHEELS_MOUNT}:ro",
            "--file",
            str(ctx / "Dockerfile"),
            "--tag",
            ref,
            *(f"--build-arg={k}={v}" for k, v in sorted(args.items())),
            str(ctx),
        )
        self._run(cmd, f"build {role}", f"build-{role}")
        self._drop_other_tags(role, ref)
        return ref, True

    def _drop_other_tags(self, role: str, keep: str) -> None:
        """Older tags of a role go (their layers stay while the build cache uses them)."""
        out = subprocess.run(
            self.buildah_cmd("images", "--json"), capture_output=True, text=True, check=True
        ).stdout
        repo = f"{REPOSITORY}-{role}:"
        for image in json.loads(out or "[]"):
            for name in image.get("names") or []:
                if name.startswith(repo) and name != keep:
                    subprocess.run(self.buildah_cmd("rmi", name), capture_output=True)
        for old in (self.cache / "archives").glob(f"akidb-embed-{role}-*.tar"):
            if old.name != _archive_name(keep):
                old.unlink()

    def archive(self, ref: str) -> Path:
        """The image as a docker-archive tar: uncompressed layers, written in one pass
        (an oci-archive gzips every layer, minutes for the converter's torch) and
        imported by `ctr images import` under its full name."""
        path = self.cache / "archives" / _archive_name(ref)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        self._run(
            self.buildah_cmd("push", "--quiet", ref, f"docker-archive:{partial}:{ref}"),
            f"export {ref.split('/')[-1]}",
            "export",
        )
        partial.rename(path)
        return path


def _archive_name(ref: str) -> str:
    name, _, tag = ref.rpartition("/")[2].partition(":")
    return f"{name}-{tag}.tar"


def ensure_images(
    progress: Progress = print,
    roles: tuple[str, ...] = ROLES,
    cache_dir: Path | None = None,
    repo: Path = REPO,
) -> ImageSet:
    """Build (or reuse, by content hash) the base and the project's images."""
    missing = [d for d in DOCKERFILES.values() if not (repo / d).is_file()]
    if missing:
        raise ImageBuildError(f"{repo} is not a source tree: {', '.join(missing)} missing")
    builder = Builder(cache_dir, repo, progress)
    start = time.monotonic()
    with builder.locked():
        base = builder.ensure_base()
        context = context_digest(repo)
        refs: dict[str, str] = {}
        built: list[str] = []
        for role in ROLES:
            if role not in roles:
                refs[role] = role_tag(role, base, context, repo)
                continue
            refs[role], fresh = builder.ensure_role(role, base, context)
            if fresh:
                built.append(role)
    builder.seconds["total"] = round(time.monotonic() - start, 1)
    progress(
        f"images ({'built ' + ', '.join(built) if built else 'all cached'}, "
        f"{builder.seconds['total']:.1f}s): " + ", ".join(refs[r] for r in ROLES)
    )
    return ImageSet(base=base, built=tuple(built), seconds=builder.seconds, **refs)


def present_images(ctr_binary: str | Path, ctr_address: str, namespace: str = "k8s.io") -> set[str]:
    out = subprocess.run(
        [str(ctr_binary), "--address", ctr_address, "-n", namespace, "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def import_images(
    images: ImageSet,
    ctr_binary: str | Path,
    ctr_address: str,
    namespace: str = "k8s.io",
    progress: Progress = print,
    cache_dir: Path | None = None,
) -> list[str]:
    """Import the images a containerd lacks (by name) and point the `:local` names at
    them; returns the refs imported."""

    def ctr(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(ctr_binary), "--address", ctr_address, "-n", namespace, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return proc

    present = present_images(ctr_binary, ctr_address, namespace)
    todo = [ref for ref in images.refs().values() if ref not in present]
    builder = Builder(cache_dir, progress=progress)
    for ref in todo:
        with builder.locked():
            archive = builder.archive(ref)
        start = time.monotonic()
        ctr("images", "import", str(archive))
        progress(f"  imported {ref} into containerd: {time.monotonic() - start:.1f}s")
    present = present_images(ctr_binary, ctr_address, namespace)
    missing = [ref for ref in images.refs().values() if ref not in present]
    if missing:
        raise ImageBuildError(f"containerd does not list {', '.join(missing)} after the import")
    for ref in images.refs().values():
        ctr("images", "tag", "--force", ref, local_ref(ref))
    return todo


def node_refs(images: ImageSet) -> list[str]:
    """Every name a node holds for these images (content-hash tags and `:local` ones)."""
    return [name for ref in images.refs().values() for name in (ref, local_ref(ref))]


def prepare_node_folders(*paths: str | Path, uid: int = APP_UID) -> None:
    """The node preparation the pods need: folders they write (model store, Hugging Face
    cache, TensorRT caches) exist and belong to the images' user (hostPath volumes keep
    the node's ownership; fsGroup does not apply to them)."""
    for path in map(Path, paths):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, uid)
        path.chmod(0o755)


def describe(images: ImageSet, cache_dir: Path | None = None) -> list[dict[str, str]]:
    """Ref and size of each image (for `cluster images` and docs/IMAGES.md)."""
    builder = Builder(cache_dir, progress=lambda _: None)
    rows: list[dict[str, str]] = []
    for role, ref in (("base", images.base), *images.refs().items()):
        rows.append({"role": role, "ref": ref, "size": builder.image_size(ref)})
    return rows
