"""The big-scene check behind the README's "Guarantees" numbers (a command, not a CI test):

    python -m benchmarks.big_scene [--size 20000] [--bundle DIR] [--out /tmp/rsvl-big] [--no-cog]
                                   [--engine-tiles 256] [--no-resume-check] [--pipeline auto|serial|overlap]

1. writes a ``--size``² synthetic optical+SAR pair (streamed, bounded memory) unless present;
2. exports the shipped tsmnet-tiny (tile 256, FP32, no engine) unless ``--bundle`` is given;
3. measures the bare engine (``Segmenter.predict_logits`` on one real batch of the scene, repeated
   for ``--engine-tiles`` tiles, at ``rsvl-infer``'s batch and threads) before and after step 4,
   in this process while nothing else runs: its tiles/s is the mean of the two;
4. runs ``rsvl-infer`` end to end in a child process: wall time, peak RSS (``wait4``), tiles/s
   (tiles / the run's ``total_s``: from the checks of the inputs to ``done.json``; also with the
   process start-up, bundle verification and session creation), its ratio to the bare engine's
   tiles/s, the engine's share of the run (``predict_s / total_s``: with the serial pipeline the
   engine runs alone, so that is its bare speed at that moment) and the per-stage seconds of its
   ``done.json`` (read, normalise, infer, blend, postprocess, write, writer-thread wait,
   overviews / COG encode, reports);
5. unless ``--no-resume-check``: reruns into another folder, sends SIGINT (Ctrl-C) once the
   checkpoint passes ``--interrupt-at`` (default 50 %) of the rows, then reruns the same command:
   it resumes from the checkpoint; prints its time against the full run and whether the labels
   are identical (sha256 of the decoded pixels).

Prints one JSON report. The full run checkpoints at ``rsvl-infer``'s own interval (60 s,
``RSVL_CHECKPOINT_SECONDS`` when set), as a user's run would; the resume check's runs every
``--checkpoint-s`` seconds (default 30), so that the interrupted one has a checkpoint to resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _infer_cmd(bundle: Path, scene: Any, out: Path, no_cog: bool, threads: int | None,
               pipeline: str = "auto") -> list[str]:
    cmd = [sys.executable, "-m", "rsvl_runtime.cli", "--bundle", str(bundle), "--optical", str(scene.optical),
           "--sar", str(scene.sar), "--out", str(out), "--quiet", "--pipeline", pipeline]
    if no_cog:
        cmd.append("--no-cog")
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def _progress_rows(out: Path, pid: int) -> int:
    try:
        doc = json.loads((out.parent / f".{out.name}.rsvl-tmp-{pid}" / "progress.json").read_text())
        return int(doc["rows"])
    except (OSError, ValueError, KeyError):
        return 0


def _run(cmd: list[str], env: dict[str, str], interrupt_rows: int | None = None,
         out: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; optionally SIGINT it once its checkpoint reaches ``interrupt_rows``."""
    t0 = time.perf_counter()
    # SIGINT back to its default in the child: a command started in the background by a
    # non-interactive shell inherits SIGINT ignored, and the Ctrl-C below would be lost
    child = subprocess.Popen(cmd, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rows = 0
    if interrupt_rows is not None and out is not None:
        while child.poll() is None:
            rows = _progress_rows(out, child.pid)
            if rows >= interrupt_rows:
                child.send_signal(signal.SIGINT)
                break
            time.sleep(0.5)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.perf_counter() - t0, 1), "exit": child.returncode,
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2), "interrupted_at_row": rows or None}


def _labels_hash(path: Path) -> str:
    import rasterio
    from rasterio.windows import Window

    h = hashlib.sha256()
    with rasterio.open(path) as ds:
        for y in range(0, ds.height, 1024):
            h.update(ds.read(1, window=Window(0, y, ds.width, min(1024, ds.height - y))).tobytes())
    return h.hexdigest()


#: done.json timing keys of the stage breakdown, in pipeline order.
STAGES = ("read_s", "normalise_s", "batch_s", "predict_s", "blend_s", "postprocess_s", "write_s", "hash_s", "sink_wait_s",
          "overviews_s", "cog_write_s", "rasters_finalize_s", "reports_s", "inference_s", "total_s")


def engine_tiles_per_s(bundle: Path, scene: Any, tiles: int, threads: int | None) -> dict[str, Any]:
    """The bare engine: ``predict_logits`` on one real normalised batch of the scene, repeated
    for ``tiles`` tiles at ``rsvl-infer``'s default batch (one warm-up call first)."""
    import rasterio

    from rsvl_runtime.reading import Batch, iter_scene_items, prepare_sources
    from rsvl_runtime.segmenter import Segmenter
    from rsvl_runtime.tiling import TileGrid

    seg = Segmenter.load(bundle, threads=threads)
    with rasterio.open(scene.optical) as ds:
        grid = TileGrid(ds.height, ds.width, seg.tile, seg.overlap)
    opts = seg.scene_options({}, class_names=[c.name for c in seg.classes])
    items = iter_scene_items(prepare_sources(scene.optical, scene.sar, opts.inputs), grid, seg.batch)
    try:
        first = next(i for i in items if isinstance(i, Batch))
    finally:
        items.close()
    seg.predict_logits(first.optical, first.sar)
    done, t0 = 0, time.perf_counter()
    while done < tiles:
        n = min(len(first.tiles), tiles - done)
        seg.predict_logits(None if first.optical is None else first.optical[:n],
                           None if first.sar is None else first.sar[:n])
        done += n
    seconds = time.perf_counter() - t0
    return {"tiles": done, "seconds": round(seconds, 2), "tiles_per_s": round(done / seconds, 2),
            "batch": seg.batch, "backend": seg.backend, "scene_tiles": grid.n_tiles}


