"""Image tags are content hashes of what goes into each image (no build here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from akidb_embed.devcluster import images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of the inputs the image builds read."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in (*images.CONTEXT_FILES, *images.DOCKERFILES.values()):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    return root


def tags(root: Path) -> dict[str, str]:
    base = images.base_tag()
    ctx = images.context_digest(root)
    return {role: images.role_tag(role, base, ctx, root) for role in images.ROLES}


def test_tags_name_the_role_and_are_stable(tree: Path) -> None:
    first = tags(tree)
    assert first == tags(tree)
    for role, ref in first.items():
        name, _, digest = ref.partition(":")
        assert name == f"localhost/akidb-embed-{role}"
        assert len(digest) == 12 and int(digest, 16) >= 0
    assert len(set(first.values())) == 3


def test_a_code_change_retags_every_image_a_cache_file_does_not(tree: Path) -> None:
    before = tags(tree)
    (tree / "akidb_embed" / "__pycache__").mkdir(exist_ok=True)
    (tree / "akidb_embed" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert tags(tree) == before
    (tree / "akidb_embed" / "units.py").write_text("# changed\n", encoding="utf-8")
    after = tags(tree)
    assert all(after[r] != before[r] for r in images.ROLES)


def test_a_dockerfile_change_retags_only_its_image(tree: Path) -> None:
    before = tags(tree)
    with (tree / "Dockerfile.server").open("a") as f:
        f.write("# changed\n")
    after = tags(tree)
    assert after["server"] != before["server"]
    assert after["operator"] == before["operator"]
    assert after["converter"] == before["converter"]


def test_the_wheelhouse_follows_the_pins(tree: Path) -> None:
    before = images.wheelhouse_key(tree)
    with (tree / "constraints.txt").open("a") as f:
        f.write("six==1.17.0\n")
    assert images.wheelhouse_key(tree) != before


def test_image_set_names_and_operator_settings() -> None:
    s = images.ImageSet(
        base="localhost/akidb-embed-base:1",
        operator="localhost/akidb-embed-operator:2",
        server="localhost/akidb-embed-server:3",
        converter="localhost/akidb-embed-converter:4",
    )
    assert s.gateway == s.operator
    assert s.operator_env() == {
        "AKIDB_SERVER_IMAGE": "localhost/akidb-embed-server:3",
        "AKIDB_CONVERTER_IMAGE": "localhost/akidb-embed-converter:4",
        "AKIDB_IMAGE_PULL_POLICY": "Never",
    }
    assert images.local_ref(s.server) == "localhost/akidb-embed-server:local"


def test_local_overlay_uses_the_local_names() -> None:
    text = (REPO / "manifests" / "overlays" / "local" / "kustomization.yaml").read_text()
    for role in images.ROLES:
        assert images.local_ref(f"localhost/akidb-embed-{role}:x") in text or role == "operator"
    assert "newName: localhost/akidb-embed-operator" in text
    assert f"newTag: {images.LOCAL_TAG}" in text


def test_prepare_node_folders_gives_them_to_the_images_user(tmp_path: Path) -> None:
    store = tmp_path / "a" / "models"
    images.prepare_node_folders(store)
    st = store.stat()
    assert (st.st_uid, st.st_gid) == (images.APP_UID, images.APP_UID)
    assert st.st_mode & 0o777 == 0o755
