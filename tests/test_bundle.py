"""Bundle manifest: hashing, verification and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsvl_runtime.bundle import FORMAT_VERSION, Bundle, BundleError, sha256_file, write_manifest


def _make(tmp_path: Path) -> Path:
    d = tmp_path / "b"
    d.mkdir()
    (d / "text.onnx").write_bytes(b"text-graph")
    (d / "image.onnx").write_bytes(b"image-graph" * 100)
    (d / "tokenizer.json").write_text("{}")
    write_manifest(d, {"model": "m", "task": "semantic", "modalities": {}, "tile": {"size": 64, "overlap": 0.25},
                       "text": {}, "graphs": {"text": {"fp32": "text.onnx"}, "image": {"fp32": "image.onnx"}}})
    return d


def test_manifest_lists_every_file_with_its_hash(tmp_path: Path) -> None:
    d = _make(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"text.onnx", "image.onnx", "tokenizer.json"}
    assert m["files"]["image.onnx"]["sha256"] == sha256_file(d / "image.onnx")
    assert m["files"]["image.onnx"]["bytes"] == 1100
    b = Bundle.load(d)
    assert b.graph_file("image") == d / "image.onnx"
    assert b.tile_size == 64 and b.overlap == 0.25


def test_tampered_file_is_named(tmp_path: Path) -> None:
    d = _make(tmp_path)
    (d / "image.onnx").write_bytes(b"evil")
    with pytest.raises(BundleError, match=r"image\.onnx.*does not match the manifest"):
        Bundle.load(d)


def test_missing_file_and_missing_manifest(tmp_path: Path) -> None:
    d = _make(tmp_path)
    (d / "text.onnx").unlink()
    with pytest.raises(BundleError, match=r"text\.onnx.*missing"):
        Bundle.load(d)
    with pytest.raises(BundleError, match="not an rsvl bundle"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="bundle not found"):
        Bundle.load(tmp_path / "nope")


def test_corrupt_manifest_and_future_version(tmp_path: Path) -> None:
    d = _make(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        Bundle.load(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(d)


def test_pickle_files_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    (d / "weights.pt").write_bytes(b"\x80\x04")
    with pytest.raises(BundleError, match="pickle"):
        write_manifest(d, {"model": "m"})


def test_zip_bundle_loads(tmp_path: Path) -> None:
    import shutil

    _make(tmp_path)
    z = shutil.make_archive(str(tmp_path / "bundle"), "zip", root_dir=tmp_path, base_dir="b")
    b = Bundle.load(z)
    assert b.graph_file("text").read_bytes() == b"text-graph"


def test_missing_precision_names_the_fix(tmp_path: Path) -> None:
    b = Bundle.load(_make(tmp_path))
    with pytest.raises(BundleError, match="--precision fp16"):
        b.graph_file("image", "fp16")
