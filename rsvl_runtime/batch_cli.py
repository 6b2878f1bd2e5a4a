"""``rsvl-batch`` (also ``rsvl-infer batch``): many scenes in one job, in-process or on Ray.

    rsvl-batch --bundle DIR --inputs scenes.csv --out DIR              # one process
    rsvl-batch --bundle DIR --inputs scenes/ --out DIR --ray           # local Ray (all cores)
    rsvl-batch --bundle DIR --inputs 'data/{id}_{modality}.tif' --out DIR --ray auto   # a running cluster

``--inputs``: a manifest (CSV/JSON with ``id, optical, sar``), a folder with ``optical/`` and
``sar/`` subfolders (paired by file name) or ``<id>/optical.tif`` scene folders, or a pattern
with ``{modality}``. Each scene goes to ``OUT/<id>/``; complete scenes are skipped (rerun the
same command to resume); ``OUT/summary.csv`` (+ ``summary.parquet``) lists every scene. The
per-scene flags (``--vocab``, ``--bands``, ``--nodata``, ``--backend`` ...) are ``rsvl-infer``'s.

One direction: plan (:mod:`rsvl_runtime.batch_plan`: the scene records) -> run
(:func:`rsvl_runtime.batch.run_local`, or :func:`rsvl_runtime.ray_runner.run_ray` with
``--ray``) -> summary (:mod:`rsvl_runtime.batch_summary`, printed by :func:`report`).
Exit status: 0 when every scene is ok or skipped, 1 when some failed, 2 for an error before
any scene ran.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli_common import (
    CACHE_HELP,
    VOCAB_FILE_HELP,
    HelpFormatter,
    add_engine_arguments,
    add_scene_arguments,
    add_vocabulary_arguments,
    run_guarded,
    scene_options,
    vocabulary,
)
from .logs import add_verbosity_arguments

#: ``--ray`` without an address: start (or join) a local Ray instance.
LOCAL_RAY = "local"


def add_batch_arguments(parser: argparse.ArgumentParser, title: str = "batch (many scenes)",
                        required: bool = False) -> None:
    """Add ``--inputs``, ``--ray [ADDRESS]``, ``--num-actors``, ``--cpus-per-actor``, ``--overwrite``."""
    g = parser.add_argument_group(title)
    g.add_argument("--inputs", required=required,
                   help="scenes: manifest .csv/.json (id,optical,sar), a folder with optical/ and sar/ "
                        "(or <id>/optical.tif), or a pattern like 'data/{id}_{modality}.tif'")
    g.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="run the scenes on Ray: no value = local Ray, 'auto' or ray://host:10001 = a cluster")
    g.add_argument("--num-actors", type=int, default=None,
                   help="Ray actors, each holding one loaded model (default: one per GPU, else one per CPU)")
    g.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs reserved per Ray actor")
    g.add_argument("--overwrite", action="store_true", help="rerun scenes whose output folder is already complete")


def build_parser(prog: str = "rsvl-batch") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter,
                                epilog=f"{VOCAB_FILE_HELP}\n\n{CACHE_HELP}")
    p.add_argument("--bundle", required=True, help="semantic (TSMNet) bundle folder or .zip written by rsvl-export")
    p.add_argument("--out", required=True, help="output folder: OUT/<id>/ per scene and OUT/summary.csv")
    add_batch_arguments(p, required=True)
    add_vocabulary_arguments(p)
    add_engine_arguments(p)
    add_scene_arguments(p)
    add_verbosity_arguments(p, quiet_help="only warnings, errors and the summary")
    return p


# ----------------------------------------------------------------------------- plan -> run -> summary
def plan(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The verified bundle and the scene records of ``--inputs`` (records with problems carry
    their error: they are reported, never stop the job)."""
    from .batch_plan import discover_records
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
    return bundle, records


def run(args: argparse.Namespace, bundle: Any, records: list[Any]) -> Any:
    """Run the planned records locally, or on Ray with ``--ray``; returns the
    :class:`~rsvl_runtime.batch_summary.BatchResult` (the summary files are written)."""
    from .batch import ModelSpec, run_local

    model = ModelSpec(bundle, vocab=vocabulary(args), backend=getattr(args, "backend", "auto"),
                      precision=getattr(args, "precision", "auto"), batch=getattr(args, "batch", None),
                      threads=getattr(args, "threads", None))
    common: dict[str, Any] = {"options": scene_options(args), "resume": not getattr(args, "overwrite", False)}
    if getattr(args, "ray", None):
        from .ray_runner import run_ray

        address = None if args.ray == LOCAL_RAY else args.ray
        return run_ray(records, replace(model, bundle=bundle.root), args.out, address=address,
                       num_actors=getattr(args, "num_actors", None),
                       cpus_per_actor=getattr(args, "cpus_per_actor", None), **common)
    return run_local(records, model, args.out, **common)


def report(result: Any, prog: str = "rsvl-batch") -> int:
    """Print the summary line and the failed scenes; 0 when none failed, else 1."""
    print(result.summary_line())
    failed = [r for r in result.rows if r["status"] == "error"]
    for r in failed:
        print(f"  {r['scene']}: {r['error']}", file=sys.stderr)
    if failed:
        print(f"{prog}: {len(failed)} scene(s) failed; see {result.summary_csv}", file=sys.stderr)
    return 1 if failed else 0


def run_batch(args: argparse.Namespace, prog: str = "rsvl-batch") -> int:
    """plan -> run -> summary for parsed arguments (``rsvl-batch``'s, or ``rsvl-infer --inputs``)."""
    bundle, records = plan(args)
    return report(run(args, bundle, records), prog)


def main(argv: list[str] | None = None, prog: str = "rsvl-batch") -> int:
    args = build_parser(prog).parse_args(argv)
    from .logs import setup_cli_logging

    setup_cli_logging(args)
    return run_guarded(prog, lambda: run_batch(args, prog), str(Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
