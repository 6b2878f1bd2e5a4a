"""``rsvl-export``: split a model into text and image graphs, export ONNX (+FP16), build TensorRT
engines where possible, check parity and write a bundle.

    rsvl-export --model tsmnet --precision fp16 [--checkpoint runs/x/best.safetensors] [--out DIR]
    rsvl-export inspect DIR                 # print and verify a bundle's manifest
    rsvl-export rebuild-engine DIR          # (re)build the TensorRT engines on this machine
    rsvl-export triton DIR REPO             # write + validate a Triton model repository
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsvl_runtime.backends.tensorrt import ENGINE_CHOICES as ENGINES
from rsvl_runtime.backends.tensorrt.profiles import final_bundle_paths
from rsvl_runtime.cli_common import CACHE_HELP, HelpFormatter, commands_epilog
from rsvl_runtime.logs import (
    add_verbosity_arguments,
    clean_message,
    setup_cli_logging,
    warnings_to_log,
)

PRECISIONS = ("fp32", "fp16")
#: The subcommands of ``rsvl-export`` (listed in ``--help``).
COMMANDS = {"inspect": "print and verify a bundle's manifest (rsvl-export inspect DIR)",
            "rebuild-engine": "(re)build a bundle's TensorRT engines on this machine",
            "triton": "write and validate a Triton model repository from a bundle"}


def _model_names() -> list[str]:
    from rsvl_train.factory import list_models

    return list_models()


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsvl-export", description=__doc__, formatter_class=HelpFormatter,
                                usage="%(prog)s [--model NAME] [--precision {fp32,fp16}] [--out DIR] [options]\n"
                                      "       rsvl-export {inspect,rebuild-engine,triton} ...",
                                epilog=commands_epilog("rsvl-export", COMMANDS, CACHE_HELP))
    p.add_argument("--model", default="tsmnet-tiny", help="registry model: " + ", ".join(_model_names()))
    p.add_argument("--checkpoint", help="rsvl-train checkpoint (.safetensors with its .json); default: the "
                                        "registry's shipped weights, or random with a warning")
    p.add_argument("--checkpoint-format", choices=("rsvl", "official"), default="rsvl",
                   help="--checkpoint key layout: rsvl (rsvl-train) or official (the authors' released weights)")
    p.add_argument("--pretrained", action="append", default=None, metavar="PATH",
                   help="local pretrained weights for the backbones/text encoder, repeatable (open_clip CLIP "
                        "checkpoint or OpenAI .pt for tsmnet; a timm Swin .safetensors/.pth and a HF BERT folder "
                        "for cadformer); recorded with their sha256 in the manifest")
    p.add_argument("--out", help="bundle folder (default bundles/MODEL-PRECISION)")
    p.add_argument("--tile", type=int, help="tile size H=W of the image graph (default: the model's)")
    p.add_argument("--overlap", type=float, default=0.25, help="default tile overlap recorded in the bundle")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (TensorRT profile, dynamic axis)")
    p.add_argument("--max-vocab", type=int, default=256, help="largest vocabulary K (TensorRT profile)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="precision of the image graph and its engine (fp16 also keeps the FP32 graph)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="TensorRT engines for the image and text graphs. auto: enterprise TensorRT when it imports "
                        "and a GPU is present, else TensorRT-RTX when it imports (builds on the CPU, no GPU "
                        "needed), else none; tensorrt / tensorrt-rtx: require that flavour; none (default: auto)")
    p.add_argument("--target-cc", default=None,
                   help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9 (default: the library's, "
                        "8.0/8.6/8.9/12.x)")
    p.add_argument("--workspace-gb", type=float, default=None,
                   help="TensorRT builder workspace limit in GB (default: no limit, the library's default)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the exported graphs")
    p.add_argument("--modalities", default="optical,sar",
                   help="image graph inputs: optical,sar (default) or optical (optical-only export)")
    p.add_argument("--head", choices=("open", "paper"), default=None,
                   help="decision head: open (cosine to the vocabulary, K free; default) or paper "
                        "(the released fixed-K classifier; K fixed in the graph and the manifest)")
    p.add_argument("--allow-parity-failure", action="store_true", help="write the bundle even if a gate fails")
    p.add_argument("--no-weights", action="store_true",
                   help="leave the safetensors weights (torch reference backend) out of the bundle")
    p.add_argument("--ort-optimize", action="store_true",
                   help="also write image.ort.onnx: ORT CPU fusions + INT8 where parity holds (CPU deployments)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (default: trt_timing.cache in the rsvl "
                                          "cache folder, see 'cache' below)")
    add_verbosity_arguments(p, quiet_help="only warnings and errors (no step lines)")
    return p


def _targets(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def _inspect(argv: list[str]) -> int:
    from rsvl_runtime.bundle import BundleError
    from rsvl_runtime.inspect import print_bundle

    p = argparse.ArgumentParser(prog="rsvl-export inspect", description="print and verify a bundle",
                                formatter_class=HelpFormatter, epilog=CACHE_HELP)
    p.add_argument("bundle", help="bundle folder or .zip")
    add_verbosity_arguments(p)
    args = p.parse_args(argv)
    setup_cli_logging(args)
    try:
        print_bundle(args.bundle)
    except BundleError as e:
        print(f"rsvl-export inspect: error: {clean_message(e)}", file=sys.stderr)
        return 2
    return 0


def _rebuild(argv: list[str]) -> int:
    from rsvl_runtime.backends.tensorrt import TensorRTUnavailable
    from rsvl_runtime.bundle import BundleError

    from .rebuild import rebuild_engine

    p = argparse.ArgumentParser(prog="rsvl-export rebuild-engine", formatter_class=HelpFormatter,
                                description="(re)build the bundle's TensorRT engines on this machine",
                                epilog=CACHE_HELP)
    p.add_argument("bundle", help="bundle folder (a .zip bundle is read-only: unzip it first)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the bundle's")
    p.add_argument("--engine", choices=[e for e in ENGINES if e != "none"], default="auto",
                   help="flavour (default auto: TensorRT with a GPU, else TensorRT-RTX)")
    p.add_argument("--target-cc", default=None, help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit in GB (default: none)")
    add_verbosity_arguments(p)
    args = p.parse_args(argv)
    setup_cli_logging(args)
    try:
        with warnings_to_log():
            paths = rebuild_engine(Path(args.bundle), args.precision, args.engine, _targets(args.target_cc),
                                   args.workspace_gb)
    except (TensorRTUnavailable, BundleError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"rsvl-export rebuild-engine: error: {final_bundle_paths(clean_message(e))}", file=sys.stderr)
        return 2
    print("engines: " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rsvl-export``: the export, or one of :data:`COMMANDS`. Third-party warnings (torch, onnx,
    onnxscript) are logged at debug level (shown with ``-v``), never printed as such."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings_to_log():
        if argv and argv[0] == "inspect":
            return _inspect(argv[1:])
        if argv and argv[0] == "rebuild-engine":
            return _rebuild(argv[1:])
        if argv and argv[0] == "triton":
            from .triton_cli import main as triton_main

            return triton_main(argv[1:])
        return _export(export_parser().parse_args(argv))


def _export(args: argparse.Namespace) -> int:
    setup_cli_logging(args)
    if args.model not in _model_names():
        import difflib

        close = difflib.get_close_matches(args.model, _model_names(), n=1)
        print(f"rsvl-export: error: unknown model {args.model!r}"
              + (f" (did you mean {close[0]!r}?)" if close else "")
              + f"; available: {', '.join(_model_names())}", file=sys.stderr)
        return 2
    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    if not mods or set(mods) - {"optical", "sar"} or "optical" not in mods:
        print("rsvl-export: error: --modalities must be 'optical,sar' or 'optical'", file=sys.stderr)
        return 2
    from rsvl_runtime.backends.tensorrt import TensorRTUnavailable
    from rsvl_runtime.backends.tensorrt.build import EngineBuildError

    from .pipeline import ExportOptions, ParityFailure, export_bundle

    opts = ExportOptions(model=args.model, checkpoint=args.checkpoint, checkpoint_format=args.checkpoint_format,
                         pretrained=tuple(args.pretrained) if args.pretrained else None, out=args.out, tile=args.tile,
                         overlap=args.overlap, max_batch=args.max_batch, max_vocab=args.max_vocab,
                         precision=args.precision, engine=args.engine, opset=args.opset, modalities=mods,
                         allow_parity_failure=args.allow_parity_failure, include_weights=not args.no_weights,
                         timing_cache=args.timing_cache, ort_optimize=args.ort_optimize,
                         engine_targets=_targets(args.target_cc), engine_workspace_gb=args.workspace_gb,
                         overrides={"head": args.head} if args.head else {})
    try:
        out = export_bundle(opts)
    except (ParityFailure, TensorRTUnavailable, EngineBuildError, FileNotFoundError, ValueError) as e:
        print(f"rsvl-export: error: {final_bundle_paths(clean_message(e))}", file=sys.stderr)
        return 1
    print(f"bundle: {out}\ninspect it with: rsvl-export inspect {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