def stage_seconds(done: dict[str, Any]) -> dict[str, float]:
    """The stage breakdown (:data:`STAGES`) of a run's ``done.json``."""
    t = done.get("timings", {})
    return {k: round(float(t[k]), 2) for k in STAGES if k in t}


def _bundle(args: argparse.Namespace, out: Path) -> Path:
    if args.bundle:
        return Path(args.bundle)
    bundle = out / "bundle-tsmnet-tiny-256"
    if not (bundle / "manifest.json").exists():
        from rsvl_export.pipeline import ExportOptions, export_bundle

        export_bundle(ExportOptions(model="tsmnet-tiny", tile=256, precision="fp32", engine="none",
                                    max_batch=16, out=str(bundle)))
    return bundle


def main(argv: list[str] | None = None) -> int:
    from rsvl_train.data.synthetic import write_scene

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--bundle", help="bundle folder (default: export the shipped tsmnet-tiny)")
    ap.add_argument("--out", default="/tmp/rsvl-big")
    ap.add_argument("--no-cog", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pipeline", choices=("auto", "serial", "overlap"), default="auto",
                    help="rsvl-infer --pipeline (auto: serial with a CPU engine)")
    ap.add_argument("--interrupt-at", type=float, default=0.5)
    ap.add_argument("--checkpoint-s", type=float, default=30.0, help="checkpoint interval of the resume check's runs")
    ap.add_argument("--engine-tiles", type=int, default=256, help="tiles of each bare-engine measurement")
    ap.add_argument("--no-resume-check", action="store_true", help="skip the interrupt + resume runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    scene_dir = out / f"scene-{args.size}"
    t0 = time.perf_counter()
    if (scene_dir / "sar.tif").exists():
        scene = SimpleNamespace(optical=scene_dir / "optical.tif", sar=scene_dir / "sar.tif")
    else:
        scene = write_scene(scene_dir, args.size, args.size, seed=7)
    t_scene = time.perf_counter() - t0
    bundle = _bundle(args, out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the full run: rsvl-infer's own checkpoint interval
    resume_env = {**env, "RSVL_CHECKPOINT_SECONDS": str(args.checkpoint_s)}

    before = engine_tiles_per_s(bundle, scene, args.engine_tiles, args.threads)
    full = _run(_infer_cmd(bundle, scene, out / "full", args.no_cog, args.threads, args.pipeline), env)
    after = engine_tiles_per_s(bundle, scene, args.engine_tiles, args.threads)
    engine = (before["tiles_per_s"] + after["tiles_per_s"]) / 2
    tiles = before["scene_tiles"]
    full_done = json.loads((out / "full" / "done.json").read_text()) if full["exit"] == 0 else {}
    run_s = float(full_done.get("timings", {}).get("total_s", 0.0))  # the scene run, without start-up
    e2e = tiles / run_s if run_s > 0 else 0.0
    report: dict[str, Any] = {
        "size": f"{args.size}x{args.size}", "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "command": " ".join(_infer_cmd(bundle, scene, out / "full", args.no_cog, args.threads, args.pipeline)),
        "scene_write_s": round(t_scene, 1), "tiles": tiles, "batch": before["batch"],
        "engine": {"backend": before["backend"], "before": before, "after": after,
                   "tiles_per_s": round(engine, 2)},
        "full_run": {**full, "run_s": round(run_s, 2), "tiles_per_s": round(e2e, 2),
                     "tiles_per_s_with_startup": round(tiles / full["seconds"], 2) if full["seconds"] else None,
                     "stages_s": stage_seconds(full_done)},
        "end_to_end_over_engine": round(e2e / engine, 3) if engine > 0 else None,
        # the serial pipeline runs the engine alone, so its own seconds in the run are the bare
        # engine's at that moment: a ratio free of the machine's drift between measurements
        "engine_share_of_run": (round(float(full_done["timings"]["predict_s"]) / run_s, 3)
                                if run_s > 0 and full_done.get("raster", {}).get("pipeline") == "serial" else None),
        "pipeline": full_done.get("raster", {}).get("pipeline")}
    ok = full["exit"] == 0
    if not args.no_resume_check:
        cmd = _infer_cmd(bundle, scene, out / "resumed", args.no_cog, args.threads, args.pipeline)
        cut = _run(cmd, resume_env, interrupt_rows=int(args.interrupt_at * args.size), out=out / "resumed")
        rerun = _run(cmd, resume_env)
        done = json.loads((out / "resumed" / "done.json").read_text())
        same = _labels_hash(out / "full" / "labels.tif") == _labels_hash(out / "resumed" / "labels.tif")
        report.update(interrupted_run=cut, rerun={**rerun, "resumed_at_row": done["timings"].get("resumed_at_row")},
                      rerun_over_full=round(rerun["seconds"] / full["seconds"], 2), labels_identical=same)
        ok = ok and same and rerun["exit"] == 0 and cut["exit"] == 130
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
