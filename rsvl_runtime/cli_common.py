"""What ``rsvl-infer`` (one scene, :mod:`rsvl_runtime.cli`) and ``rsvl-batch`` (many scenes,
:mod:`rsvl_runtime.batch_cli`) share: the model and per-scene flags, their translation into
``predict_raster`` options (:func:`scene_options`), and the error handling of ``main``
(:func:`run_guarded`: one line per error, exit 2; 3 for a bug; 130 when interrupted).

Every rsvl CLI (``rsvl-export``, ``rsvl-train`` and ``rsvl-bench`` too) formats its ``--help``
with :class:`HelpFormatter` (description as written, defaults shown) and takes its epilog
sections from here: :func:`commands_epilog` (the subcommands), :data:`VOCAB_FILE_HELP` (the
``--vocab-file`` formats) and :data:`CACHE_HELP` (the cache folder and what lives there).
"""

from __future__ import annotations

import argparse
import copy
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import BACKENDS

#: The ``--help`` epilog section on the cache folder (every CLI that reads or writes it shows it).
CACHE_HELP = """cache:
  vocabulary embeddings, extracted .zip bundles and TensorRT files are cached in
  $RSVL_CACHE_DIR, else $XDG_CACHE_HOME/rsvl, else ~/.cache/rsvl:
    vocab/             encoded vocabularies (one .npz per bundle digest and vocabulary text)
    bundles/           .zip bundles extracted once (by the zip's sha256; the latest few kept)
    tensorrt-rtx/      TensorRT-RTX runtime caches of engines built ahead of time
    trt_timing.cache   the TensorRT builder timing cache of rsvl-export
    input-sha256/      the sha256 of input rasters, by file state (path, inode, size, times)
  Deleting the folder is safe: it is rebuilt on demand."""

#: The ``--help`` epilog section on the ``--vocab-file`` formats (see rsvl_runtime.vocabulary).
VOCAB_FILE_HELP = """vocabulary files (--vocab-file):
  *.json   a list of class names with optional synonyms after commas
           ["water, lake, river", "building"], or of objects
           [{"name": "water", "synonyms": ["lake", "river"], "color": [0, 90, 200]}, ...]
  other    a text file, one class per line, synonyms after commas, '#' starts a comment:
             water, lake, river
             building   # roofs included
  2 to 255 classes; a class without a colour gets one from the default palette."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of every rsvl CLI: the description and epilog as written (examples, sections)
    and each flag's default, except when there is none to show (None, False, an on/off flag) or
    its help already names it."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        d = action.default
        return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, tuple)) and not d)
                    or action.nargs == 0  # an on/off flag (--no-scores, --quick): its name says what it does
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction)))

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and self._shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"  # a flag without help text still shows its default
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not self._shows_default(action) or any(k in text for k in ("(default", "default:", "%(default)")):
            return action.help
        return super()._get_help_string(action)


def commands_epilog(prog: str, commands: dict[str, str], *sections: str) -> str:
    """An epilog with a ``commands:`` section (``PROG COMMAND -h`` for each) and more sections."""
    width = max(len(f"{prog} {c}") for c in commands) + 2
    lines = ["commands:"] + [f"  {(prog + ' ' + c).ljust(width)}{what}" for c, what in commands.items()]
    lines.append(f"  (`{prog} COMMAND -h` shows the flags of each)")
    return "\n\n".join(["\n".join(lines), *sections])


def add_vocabulary_arguments(parser: argparse.ArgumentParser, refer: bool = False) -> None:
    """``--vocab`` / ``--vocab-file`` (and ``--refer`` when ``refer``), mutually exclusive."""
    voc = parser.add_mutually_exclusive_group()
    voc.add_argument("--vocab", help="classes separated by commas, synonyms by '|': \"water|lake,building,road\"")
    voc.add_argument("--vocab-file", metavar="FILE",
                     help="classes from a file: .json (a list of names, or of objects {\"name\", \"synonyms\", "
                          "\"color\": [r,g,b]}) or text (one class per line, synonyms after commas); see "
                          "'vocabulary files' below (default: the bundle's vocabulary)")
    if refer:
        voc.add_argument("--refer", metavar="TEXT", help="referring expression (CADFormer bundles)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision``, ``--batch``, ``--threads``, ``--expect-digest``."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="inference engine: auto picks TensorRT with a GPU and an engine in the bundle, "
                             "else ONNX Runtime")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "ort"), default="auto",
                        help="image graph: auto (fp16 on GPU, the ORT-optimised graph or fp32 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="tiles per engine call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    parser.add_argument("--expect-digest", metavar="HEX", default=None,
                        help="refuse the bundle unless its digest is HEX (pin a bundle in production; "
                             "`rsvl-export inspect` shows it)")


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-scene flags: tiling, bands, nodata, SAR units and checks, outputs (``-v``/``-q``
    come from :func:`rsvl_runtime.logs.add_verbosity_arguments`)."""
    p = parser
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
    from .sensors import PRESETS

    presets = "; ".join(f"{name} ({pr.title}: bands {pr.describe_bands()}, scale {pr.scale:g}, offset {pr.offset:g})"
                        for name, pr in PRESETS.items())
    p.add_argument("--sensor", choices=tuple(PRESETS), default=None,
                   help=f"bands and scaling of a known product (--bands/--scale given explicitly win): {presets}")
    p.add_argument("--scale", type=float, default=None,
                   help="optical values are multiplied by this (lets uint16/float optical through), e.g. 0.0001 "
                        "for Sentinel-2 L2A reflectance x 10000, 1 for float reflectance 0..1")
    p.add_argument("--offset", type=float, default=None,
                   help="added to the optical values after --scale (needs --scale or --sensor), e.g. -0.2")
    p.add_argument("--stretch", default=None, metavar="pLOW,pHIGH",
                   help="percentile stretch of the optical bands to 0..1, computed once per scene, e.g. p2,p98")
    p.add_argument("--threshold", type=float, default=None,
                   help="pixels whose best class score is below this become 'unclassified' (id K, its own colour, a "
                        "row in classes.json); the score is the softmax probability, or for a one-class vocabulary "
                        "the cosine mapped to 0..1. Default: no threshold with 2+ classes, 0.5 (cosine > 0) with one")
    p.add_argument("--vector", choices=("gpkg", "geojson"), default=None,
                   help="also write class polygons (vectors.gpkg or vectors.geojson)")
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (m²)")
    p.add_argument("--simplify", type=float, default=None, help="polygon simplification tolerance (CRS units)")
    p.add_argument("--no-stac", action="store_true", help="skip the STAC item item.json")
    p.add_argument("--no-scores", action="store_true", help="skip scores.tif")
    p.add_argument("--pipeline", choices=("auto", "serial", "overlap"), default="auto",
                   help="how reading/blending/writing run against the engine: serial = between engine calls, "
                        "split over every core (fastest when the engine runs on the CPU); overlap = in a reader "
                        "and a writer thread beside the engine (fastest with a GPU engine); auto picks by backend")
    p.add_argument("--workers", type=int, default=None,
                   help="threads for reading/blending/writing (default: the CPUs this process may use)")
    p.add_argument("--no-cog", action="store_true",
                   help="keep tiled GeoTIFFs with overviews but skip the COG rewrite (faster on huge scenes)")


