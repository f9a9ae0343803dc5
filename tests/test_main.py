"""The pipeline's skip-if-unchanged rule."""

from __future__ import annotations

import os
from pathlib import Path

from steps.main import Step, cache_key, fingerprint


def _tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "Products.csv").write_text("a,b\n1,2\n")
    (root / "images" / "x.jpg").write_bytes(b"jpeg")
    return root


def test_fingerprint_changes_when_a_file_changes_appears_or_goes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "raw")
    before = fingerprint([root])
    assert fingerprint([root]) == before, "stable when nothing changed"
    (root / "images" / "y.jpg").write_bytes(b"jpeg")
    added = fingerprint([root])
    assert added != before
    (root / "images" / "y.jpg").unlink()
    assert fingerprint([root]) == before
    stat = (root / "Products.csv").stat()
    os.utime(root / "Products.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint([root]) != before, "a touched file counts as changed"


def test_missing_paths_have_their_own_fingerprint(tmp_path: Path) -> None:
    assert fingerprint([tmp_path / "nope"]) != fingerprint([tmp_path])


def test_cache_key_depends_on_parameters_inputs_and_code(tmp_path: Path) -> None:
    root = _tree(tmp_path / "raw")
    step = Step("clean_images", {"size": "64"}, inputs=[root])
    key = cache_key(step, code="v1")
    assert cache_key(Step("clean_images", {"size": "64"}, inputs=[root]), "v1") == key
    assert cache_key(Step("clean_images", {"size": "96"}, inputs=[root]), "v1") != key
    assert cache_key(step, code="v2") != key
    (root / "images" / "z.jpg").write_bytes(b"jpeg")
    assert cache_key(step, code="v1") != key
