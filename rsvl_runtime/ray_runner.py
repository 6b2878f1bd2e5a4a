"""Scale-out batch inference with Ray Data: one loaded model per actor, one scene per call.

    from rsvl_runtime.batch import discover_records
    from rsvl_runtime.ray_runner import run_ray
    res = run_ray(discover_records("scenes.csv"), "bundles/tsmnet-fp16", "out/", address="auto")

The pipeline is ``ray.data.from_items(records).map_batches(SceneActor, batch_size=1,
compute=ActorPoolStrategy(size=n), num_gpus=g)``: :class:`SceneActor` loads the bundle and its
engine once in ``__init__`` and runs :func:`rsvl_runtime.batch.process_scene` (the very function
the local runner uses) per scene. ``g`` is 1 only when the cluster has a GPU
(``ray.cluster_resources()["GPU"] >= 1``) — asking for a GPU that does not exist makes Ray wait
forever. Outputs, resume and summary files are the same as :func:`rsvl_runtime.batch.run_local`.

Ray is imported lazily: ``rsvl_runtime`` itself never needs it. The output folder must be on a
filesystem that every Ray node sees (the actors write the scene folders themselves).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .batch import ModelSpec, load_segmenter, process_scene
from .batch_plan import SceneRecord, as_records
from .batch_summary import BatchResult, write_summary
from .bundle import Bundle

log = logging.getLogger("rsvl.ray")


class SceneActor:
    """A Ray Data actor: loads the model once, then segments one scene per call."""

    def __init__(self, model: ModelSpec, out_dir: str, options: Mapping[str, Any] | None = None,
                 resume: bool = True) -> None:
        self.seg = load_segmenter(model)
        self.out_dir = out_dir
        self.options = dict(options or {})
        self.resume = resume

    def __call__(self, rows: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for item in rows["record"]:
            rec = SceneRecord.from_dict(json.loads(str(item)))
            row = process_scene(self.seg, rec, self.out_dir, self.options, resume=self.resume)
            out.append(json.dumps(row))
        return {"row": np.array(out, dtype=object)}


def gpus_per_actor() -> int:
    """1 when the connected cluster has at least one GPU, else 0 (never wait for a missing GPU)."""
    import ray

    return 1 if float(ray.cluster_resources().get("GPU", 0) or 0) >= 1 else 0


def run_ray(records: Iterable[SceneRecord | Mapping[str, Any]], bundle: str | os.PathLike[str] | ModelSpec,
            out_dir: str | os.PathLike[str], address: str | None = None, num_actors: int | None = None, *,
            options: Mapping[str, Any] | None = None, resume: bool = True, **kwargs: Any) -> BatchResult:
    """Run the records on a Ray cluster (``address``: ``"auto"``, ``"ray://host:10001"``, or None for
    the running/local one) with ``num_actors`` model-holding actors.

    ``kwargs``: ``cpus_per_actor``, ``ray_init_kwargs`` (for ``ray.init``) and the model's
    :class:`~rsvl_runtime.batch.ModelSpec` fields (``vocab``, ``backend``, ``precision``,
    ``batch``, ``threads``, ``expect_digest``), as :func:`rsvl_runtime.batch.run_local` takes them.

    ``num_actors`` default: one per GPU when the cluster has GPUs, else cluster CPUs //
    ``cpus_per_actor`` (capped by the number of scenes). Per actor: ``cpus_per_actor`` CPUs
    reserved (default: 1 with a GPU, else cluster CPUs // actors; ONNX Runtime gets as many
    threads unless ``threads``) and 1 GPU when the cluster has one. Records with an error are
    settled on the driver; the others go to the actors, which skip complete folders. Writes the same per-scene folders and
    ``summary.csv`` / ``summary.parquet`` as :func:`rsvl_runtime.batch.run_local`. ``ray.init`` is
    called only when Ray is not initialised, and only what this call started is shut down.
    """
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("Ray is not installed: pip install 'ray[data]>=2.40' (or run without --ray)") from e

    t0 = time.perf_counter()
    cpus_per_actor = kwargs.pop("cpus_per_actor", None)
    ray_init_kwargs = kwargs.pop("ray_init_kwargs", None)
    model = ModelSpec.of(bundle, **kwargs)
    recs = as_records(records)
    out_path = Path(out_dir).resolve()
    out_path.mkdir(parents=True, exist_ok=True)
    bundle_path = str(Path(model.bundle.root if isinstance(model.bundle, Bundle) else model.bundle).resolve())
    threads = model.threads

    rows: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, SceneRecord]] = []
    for i, rec in enumerate(recs):
        if rec.error:  # settled here; complete folders are checked by the actors (against their vocabulary)
            rows[i] = process_scene(None, rec, out_path)
        else:
            todo.append((i, rec))

    started = False
    info: dict[str, Any] = {"runner": "ray"}
    try:
        if todo:
            if not ray.is_initialized():
                kwargs = {"include_dashboard": False, "log_to_driver": False, **dict(ray_init_kwargs or {})}
                ray.init(address=address, **kwargs)
                started = True
            g = gpus_per_actor()
            res = ray.cluster_resources()
            cpus = float(res.get("CPU", 1))
            if num_actors is None:
                n = int(res.get("GPU", 1)) if g else int(cpus // float(cpus_per_actor or 1))
            else:
                n = int(num_actors)
            n = max(1, min(n, len(todo)))
            cpa = float(cpus_per_actor) if cpus_per_actor else (1.0 if g else max(1.0, cpus // n))
            n_threads = threads if threads is not None else (None if g else max(1, int(cpa)))
            info.update(actors=n, gpus_per_actor=g, cpus_per_actor=cpa, threads=n_threads,
                        cluster=dict(res))
            log.info("ray: %d scenes on %d actors (%s GPU, %s CPU each)", len(todo), n, g, cpa)
            ds = ray.data.from_items([{"index": i, "record": json.dumps(rec.to_dict())} for i, rec in todo])
            ds = ds.map_batches(
                SceneActor, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n), num_gpus=g, num_cpus=cpa,
                fn_constructor_kwargs={"model": replace(model, bundle=bundle_path, threads=n_threads),
                                       "out_dir": str(out_path), "options": dict(options or {}),
                                       "resume": resume})
            by_id = {rec.id: i for i, rec in todo}
            for item in ds.iter_rows():
                row = json.loads(str(item["row"]))
                rows[by_id[row["scene"]]] = row
                log.info("%s: %s", row["scene"], row["status"])
    finally:
        ordered = [rows[i] for i in sorted(rows)]
        csv_path, pq_path = write_summary(out_path, ordered)
        if started:
            ray.shutdown()
    result = BatchResult(ordered, out_path, time.perf_counter() - t0, csv_path, pq_path, info)
    log.info("%s", result.summary_line())
    return result
