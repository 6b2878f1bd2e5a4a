"""``rsvl-infer``: tiled inference of a bundle over GeoTIFF scenes.

    rsvl-infer --bundle DIR --optical A.tif [--sar B.tif] [--vocab "water|lake,building,road"] --out DIR
    rsvl-infer --bundle DIR --optical A.tif --refer "the largest lake in the north" --out DIR
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--sar-units", choices=("db", "linear"), default=None, help="SAR values (default: the bundle's)")
    p.add_argument("--align", action="store_true", help="reproject the SAR onto the optical grid first")
    p.add_argument("--no-scores", action="store_true", help="skip scores.tif")
    p.add_argument("--no-cog", action="store_true",
                   help="keep tiled GeoTIFFs with overviews but skip the COG rewrite (faster on huge scenes)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .batch_cli import add_batch_arguments

    add_batch_arguments(p)
    return p


def _bands(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--bands {text!r}: give 1-based band indexes separated by commas, e.g. 3,2,1") from None


def run(args: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .segmenter import Referrer, Segmenter
    from .vocabulary import load_vocabulary_file

    if getattr(args, "inputs", None):
        from .batch_cli import run_batch

        return run_batch(args)
    bundle = Bundle.load(args.bundle)
    if not args.optical and not args.sar:
        raise ValueError("give --optical and/or --sar")
    out = Path(args.out)
    nodata = None
    if args.nodata is not None or args.sar_nodata is not None:
        nodata = {k: v for k, v in (("optical", args.nodata), ("sar", args.sar_nodata)) if v is not None}
    opts = dict(tile=args.tile, overlap=args.overlap, bands=_bands(args.bands), nodata=nodata,
                progress=not args.quiet, cog=False if args.no_cog else None)
    if bundle.task == "referring":
        if not args.refer:
            raise ValueError(f"{bundle.root} is a referring bundle: pass --refer \"an expression\"")
        ref = Referrer.load(bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                            threads=args.threads)
        result = ref.predict_raster(args.optical, args.refer, out, **opts)
    else:
        if args.refer:
            raise ValueError(f"{bundle.root} is a semantic bundle; --refer needs a referring (CADFormer) bundle")
        seg = Segmenter.load(bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                             threads=args.threads)
        if args.vocab is not None:
            seg.set_vocabulary(args.vocab)
        elif args.vocab_file:
            seg.set_vocabulary(load_vocabulary_file(args.vocab_file))
        sar = args.sar
        if sar and args.align and args.optical:
            from .raster_io import align_to

            out.mkdir(parents=True, exist_ok=True)
            sar = str(align_to(sar, args.optical, out / "sar_aligned.tif"))
        result = seg.predict_raster(args.optical, sar, out, sar_units=args.sar_units,
                                    sar_bands=_bands(args.sar_bands), write_scores=not args.no_scores, **opts)
    print(result.summary())
    print(f"outputs: {result.out_dir} (report: {result.out_dir / 'report.html'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(quiet=args.quiet)
    from .backends.base import BackendError
    from .bundle import BundleError
    from .raster_io import RasterInputError

    try:
        return run(args)
    except (BundleError, BackendError, RasterInputError, ValueError, FileNotFoundError) as e:
        print(f"rsvl-infer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rsvl-infer: interrupted; no output was marked complete — rerun the same command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
