"""``rsvl-infer``: tiled inference of a bundle over GeoTIFF scenes.

    rsvl-infer --bundle DIR --optical A.tif [--sar B.tif] [--vocab "water|lake,building,road"] --out DIR
    rsvl-infer --bundle DIR --optical A.tif --refer "the largest lake in the north" --out DIR
    rsvl-infer batch --bundle DIR --inputs scenes.csv --out DIR [--ray]   # many scenes (= rsvl-batch)

Input checks (before anything is written; see rsvl_runtime.checks): inputs must be
georeferenced (a CRS and a geotransform; GCP-only rasters are warped with --align), the
optical data type must be the bundle's (uint8, or uint16 when declared), SAR float. An input
with no valid pixel is refused and one with more than 99 % nodata is warned about. SAR values
are checked on a decimated sample against the bundle's dB statistics: >= 95 % non-negative
values with --sar-units db (linear intensity given as dB) or > 1 % negative values with
--sar-units linear refuse the run (--no-sar-check turns this into a warning); a median outside
the bundle's mean ± 3 std dB is a warning.
Errors print one line (rsvl-infer: error: ...) and exit 2.

Many scenes run with ``rsvl-infer batch`` (rsvl_runtime/batch_cli.py, also ``rsvl-batch``);
``rsvl-infer --inputs`` still works for one release and prints a deprecation warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_common import (
    CACHE_HELP,
    VOCAB_FILE_HELP,
    HelpFormatter,
    add_engine_arguments,
    add_scene_arguments,
    add_vocabulary_arguments,
    commands_epilog,
    os_error_line,
    run_guarded,
    scene_options,
    vocabulary,
)
from .logs import add_verbosity_arguments

__all__ = ["build_parser", "main", "os_error_line", "run"]

#: The first argument that runs ``rsvl-infer batch ...`` (many scenes, :mod:`rsvl_runtime.batch_cli`).
BATCH_COMMAND = "batch"
DEPRECATED_INPUTS = ("rsvl-infer: warning: --inputs is deprecated and will be removed in the next release; "
                     "run many scenes with `rsvl-infer batch` (or `rsvl-batch`) and the same flags")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsvl-infer", description=__doc__, formatter_class=HelpFormatter,
        usage="%(prog)s --bundle DIR (--optical A.tif | --sar B.tif) --out DIR [options]\n"
              "       rsvl-infer batch --bundle DIR --inputs SCENES --out DIR [options]",
        epilog=commands_epilog("rsvl-infer", {BATCH_COMMAND: "many scenes in one job, in-process or on Ray "
                                                             "(same as rsvl-batch)"},
                               VOCAB_FILE_HELP, CACHE_HELP))
    p.add_argument("--bundle", required=True, help="bundle folder or .zip written by rsvl-export")
    p.add_argument("--optical", help="optical GeoTIFF: a path or URL (http(s)://, s3://, /vsicurl/..., any path GDAL "
                                     "opens); bands in the bundle's order, or use --bands/--sensor")
    p.add_argument("--sar", help="SAR GeoTIFF on the same grid, path or URL (optional when the bundle supports "
                                 "optical-only)")
    p.add_argument("--out", required=True, help="output folder (written in one step when the run completes)")
    add_vocabulary_arguments(p, refer=True)
    add_engine_arguments(p)
    add_scene_arguments(p)
    add_verbosity_arguments(p, quiet_help="no progress bar; only warnings and errors")
    p.add_argument("--align", action="store_true",
                   help="reproject the SAR onto the optical grid first (refused when they do not overlap); "
                        "GCP-only inputs are warped with their GCPs to their CRS")
    from .batch_cli import add_batch_arguments

    add_batch_arguments(p, title="many scenes (deprecated here: use `rsvl-infer batch` or `rsvl-batch`)")
    return p


def _align_inputs(optical: str | None, sar: str | None, out: Path) -> tuple[str | None, str | None]:
    """``--align``: warp GCP-only inputs with their GCPs, refuse a SAR that does not overlap the
    optical, and reproject the SAR onto the optical grid (files written into ``out``)."""
    from .checks import check_georeferenced, check_overlap
    from .raster_io import GEOREF_GCPS, align_to, georeferencing, open_raster, warp_gcps

    out.mkdir(parents=True, exist_ok=True)

    def georeferenced(path: str | None, modality: str) -> str | None:
        if path is None:
            return None
        with open_raster(path) as ds:
            kind = georeferencing(ds)
        if kind == GEOREF_GCPS:
            return str(warp_gcps(path, out / f"{modality}_georef.tif"))
        check_georeferenced(path, modality)  # refuses the other non-georeferenced kinds
        return path

    optical, sar = georeferenced(optical, "optical"), georeferenced(sar, "sar")
    if optical is not None and sar is not None:
        check_overlap(optical, sar)
        sar = str(align_to(sar, optical, out / "sar_aligned.tif"))
    return optical, sar


def run(args: argparse.Namespace) -> int:
    from .segmenter import Referrer, Segmenter, open_bundle

    if getattr(args, "inputs", None):
        from .batch_cli import run_batch

        print(DEPRECATED_INPUTS, file=sys.stderr)
        return run_batch(args, prog="rsvl-infer")
    bundle = open_bundle(args.bundle, args.expect_digest)
    if not args.optical and not args.sar:
        raise ValueError("give --optical and/or --sar")
    out = Path(args.out)
    opts = {**scene_options(args), "progress": not args.quiet}
    optical, sar = _align_inputs(args.optical, args.sar, out) if args.align else (args.optical, args.sar)
    if bundle.task == "referring":
        if not args.refer:
            raise ValueError(f"{bundle.root} is a referring bundle: pass --refer \"an expression\"")
        ref = Referrer.load(bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                            threads=args.threads)
        result = ref.predict_raster(optical, args.refer, out, **opts)
    else:
        if args.refer:
            raise ValueError(f"{bundle.root} is a semantic bundle; --refer needs a referring (CADFormer) bundle")
        seg = Segmenter.load(bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                             threads=args.threads)
        vocab = vocabulary(args)
        if vocab is not None:
            seg.set_vocabulary(vocab)
        result = seg.predict_raster(optical, sar, out, **opts)
    print(result.summary())
    print(f"outputs: {result.out_dir} (report: {result.out_dir / 'report.html'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rsvl-infer``: one scene; ``rsvl-infer batch ...``: many (:func:`rsvl_runtime.batch_cli.main`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [BATCH_COMMAND]:
        from .batch_cli import main as batch_main

        return batch_main(argv[1:], prog=f"rsvl-infer {BATCH_COMMAND}")
    args = build_parser().parse_args(argv)
    from .logs import setup_cli_logging

    setup_cli_logging(args)
    return run_guarded("rsvl-infer", lambda: run(args), getattr(args, "out", None))


if __name__ == "__main__":
    sys.exit(main())
