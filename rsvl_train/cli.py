"""``rsvl-train``: train a registry model on synthetic data or a dataset folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .factory import list_models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsvl-train", description=__doc__)
    p.add_argument("--model", default="tsmnet-tiny", help=f"registry model ({', '.join(list_models())})")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | yeseg:PATH | swjtu:PATH | rrsis:PATH (synthetic picks the referring "
                        "generator for referring models)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tile", type=int, default=128, help="training tile size for synthetic data")
    p.add_argument("--train-tiles", type=int, default=480, help="synthetic training tiles")
    p.add_argument("--val-tiles", type=int, default=96, help="synthetic validation tiles")
    p.add_argument("--modality-dropout", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall-clock budget")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="model config override, e.g. --set decoder_dim=64")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rsvl_runtime.logs import setup_logging

    setup_logging()
    from .train import TrainConfig, Trainer, parse_data_arg

    try:
        _, path = parse_data_arg(args.data)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"--data {args.data}: the folder {path} does not exist; "
                                    "see the README's 'Dataset layouts' for what it must contain")
    except (ValueError, FileNotFoundError) as e:
        print(f"rsvl-train: error: {e}", file=sys.stderr)
        return 2

    overrides = {}
    for item in args.set:
        key, _, val = item.partition("=")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out or f"runs/{args.model}", epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, tile=args.tile, train_tiles=args.train_tiles,
                      val_tiles=args.val_tiles, modality_dropout=args.modality_dropout, seed=args.seed,
                      workers=args.workers, resume=args.resume, max_minutes=args.max_minutes,
                      amp=not args.no_amp, overrides=overrides)
    try:
        summary = Trainer(cfg).fit()
    except (FileNotFoundError, ValueError) as e:
        print(f"rsvl-train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
