"""The typed manifest (rsvl_runtime/manifest.py): round trip, defaults, upgrade, refusals."""

from __future__ import annotations

import copy
import json
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

from rsvl_runtime.bundle import (
    MANIFEST_HASH_KEY,
    Bundle,
    BundleError,
    manifest_hash,
    write_manifest,
)
from rsvl_runtime.manifest import (
    FORMAT_VERSION,
    EngineEntry,
    Limits,
    Manifest,
    ModalitySpec,
    TextSpec,
    upgrade_v1_to_v2,
)

MINIMAL: dict[str, Any] = {
    "format_version": FORMAT_VERSION, "model": "m", "task": "semantic", "modalities": {},
    "tile": {"size": 64}, "text": {}, "graphs": {"image": {"fp32": "image.onnx"}}, "files": {},
}

#: A version-1 engine entry as the first TensorRT export wrote it (bundle.py's old docstring).
V1_ENGINE = {"graph": "image", "file": "image.fp16.engine", "precision": "fp16", "tensorrt_version": "10.13.0",
             "compute_capability": "9.0", "gpu": "NVIDIA H100",
             "profiles": {"optical": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}}}


def _minimal(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(MINIMAL)
    d.update(changes)
    return d


# ------------------------------------------------------------------------------------ round trip
def test_real_exported_manifest_round_trips_exactly(tiny_bundle: Path) -> None:
    on_disk = json.loads((tiny_bundle / "manifest.json").read_text())
    b = Bundle.load(tiny_bundle)
    assert isinstance(b.meta, Manifest) and b.manifest == on_disk      # meta typed, manifest serialised
    assert on_disk["format_version"] == FORMAT_VERSION
    out = b.meta.to_dict()
    assert out == on_disk
    assert json.dumps(out, sort_keys=True) == json.dumps(on_disk, sort_keys=True)  # same JSON, not only ==
    assert manifest_hash(out) == on_disk[MANIFEST_HASH_KEY] == b.digest            # the seal is stable
    assert Manifest.from_dict(out) == b.meta
    m = b.meta
    assert m.model == "tsmnet-tiny" and m.task == "semantic" and m.tile.size == 64
    assert m.limits == Limits(max_batch=8, max_vocab=64)                           # the fixture's limits
    assert m.graphs["image"].fp16 == "image.fp16.onnx" and m.graphs["image"].inputs["optical"].shape == ("B", 3, 64, 64)
    assert m.modalities["optical"].optical_dtype == "uint8" and m.modalities["sar"].sar_units == "db"
    assert m.graphs["image"].extra["fp32_ops"]                                      # unmodelled keys kept


def test_sealing_a_typed_manifest_writes_its_dict(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    (d / "image.onnx").write_bytes(b"graph")
    written = write_manifest(d, Manifest.from_dict(_minimal()))
    b = Bundle.load(d)
    assert b.manifest == written and b.digest == written[MANIFEST_HASH_KEY]
    assert b.meta.files["image.onnx"].bytes == 5
    assert Manifest.from_dict(written).to_dict() == written


# -------------------------------------------------------------------------------------- defaults
def test_one_default_per_field() -> None:
    m = Manifest.from_dict(_minimal())
    assert m.limits.max_batch == 32 and m.limits.max_vocab == 256                 # not 8, 0 or None
    assert m.tile.overlap == 0.25 and m.modes == ("optical+sar",) and m.head == "open"
    assert m.precision == "fp16" and m.engines == () and m.vocab_cache is None and m.embedding_dim is None
    assert m.text == TextSpec() and m.text.max_length == 16 and m.text.pad_id == 0
    assert m.text.prompt_templates == ("{}",) and m.weights.file is None
    spec = ModalitySpec.coerce({})
    assert (spec.optical_dtype, spec.optical_scale, spec.sar_units) == ("uint8", 255.0, "db")
    # a half-filled limits object gets the other default, an explicit value wins
    assert Manifest.from_dict(_minimal(limits={"max_vocab": 300})).limits == Limits(32, 300)
    assert EngineEntry.from_dict({"file": "e.engine"}).flavour == "tensorrt"
    # absent optional modality keys stay absent when written back
    assert ModalitySpec.coerce({"bands": ["vv"], "mean": [-12.0], "std": [5.0]}).to_dict() == {
        "bands": ["vv"], "mean": [-12.0], "std": [5.0]}


def test_manifest_is_frozen() -> None:
    m = Manifest.from_dict(_minimal())
    with pytest.raises(FrozenInstanceError):
        m.model = "other"  # type: ignore[misc]


# -------------------------------------------------------------------------------------- upgrade
def test_version_1_manifest_is_upgraded() -> None:
    v1 = _minimal(format_version=1, engines=[V1_ENGINE])
    before = copy.deepcopy(v1)
    m = Manifest.from_dict(v1)
    assert v1 == before                                                            # the input is not changed
    assert m.format_version == FORMAT_VERSION == 2
    (e,) = m.engines
    assert (e.flavour, e.version, e.targets, e.built_on) == ("tensorrt", "10.13.0", ("9.0",), "NVIDIA H100")
    assert "tensorrt_version" not in e.to_dict() and e.profiles["optical"]["max"] == [32, 3, 64, 64]
    assert m.engine("image") == e and m.engine("text") is None
    assert upgrade_v1_to_v2(v1)["format_version"] == 2


def test_version_1_bundle_loads_with_its_seal(tmp_path: Path) -> None:
    d = tmp_path / "v1"
    d.mkdir()
    (d / "image.onnx").write_bytes(b"graph")
    (d / "image.fp16.engine").write_bytes(b"engine")
    written = write_manifest(d, _minimal(format_version=1, engines=[V1_ENGINE]))
    b = Bundle.load(d)
    assert b.manifest["format_version"] == 1 and b.digest == written[MANIFEST_HASH_KEY]  # on-disk form kept
    assert b.meta.format_version == 2 and b.meta.engines[0].version == "10.13.0"


def test_unknown_and_future_versions_are_refused() -> None:
    for v in (0, 99, None, "2", True):
        with pytest.raises(BundleError, match=f"format version {v!r} is not supported"):
            Manifest.from_dict(_minimal(format_version=v))


# -------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("drop, key", [
    ("model", "model"), ("task", "task"), ("tile", "tile"), ("graphs", "graphs"), ("files", "files"),
    ("modalities", "modalities"), ("text", "text"),
])
def test_missing_required_key_is_named(drop: str, key: str) -> None:
    d = _minimal()
    del d[drop]
    with pytest.raises(BundleError, match=f"manifest lacks the key '{key}'"):
        Manifest.from_dict(d, source="b/manifest.json")


