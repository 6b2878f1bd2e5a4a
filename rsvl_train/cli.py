"""``rsvl-train``: train a registry model on synthetic data or a dataset folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .factory import get_model_config, list_models
from .recipes import apply_recipe, get_recipe, list_recipes
from .train import SCHEDULES

#: ``TrainConfig`` fields that flags set (argparse dest == field name); ``None`` = not given.
_FIELDS = ("model", "data", "out", "epochs", "iterations", "batch_size", "lr", "weight_decay", "schedule",
           "warmup_iters", "tile", "train_tiles", "val_tiles", "modality_dropout", "seed", "workers", "max_minutes")


def _parse_loss_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, val = item.partition("=")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--loss-weights {text!r}: write NAME=NUMBER pairs, e.g. ce=1,dice=1,object=1,scene=1")
    return out


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave on the command line (``TrainConfig`` keyword arguments)."""
    kw: dict[str, Any] = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    if args.loss_weights is not None:
        kw["loss_weights"] = _parse_loss_weights(args.loss_weights)
    if args.resume:
        kw["resume"] = True
    if args.no_amp:
        kw["amp"] = False
    if args.pretrained:
        kw["pretrained"] = tuple(args.pretrained)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, val = item.partition("=")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    if overrides:
        kw["overrides"] = overrides
    return kw


def build_parser() -> argparse.ArgumentParser:
    from rsvl_runtime.cli_common import HelpFormatter

    p = argparse.ArgumentParser(prog="rsvl-train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--recipe", default=None,
                   help=f"paper recipe ({', '.join(list_recipes())}): model, data kind and training settings; "
                        "flags given explicitly override it; needs --data PATH")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan table and exit")
    p.add_argument("--model", default=None, help=f"registry model ({', '.join(list_models())}; default tsmnet-tiny)")
    p.add_argument("--data", default=None,
                   help="synthetic | yeseg:PATH | swjtu:PATH | rrsisd:PATH | rrsishr:PATH | rrsis:PATH | PATH "
                        "(a bare PATH: the kind is recognised from the folder; synthetic picks the referring "
                        "generator for referring models; with --recipe a bare PATH; default synthetic)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL or runs/RECIPE)")
    p.add_argument("--epochs", type=int, default=None, help="default 8")
    p.add_argument("--iterations", type=int, default=None, help="train this many steps instead of whole epochs")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--lr", type=float, default=None, help="default 2e-3")
    p.add_argument("--weight-decay", type=float, default=None, help="default 1e-4")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="LR decay after warmup (default cosine)")
    p.add_argument("--warmup-iters", type=int, default=None, help="default min(100, total steps / 10)")
    p.add_argument("--loss-weights", default=None, metavar="ce=1,dice=1,object=0.4,scene=0.1",
                   help="loss term weights (default: ours, 1/1/0.4/0.1; the tsmnet recipes: the paper's 1:1:1:1)")
    p.add_argument("--tile", type=int, default=None,
                   help="training tile size (default: the model config's train_tile_size, else tile_size)")
    p.add_argument("--train-tiles", type=int, default=None, help="synthetic training tiles (default 480)")
    p.add_argument("--val-tiles", type=int, default=None, help="synthetic validation tiles (default 96)")
    p.add_argument("--modality-dropout", type=float, default=None,
                   help="default: the model config's modality_dropout")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall-clock budget")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--pretrained", action="append", default=None, metavar="PATH",
                   help="local pretrained part weights, repeatable: an open_clip/OpenAI CLIP checkpoint (tsmnet), a "
                        "timm Swin .safetensors/.pth and a HuggingFace BERT folder (cadformer)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="model config override, e.g. --set decoder_dim=64")
    from rsvl_runtime.logs import add_verbosity_arguments

    add_verbosity_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rsvl_runtime.logs import setup_cli_logging

    setup_cli_logging(args)
    from .train import TrainConfig, Trainer, parse_data_arg, plan_table, resolve

    if args.list_recipes:
        for name in list_recipes():
            print(f"{name}: {get_recipe(name).description}")
        return 0
    try:
        explicit = _explicit(args)
        if args.recipe:
            recipe = get_recipe(args.recipe)
            if args.dry_run and not args.data:
                explicit["data"] = "<--data PATH>"
            kw = apply_recipe(recipe, explicit)
        else:
            kw = {"model": "tsmnet-tiny", **explicit}
            kw.setdefault("out", f"runs/{kw['model']}")
        cfg = TrainConfig(**kw)
        if not cfg.data.endswith(":<--data PATH>"):
            _, path = parse_data_arg(cfg.data)
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"--data {cfg.data}: the folder {path} does not exist; "
                                        "see the README's 'Dataset layouts' for what it must contain")
        cfg = resolve(cfg, get_model_config(cfg.model, **cfg.overrides))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"rsvl-train: error: {e}", file=sys.stderr)
        return 2
    print(plan_table(cfg, task=get_model_config(cfg.model).get("task", "semantic")))
    if args.dry_run:
        return 0
    try:
        summary = Trainer(cfg).fit()
    except (FileNotFoundError, ValueError) as e:
        print(f"rsvl-train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