def parse_bands(text: str | None, flag: str = "--bands") -> list[int] | None:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (None for no value); the one band-list parser of the CLIs."""
    if not text:
        return None
    try:
        return [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give 1-based band indexes separated by commas, e.g. 3,2,1") from None


def parse_stretch(text: str | None) -> tuple[float, float] | None:
    """``"p2,p98"`` (or ``"2,98"``) -> ``(2.0, 98.0)``; None for no value."""
    if not text:
        return None
    try:
        low, high = (float(v.strip().lstrip("pP")) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--stretch {text!r}: give two percentiles, e.g. --stretch p2,p98") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"--stretch {text!r}: need 0 <= low < high <= 100, e.g. --stretch p2,p98")
    return low, high


def vocabulary(args: argparse.Namespace) -> Any:
    """``--vocab`` or the classes of ``--vocab-file`` (None: neither given)."""
    if getattr(args, "vocab", None) is not None:
        return args.vocab
    if getattr(args, "vocab_file", None):
        import json

        from .vocabulary import VocabularyError, load_vocabulary_file

        try:
            return load_vocabulary_file(args.vocab_file)
        except json.JSONDecodeError as e:
            raise VocabularyError(f"--vocab-file {args.vocab_file}: not valid JSON ({e.msg} at line {e.lineno} "
                                  f"column {e.colno}); give a JSON list such as [\"water, lake\", \"building\"], "
                                  "or use a text file with one class per line") from None
        except UnicodeDecodeError:
            raise VocabularyError(f"--vocab-file {args.vocab_file}: not UTF-8 text; save it as UTF-8 (a JSON "
                                  "list or one class per line)") from None
    return None


def scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """``predict_raster`` options from the per-scene flags (one scene or a batch; no progress bar)."""
    nodata = getattr(args, "nodata", None)
    sar_nodata = getattr(args, "sar_nodata", None)
    opts: dict[str, Any] = {
        "tile": getattr(args, "tile", None), "overlap": getattr(args, "overlap", None),
        "bands": parse_bands(getattr(args, "bands", None), "--bands"),
        "sar_bands": parse_bands(getattr(args, "sar_bands", None), "--sar-bands"),
        "sar_units": getattr(args, "sar_units", None), "write_scores": not getattr(args, "no_scores", False),
        "cog": False if getattr(args, "no_cog", False) else None,
        "sar_check": not getattr(args, "no_sar_check", False), "progress": False,
        "sensor": getattr(args, "sensor", None), "scale": getattr(args, "scale", None),
        "offset": getattr(args, "offset", None), "stretch": parse_stretch(getattr(args, "stretch", None)),
        "min_score": getattr(args, "threshold", None), "vector": getattr(args, "vector", None),
        "min_area_m2": getattr(args, "min_area", None) or None, "simplify": getattr(args, "simplify", None),
        "stac": False if getattr(args, "no_stac", False) else None,
        "pipeline": None if getattr(args, "pipeline", "auto") == "auto" else args.pipeline,
        "workers": getattr(args, "workers", None),
    }
    if nodata is not None or sar_nodata is not None:
        opts["nodata"] = {"optical": nodata, "sar": sar_nodata}
    return {k: v for k, v in opts.items() if v is not None}


# ----------------------------------------------------------------------------- errors
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


def run_guarded(prog: str, run: Callable[[], int], out: str | None) -> int:
    """``run()`` with the CLIs' error handling: a known error prints ``PROG: error: ...`` (one
    line) and returns 2, a bug one line (the traceback with ``RSVL_TRACEBACK=1``) and 3, Ctrl-C 130."""
    from .backends.base import BackendError
    from .bundle import BundleError
    from .logs import clean_message
    from .raster_io import RasterInputError

    try:
        return run()
    except (BundleError, BackendError, RasterInputError, ValueError) as e:
        print(f"{prog}: error: {clean_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only or full --out, permissions, unreadable files
        print(f"{prog}: error: {os_error_line(e, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was marked complete — rerun the same command", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("RSVL_TRACEBACK"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {clean_message(e)} (set RSVL_TRACEBACK=1 for the traceback "
              "and report it)", file=sys.stderr)
        return 3
