"""The big-scene check behind the README's "Guarantees" numbers (a command, not a CI test):

    python -m benchmarks.big_scene [--size 20000] [--bundle DIR] [--out /tmp/rsvl-big] [--no-cog]

1. writes a ``--size``² synthetic optical+SAR pair (streamed, bounded memory) unless present;
2. exports the shipped tsmnet-tiny (tile 256, FP32, no engine) unless ``--bundle`` is given;
3. runs ``rsvl-infer`` end to end in a child process: wall time and peak RSS (``wait4``);
4. reruns into another folder, sends SIGINT (Ctrl-C) once the checkpoint passes
   ``--interrupt-at`` (default 50 %) of the rows, then reruns the same command: it resumes
   from the checkpoint; prints its time against the full run and whether the labels are
   identical (sha256 of the decoded pixels).

Prints one JSON report. Checkpoints every ``--checkpoint-s`` seconds (``RSVL_CHECKPOINT_SECONDS``).
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


def _infer_cmd(bundle: Path, scene: Any, out: Path, no_cog: bool, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "rsvl_runtime.cli", "--bundle", str(bundle), "--optical", str(scene.optical),
           "--sar", str(scene.sar), "--out", str(out), "--quiet"]
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
    ap.add_argument("--interrupt-at", type=float, default=0.5)
    ap.add_argument("--checkpoint-s", type=float, default=30.0)
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
    env = {**os.environ, "RSVL_CHECKPOINT_SECONDS": str(args.checkpoint_s), "HF_HUB_OFFLINE": "1"}

    full = _run(_infer_cmd(bundle, scene, out / "full", args.no_cog, args.threads), env)
    cmd = _infer_cmd(bundle, scene, out / "resumed", args.no_cog, args.threads)
    cut = _run(cmd, env, interrupt_rows=int(args.interrupt_at * args.size), out=out / "resumed")
    rerun = _run(cmd, env)
    done = json.loads((out / "resumed" / "done.json").read_text())
    same = _labels_hash(out / "full" / "labels.tif") == _labels_hash(out / "resumed" / "labels.tif")
    report = {"size": f"{args.size}x{args.size}", "cpu": _cpu_model(), "cpus": os.cpu_count(),
              "scene_write_s": round(t_scene, 1), "full_run": full, "interrupted_run": cut,
              "rerun": {**rerun, "resumed_at_row": done["timings"].get("resumed_at_row")},
              "rerun_over_full": round(rerun["seconds"] / full["seconds"], 2), "labels_identical": same}
    print(json.dumps(report, indent=2))
    return 0 if same and full["exit"] == rerun["exit"] == 0 and cut["exit"] == 130 else 1


if __name__ == "__main__":
    sys.exit(main())
