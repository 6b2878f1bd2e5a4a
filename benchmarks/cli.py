"""``rsvl-bench``: the same model on the same inputs, side by side on every available backend.

    rsvl-bench --model tsmnet-tiny --quick
    rsvl-bench --model tsmnet --batch 1 --tile 256 --vocab-size 7 --out bench/tsmnet
    rsvl-bench --model tsmnet --bundle bundles/tsmnet-fp16 --backends torch-eager,ort-cpu-fp32,ort-opt

Writes OUT/bench.json, OUT/bench.md, OUT/bench.png and prints a table. Without ``--bundle`` the
model is exported first into OUT/bundle (reused by later runs unless ``--reexport``). The same run
measures the machine's GEMM ceilings (``benchmarks/roofline.py``; ``--no-roofline`` skips it) and
every row shows its GFLOP/s and % of the matching ceiling.

    rsvl-bench compare OLD/bench.json NEW/bench.json   # flags rows > 10 % slower (exit code 1)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .backends import GROUPS, RUNNER_KEYS
from .suite import BenchOptions, run_benchmark

MODELS = ("tsmnet-tiny", "tsmnet", "cadformer-tiny", "cadformer")


def _batches(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes comma-separated integers like 1,8,32, got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--batch sizes must be >= 1, got {s!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    from rsvl_runtime.cli_common import HelpFormatter
    from rsvl_runtime.logs import add_verbosity_arguments

    backends_help = "\n".join(f"  {k:16s} {v}" for k, v in RUNNER_KEYS.items())
    p = argparse.ArgumentParser(
        prog="rsvl-bench", formatter_class=HelpFormatter,
        description="Benchmark one rsvl model's image graph on PyTorch eager/AMP/compile, ONNX Runtime "
                    "(plain, FP16, fused/INT8) and TensorRT, with agreement against eager FP32.",
        epilog=f"backends (--backends, comma separated; groups: {', '.join(GROUPS)}):\n{backends_help}")
    p.add_argument("--model", default="tsmnet-tiny", help=f"registered model name ({', '.join(MODELS)})")
    p.add_argument("--bundle", help="an exported bundle to benchmark (default: export one into OUT/bundle)")
    p.add_argument("--checkpoint", help="rsvl-train checkpoint (.safetensors) for the eager reference / export")
    p.add_argument("--batch", type=_batches, default=[1, 8, 32], help="batch sizes, e.g. 1,8,32 (default)")
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's; must match --bundle)")
    p.add_argument("--vocab-size", type=int, default=7, help="classes K fed to the image graph (default 7)")
    p.add_argument("--out", default="bench_out", help="output folder (default bench_out)")
    p.add_argument("--quick", action="store_true",
                   help="short measurements (~2 s each), torch.compile at the first batch only, no CPU FP16 "
                        "graph, 512 px scene: a few minutes on a 2-core CPU for tsmnet-tiny")
    p.add_argument("--backends", nargs="+", default=None, metavar="KEY", help="runners or groups (default all)")
    p.add_argument("--threads", type=int, help="intra-op threads for torch and ONNX Runtime (default: all cores)")
    p.add_argument("--budget", type=float, dest="budget_s", help="seconds per measurement (default 10, quick 2)")
    p.add_argument("--scene-size", type=int, help="synthetic scene edge in pixels (default 1024, quick 512)")
    p.add_argument("--scene-batch", type=int, help="batch for the scene run (default: largest batch <= 8)")
    p.add_argument("--no-scene", dest="scene", action="store_false", help="skip the end-to-end scene run")
    p.add_argument("--no-text", dest="text", action="store_false", help="skip the text-graph measurement")
    p.add_argument("--no-ort-optimize", dest="ort_optimize", action="store_false",
                   help="do not build image.ort.onnx (skips the ort-opt runner unless the bundle has one)")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="ort_optimize: fusions only, no INT8")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count")
    p.add_argument("--no-roofline", dest="roofline", action="store_false",
                   help="skip measuring the machine's GEMM ceilings (no %% of peak in the table)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the ONNX Runtime per-op-type profile of the image graph")
    p.add_argument("--reexport", action="store_true", help="export again even if OUT/bundle matches")
    p.add_argument("--omp-spin", action="store_true",
                   help="keep OpenMP's default (active) wait policy for PyTorch; by default rsvl-bench sets "
                        "OMP_WAIT_POLICY=PASSIVE when unset, because spinning threads collapse PyTorch CPU "
                        "throughput (measured 40x) when other processes share the cores")
    p.add_argument("--seed", type=int, default=0)
    add_verbosity_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not args.omp_spin and "torch" not in sys.modules:
        # must happen before OpenMP starts (torch import); recorded in bench.json
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # the root logger stays at WARNING: onnxruntime.quantization logs every tensor at INFO on it
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("rsvl").setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet
                                       else logging.INFO)
    try:
        from .backends import parse_backends

        backends = parse_backends(args.backends)
    except ValueError as e:
        print(f"rsvl-bench: {e}", file=sys.stderr)
        return 2
    if args.vocab_size < 1:
        print("rsvl-bench: --vocab-size must be >= 1", file=sys.stderr)
        return 2
    opts = BenchOptions(model=args.model, bundle=args.bundle, checkpoint=args.checkpoint, batches=args.batch,
                        tile=args.tile, vocab_size=args.vocab_size, out=args.out, quick=args.quick,
                        backends=backends, threads=args.threads, budget_s=args.budget_s, scene=args.scene,
                        scene_size=args.scene_size, scene_batch=args.scene_batch, text=args.text,
                        ort_optimize=args.ort_optimize, int8=args.int8, flops=args.flops, seed=args.seed,
                        reexport=args.reexport, roofline=args.roofline, profile=args.profile)
    run_benchmark(opts)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
