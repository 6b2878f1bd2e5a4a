"""``rsvl-infer``: tiled inference of a bundle over GeoTIFF scenes.

    rsvl-infer --bundle DIR --optical A.tif [--sar B.tif] [--vocab "water|lake,building,road"] --out DIR
    rsvl-infer --bundle DIR --optical A.tif --refer "the largest lake in the north" --out DIR

Input checks (before anything is written; see rsvl_runtime.checks): inputs must be
georeferenced (a CRS and a geotransform; GCP-only rasters are warped with --align), the
optical data type must be the bundle's (uint8, or uint16 when declared), SAR float. An input
with no valid pixel is refused and one with more than 99 % nodata is warned about. SAR values
are checked on a decimated sample against the bundle's dB statistics: >= 95 % non-negative
values with --sar-units db (linear intensity given as dB) or > 1 % negative values with
--sar-units linear refuse the run (--no-sar-check turns this into a warning); a median outside
the bundle's mean ± 3 std dB is a warning.
Errors print one line (rsvl-infer: error: ...) and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .backends import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsvl-infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder or .zip written by rsvl-export")
    p.add_argument("--optical", help="optical GeoTIFF (bands in the bundle's order, or use --bands)")
    p.add_argument("--sar", help="SAR GeoTIFF on the same grid (optional when the bundle supports optical-only)")
    p.add_argument("--out", required=True, help="output folder")
    voc = p.add_mutually_exclusive_group()
    voc.add_argument("--vocab", help="classes separated by commas, synonyms by '|': \"water|lake,building,road\"")
    voc.add_argument("--vocab-file", help="JSON list or text file with one class per line (synonyms after commas)")
    voc.add_argument("--refer", help="referring expression (CADFormer bundles)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "ort"), default="auto",
                   help="image graph: auto (fp16 on GPU, the ORT-optimised graph or fp32 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="tiles per engine call")
    p.add_argument("--tile", type=int, default=None, help="tile size (must equal the bundle's)")
    p.add_argument("--overlap", type=float, default=None, help="tile overlap fraction (default: the bundle's)")
    p.add_argument("--bands", help="1-based optical band indexes in the bundle's order, e.g. 3,2,1")
    p.add_argument("--sar-bands", help="1-based SAR band index, e.g. 1")
    p.add_argument("--nodata", type=float, default=None, help="optical nodata value for rasters that declare none")
    p.add_argument("--sar-nodata", type=float, default=None, help="SAR nodata value for rasters that declare none")
    p.add_argument("--sar-units", choices=("db", "linear"), default=None,
                   help="SAR values (default: the bundle's, usually db); checked against the bundle's dB "
                        "range, e.g. linear intensities (0..1) given as db are refused")
    p.add_argument("--no-sar-check", action="store_true",
                   help="run even when the SAR values look implausible for --sar-units (logged as a warning)")
    p.add_argument("--align", action="store_true",
                   help="reproject the SAR onto the optical grid first (refused when they do not overlap); "
                        "GCP-only inputs are warped with their GCPs to their CRS")
    p.add_argument("--expect-digest", metavar="HEX", default=None,
                   help="refuse the bundle unless its digest is HEX (pin a bundle in production; "
                        "`rsvl-export inspect` shows it); also for --inputs")
    p.add_argument("--no-scores", action="store_true", help="skip scores.tif")
    p.add_argument("--no-cog", action="store_true",
                   help="keep tiled GeoTIFFs with overviews but skip the COG rewrite (faster on huge scenes)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .batch_cli import add_batch_arguments

    add_batch_arguments(p)
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
    from .batch_cli import scene_options
    from .segmenter import Referrer, Segmenter, open_bundle
    from .vocabulary import load_vocabulary_file

    if getattr(args, "inputs", None):
        from .batch_cli import run_batch

        return run_batch(args)
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
        if args.vocab is not None:
            seg.set_vocabulary(args.vocab)
        elif args.vocab_file:
            seg.set_vocabulary(load_vocabulary_file(args.vocab_file))
        result = seg.predict_raster(optical, sar, out, **opts)
    print(result.summary())
    print(f"outputs: {result.out_dir} (report: {result.out_dir / 'report.html'})")
    return 0


#: errno -> what it means for the user, for :func:`os_error_line`.
_OS_HINTS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
}


def os_error_line(e: OSError, out: str | None) -> str:
    """One line for an OSError: the file, what is wrong and the fix (``out``: the --out folder)."""
    name = e.filename or ""
    reason = e.strerror or str(e)
    in_out = bool(name and out) and _inside(Path(name), Path(out))  # type: ignore[arg-type]
    what = _OS_HINTS.get(e.errno or -1)
    if in_out or (what and not name):
        fix = ("free space or choose another --out folder" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else "choose a writable --out folder (or fix its permissions)")
    else:
        fix = "check the path, its permissions and the disk"
    where = f" {name}" if name else ""
    return f"cannot access{where}: {what + ' (' + reason + ')' if what else reason}; {fix}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(quiet=args.quiet)
    from .backends.base import BackendError
    from .bundle import BundleError
    from .raster_io import RasterInputError

    try:
        return run(args)
    except (BundleError, BackendError, RasterInputError, ValueError) as e:
        print(f"rsvl-infer: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only or full --out, permissions, unreadable files
        print(f"rsvl-infer: error: {os_error_line(e, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rsvl-infer: interrupted; no output was marked complete — rerun the same command", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("RSVL_TRACEBACK"):
            raise
        print(f"rsvl-infer: internal error: {type(e).__name__}: {e} (set RSVL_TRACEBACK=1 for the traceback "
              "and report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
