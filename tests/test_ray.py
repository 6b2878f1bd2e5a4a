"""Batch runs on Ray Data (rsvl_runtime.ray_runner): same outputs and summary as the local run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

ray = pytest.importorskip("ray")

from rsvl_runtime import outputs
from rsvl_runtime.batch import read_summary, records_from_manifest, run_local
from rsvl_runtime.ray_runner import gpus_per_actor, run_ray

from ._batch_fixtures import write_scenes

GOOD = ["scene0", "scene1", "scene2"]


def _descendants(pid: int) -> set[int]:
    """Pids of every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest):
    before = _descendants(os.getpid())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def finish() -> None:
        started = _descendants(os.getpid()) - before  # Ray's processes and workers
        ray.shutdown()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.2)
        left = [p for p in started if _alive(p)]
        assert not left, f"Ray processes left behind: {left}"

    request.addfinalizer(finish)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("ray_scenes"))


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_ray_matches_local_and_resumes(ray_cluster, scenes: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    bundle = tiny_bundle
    recs = records_from_manifest(scenes)
    assert gpus_per_actor() == 0  # no GPU here: the actors must not wait for one
    local = run_local(recs, bundle, tmp_path / "local", threads=1)
    res = run_ray(recs, bundle, tmp_path / "ray", num_actors=2)
    assert ray.is_initialized()  # it joined our instance and left it running
    assert res.info["actors"] == 2 and res.info["gpus_per_actor"] == 0
    assert [(r["scene"], r["status"]) for r in res.rows] == [(r["scene"], r["status"]) for r in local.rows]
    rows_l, rows_r = read_summary(tmp_path / "local"), read_summary(tmp_path / "ray")
    for a, b in zip(rows_l, rows_r):
        for k in a:
            if k not in ("seconds", "out_dir"):
                assert a[k] == b[k], (a["scene"], k)
    bad = next(r for r in rows_r if r["scene"] == "bad")
    assert bad["status"] == "error" and "not co-registered" in bad["error"]
    for sid in GOOD:
        assert outputs.is_complete(tmp_path / "ray" / sid)
        np.testing.assert_array_equal(_labels(tmp_path / "ray" / sid / "labels.tif"),
                                      _labels(tmp_path / "local" / sid / "labels.tif"))
        np.testing.assert_array_equal(_labels(tmp_path / "ray" / sid / "scores.tif"),
                                      _labels(tmp_path / "local" / sid / "scores.tif"))
        cl = json.loads((tmp_path / "local" / sid / "classes.json").read_text())
        cr = json.loads((tmp_path / "ray" / sid / "classes.json").read_text())
        assert cl["classes"] == cr["classes"]
    # a rerun on Ray skips the complete scenes; an incomplete one is redone
    outputs.clear_done(tmp_path / "ray" / "scene2")
    res2 = run_ray(recs, bundle, tmp_path / "ray", num_actors=1)
    assert [r["status"] for r in res2.rows] == ["skipped", "error", "skipped", "ok"]
    assert outputs.is_complete(tmp_path / "ray" / "scene2")
