"""The scale-out check behind the README's "Scaling out" numbers:

    python -m benchmarks.scaleout --bundle DIR [--scenes 20] [--size 256] [--out /tmp/scaleout]

Writes ``--scenes`` synthetic scenes (one of them a misregistered pair), runs the job in-process
and on a local Ray cluster, checks that every ``labels.tif`` is identical and that the bad pair
is reported without failing the job, reruns to show that complete scenes are skipped (resume),
and prints the timings (``ray.init`` included) as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import rasterio

    from rsvl_runtime.batch import records_from_manifest, run_local
    from rsvl_runtime.ray_runner import run_ray
    from rsvl_train.data.synthetic import write_scene_job

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="/tmp/rsvl-scaleout")
    args = ap.parse_args(argv)
    out = Path(args.out)
    manifest = write_scene_job(out / "data", args.scenes - 1, args.size, args.size, seed=100, bad_kind="resolution")
    recs = records_from_manifest(manifest)

    t = time.perf_counter()
    local = run_local(recs, args.bundle, out / "local", threads=1)
    t_local = time.perf_counter() - t
    t = time.perf_counter()
    ray_res = run_ray(recs, args.bundle, out / "ray", num_actors=2, threads=1)
    t_ray = time.perf_counter() - t
    t = time.perf_counter()
    rerun = run_local(recs, args.bundle, out / "local", threads=1)
    t_rerun = time.perf_counter() - t

    same = 0
    for r in recs:
        if r.id == "bad":
            continue
        with rasterio.open(out / "local" / r.id / "labels.tif") as a, rasterio.open(out / "ray" / r.id / "labels.tif") as b:
            same += int(np.array_equal(a.read(), b.read()))

    def statuses(res):
        return {row["scene"]: row["status"] for row in res.rows}

    report = {"scenes": len(recs), "identical_labels": same, "of": len(recs) - 1,
              "local_status": statuses(local), "ray_status": statuses(ray_res),
              "rerun_status": sorted(set(statuses(rerun).values())),
              "seconds": {"in_process": round(t_local, 1), "ray_including_init": round(t_ray, 1),
                          "rerun_skipping_complete": round(t_rerun, 1)}}
    print(json.dumps(report, indent=2))
    return 0 if same == len(recs) - 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