def test_missing_nested_key_is_named_with_its_path() -> None:
    with pytest.raises(BundleError, match=r"b/manifest.json: manifest lacks the key 'tile.size'"):
        Manifest.from_dict(_minimal(tile={"overlap": 0.1}), source="b/manifest.json")
    with pytest.raises(BundleError, match=r"lacks the key 'graphs.image.fp32'"):
        Manifest.from_dict(_minimal(graphs={"image": {"fp16": "x.onnx"}}))
    with pytest.raises(BundleError, match=r"lacks the key 'engines\[0\].file'"):
        Manifest.from_dict(_minimal(engines=[{"graph": "image"}]))


@pytest.mark.parametrize("changes, key, want", [
    ({"tile": {"size": "64"}}, "tile.size", "an integer"),
    ({"tile": {"size": True}}, "tile.size", "an integer"),
    ({"limits": {"max_batch": 8.5}}, "limits.max_batch", "an integer"),
    ({"model": 3}, "model", "a string"),
    ({"graphs": []}, "graphs", "an object"),
    ({"modes": "optical"}, "modes", "a list"),
    ({"modes": ["optical", 1]}, "modes[1]", "a string"),
    ({"modalities": {"sar": {"mean": ["x"]}}}, "modalities.sar.mean[0]", "a number"),
    ({"text": {"max_length": None}}, "text.max_length", "an integer"),
    ({"graphs": {"image": {"fp32": "i.onnx", "inputs": {"optical": {"dtype": "float32", "shape": [None]}}}}},
     "graphs.image.inputs.optical.shape[0]", "an integer or an axis name"),
    ({"default_vocabulary": [{"synonyms": []}]}, "default_vocabulary[0]", 'an object with a string "name"'),
    ({"weights": {"trained": "yes"}}, "weights.trained", "true or false"),
])
def test_ill_typed_values_are_refused_with_the_key(changes: dict[str, Any], key: str, want: str) -> None:
    with pytest.raises(BundleError) as ei:
        Manifest.from_dict(_minimal(**changes))
    assert f"manifest key {key!r} is " in str(ei.value) and f"expected {want}" in str(ei.value)


def test_bad_task_and_tile_values_are_refused() -> None:
    with pytest.raises(BundleError, match="'task' is 'panoptic'"):
        Manifest.from_dict(_minimal(task="panoptic"))
    with pytest.raises(BundleError, match="0 <= overlap < 1"):
        Manifest.from_dict(_minimal(tile={"size": 64, "overlap": 1.5}))
    with pytest.raises(BundleError, match="limits must be >= 1"):
        Manifest.from_dict(_minimal(limits={"max_batch": 0}))


def test_bundle_load_names_the_ill_typed_key(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    (d / "image.onnx").write_bytes(b"graph")
    write_manifest(d, _minimal(limits={"max_batch": "lots"}))
    with pytest.raises(BundleError, match=r"manifest.json: manifest key 'limits.max_batch' is 'lots'"):
        Bundle.load(d)
