"""``rsvl-infer --inputs``: many scenes in one job, in-process or on Ray.

    rsvl-infer --bundle DIR --inputs scenes.csv --out DIR              # one process
    rsvl-infer --bundle DIR --inputs scenes/ --out DIR --ray           # local Ray (all cores)
    rsvl-infer --bundle DIR --inputs 'data/{id}_{modality}.tif' --out DIR --ray auto   # a running cluster

``--inputs``: a manifest (CSV/JSON with ``id, optical, sar``), a folder with ``optical/`` and
``sar/`` subfolders (paired by file name) or ``<id>/optical.tif`` scene folders, or a pattern
with ``{modality}``. Each scene goes to ``OUT/<id>/``; complete scenes are skipped (rerun the
same command to resume); ``OUT/summary.csv`` (+ ``summary.parquet``) lists every scene.

:func:`add_batch_arguments` adds the options to ``rsvl-infer``'s parser and :func:`run_batch`
runs them; the per-scene options (``--vocab``, ``--bands``, ``--nodata``, ``--backend`` ...) are
``rsvl-infer``'s own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: ``--ray`` without an address: start (or join) a local Ray instance.
LOCAL_RAY = "local"


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--inputs``, ``--ray [ADDRESS]``, ``--num-actors``, ``--overwrite`` to ``parser``."""
    g = parser.add_argument_group("batch (many scenes)")
    g.add_argument("--inputs", help="scenes: manifest .csv/.json (id,optical,sar), a folder with optical/ and sar/ "
                                    "(or <id>/optical.tif), or a pattern like 'data/{id}_{modality}.tif'; "
                                    "replaces --optical/--sar")
    g.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="run the scenes on Ray: no value = local Ray, 'auto' or ray://host:10001 = a cluster")
    g.add_argument("--num-actors", type=int, default=None,
                   help="Ray actors, each holding one loaded model (default: one per GPU, else one per CPU)")
    g.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs reserved per Ray actor")
    g.add_argument("--overwrite", action="store_true", help="rerun scenes whose output folder is already complete")


def parse_bands(text: str | None, flag: str = "--bands") -> list[int] | None:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (None for no value); the one band-list parser of ``rsvl-infer``."""
    if not text:
        return None
    try:
        return [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give 1-based band indexes separated by commas, e.g. 3,2,1") from None


def _vocab(args: argparse.Namespace) -> Any:
    if getattr(args, "vocab", None) is not None:
        return args.vocab
    if getattr(args, "vocab_file", None):
        from .vocabulary import load_vocabulary_file

        return load_vocabulary_file(args.vocab_file)
    return None


def scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """``predict_raster`` options from ``rsvl-infer``'s arguments (one scene or a batch)."""
    nodata = getattr(args, "nodata", None)
    sar_nodata = getattr(args, "sar_nodata", None)
    opts: dict[str, Any] = {
        "tile": getattr(args, "tile", None), "overlap": getattr(args, "overlap", None),
        "bands": parse_bands(getattr(args, "bands", None), "--bands"),
        "sar_bands": parse_bands(getattr(args, "sar_bands", None), "--sar-bands"),
        "sar_units": getattr(args, "sar_units", None), "write_scores": not getattr(args, "no_scores", False),
        "cog": False if getattr(args, "no_cog", False) else None,
        "sar_check": not getattr(args, "no_sar_check", False), "progress": False,
    }
    if nodata is not None or sar_nodata is not None:
        opts["nodata"] = {"optical": nodata, "sar": sar_nodata}
    return {k: v for k, v in opts.items() if v is not None}


def run_batch(args: argparse.Namespace) -> int:
    """Run ``--inputs`` (locally or with ``--ray``); prints the summary. 0 when every scene is ok or
    skipped, 1 when some failed (see OUT/summary.csv)."""
    from .batch import discover_records, run_local
    from .segmenter import open_bundle

    if getattr(args, "optical", None) or getattr(args, "sar", None):
        raise ValueError("give either --inputs (many scenes) or --optical/--sar (one scene), not both")
    if getattr(args, "refer", None):
        raise ValueError("--inputs runs semantic bundles; referring (--refer) runs one scene at a time")
    if getattr(args, "align", False):
        raise ValueError("--align is not available with --inputs: co-register the pairs first "
                         "(or run the scenes one by one with --align)")
    bundle = open_bundle(args.bundle, getattr(args, "expect_digest", None))
    records = discover_records(args.inputs, modes=bundle.modes)
    if not records:
        raise ValueError(f"--inputs {args.inputs}: no scenes found")
    common: dict[str, Any] = {
        "vocab": _vocab(args), "backend": getattr(args, "backend", "auto"),
        "precision": getattr(args, "precision", "auto"), "batch": getattr(args, "batch", None),
        "threads": getattr(args, "threads", None), "options": scene_options(args),
        "resume": not getattr(args, "overwrite", False)}
    if getattr(args, "ray", None):
        from .ray_runner import run_ray

        address = None if args.ray == LOCAL_RAY else args.ray
        result = run_ray(records, bundle.root, args.out, address=address,
                         num_actors=getattr(args, "num_actors", None),
                         cpus_per_actor=getattr(args, "cpus_per_actor", None), **common)
    else:
        result = run_local(records, bundle, args.out, **common)
    print(result.summary_line())
    failed = [r for r in result.rows if r["status"] == "error"]
    for r in failed:
        print(f"  {r['scene']}: {r['error']}", file=sys.stderr)
    if failed:
        print(f"rsvl-infer: {len(failed)} scene(s) failed; see {result.summary_csv}", file=sys.stderr)
    return 1 if failed else 0
