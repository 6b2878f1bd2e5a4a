"""``rsvl-export triton BUNDLE DIR``: write (and validate) a Triton model repository.

    rsvl-export triton bundles/tsmnet-fp16 triton_repo/ [--max-batch 16] [--name tsmnet]
    tritonserver --model-repository triton_repo/        # NGC container, or nvidia-pytriton's binary

Models: NAME (Python backend: raw tiles + vocabulary -> labels, dynamic batching), NAME_image
(onnxruntime backend, TensorRT FP16 accelerator), NAME_image_trt (tensorrt backend, when the
bundle has an enterprise TensorRT engine) and NAME_text. See rsvl_export/triton.py (the repository),
rsvl_export/triton_config.py (configs and validation) and rsvl_export/triton_model/model.py (the Python model).
"""

from __future__ import annotations

import argparse
import sys

from rsvl_runtime.cli_common import HelpFormatter
from rsvl_runtime.logs import add_verbosity_arguments, clean_message, setup_cli_logging

from .triton import DEFAULT_QUEUE_DELAY_US, LINK_MODES, RepositoryOptions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsvl-export triton", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("bundle", help="bundle folder or .zip written by rsvl-export")
    p.add_argument("repo", help="model repository folder to write (created; existing models are replaced)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="tiles per batch of the Python model (default: the bundle's limit / engine profile)")
    p.add_argument("--name", default=None, help="model name (default: the bundle's model name)")
    p.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help="dynamic batching max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=1, help="instances of the Python model")
    p.add_argument("--backend", default="auto", help="Segmenter backend inside the Python model")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads inside the Python model")
    p.add_argument("--link", choices=LINK_MODES, default="hardlink",
                   help="how model files get into the repository (hardlink falls back to copy)")
    p.add_argument("--no-vendor-runtime", action="store_true",
                   help="do not copy rsvl_runtime next to model.py (Triton's Python must have rsvl installed)")
    p.add_argument("--no-validate", action="store_true", help="skip validating the written configs")
    add_verbosity_arguments(p)
    return p


def _options(args: argparse.Namespace) -> RepositoryOptions:
    return RepositoryOptions(name=args.name, max_queue_delay_us=args.queue_delay_us, instances=args.instances,
                             backend=args.backend, threads=args.threads, link=args.link,
                             vendor_runtime=not args.no_vendor_runtime)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(args)
    from rsvl_runtime.bundle import BundleError

    from .triton import validate_repository, write_triton_repository

    try:
        repo = write_triton_repository(args.bundle, args.repo, args.max_batch, _options(args))
    except (BundleError, ValueError, FileNotFoundError) as e:
        print(f"rsvl-export triton: error: {clean_message(e)}", file=sys.stderr)
        return 2
    print(f"Triton repository: {repo.root}")
    for name, path in repo.models.items():
        print(f"  {name:<28} {path}")
    if not args.no_validate:
        problems = validate_repository(repo.root, args.bundle)
        if problems:
            print("rsvl-export triton: the repository does not match the bundle:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        print("validated: configs agree with the graphs, engine profiles and bundle")
    print(f"serve it with: tritonserver --model-repository {repo.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
