"""The training loop behind ``rsvl-train``: semantic (TSMNet) and referring (CADFormer) models.

Defaults that depend on the model come from its config: the tile (``train_tile_size``, else
``tile_size``) and the modality-dropout rate (``modality_dropout``). :func:`plan_table` is the
table ``rsvl-train`` prints before it runs (recipes: :mod:`rsvl_train.recipes`).

Checkpoints are safetensors + JSON (``runs/NAME/last.*`` every epoch, ``best.*`` on the best
validation score); ``--resume`` continues from ``last``. Validation each epoch reports the
metrics of :mod:`rsvl_train.metrics`; the history goes to ``runs/NAME/history.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rsvl_runtime.files import atomic_open, atomic_write_text

from .checkpoint import load_weights, save_checkpoint
from .factory import create_model_from_config, get_model_config

log = logging.getLogger(__name__)


SCHEDULES = ("cosine", "poly")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """One run's settings. ``None`` means "from the model config" (``tile``: ``train_tile_size``
    or ``tile_size``; ``modality_dropout``: ``modality_dropout``), or the built-in default
    (``loss_weights``: :data:`rsvl_train.losses.TSMNET_LOSS_WEIGHTS`; ``warmup_iters``:
    ``min(100, total // 10)``; ``iterations``: ``epochs`` full epochs)."""

    model: str = "tsmnet-tiny"
    data: str = "synthetic"
    out: str = "runs/tsmnet-tiny"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    tile: int | None = None
    train_tiles: int = 480
    val_tiles: int = 96
    modality_dropout: float | None = None
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_iters: int | None = None
    warmup_ratio: float = 0.0
    poly_power: float = 0.9
    min_lr: float = 0.0
    backbone_lr_mult: float = 1.0
    iterations: int | None = None
    loss_weights: dict[str, float] | None = None
    recipe: str | None = None
    seed: int = 0
    workers: int = 0
    resume: bool = False
    max_minutes: float | None = None
    amp: bool = True
    pretrained: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)


def resolve(cfg: TrainConfig, model_cfg: dict[str, Any]) -> TrainConfig:
    """Fill the model-dependent defaults (``None`` fields) from the model config; check choices."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule {cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if cfg.loss_weights is not None:
        from .losses import CADFORMER_LOSS_WEIGHTS, TSMNET_LOSS_WEIGHTS

        known = TSMNET_LOSS_WEIGHTS if model_cfg.get("task", "semantic") == "semantic" else CADFORMER_LOSS_WEIGHTS
        bad = sorted(set(cfg.loss_weights) - set(known))
        if bad:
            raise ValueError(f"--loss-weights: unknown terms {bad} for this model; use {', '.join(known)}")
    tile = cfg.tile or int(model_cfg.get("train_tile_size", model_cfg.get("tile_size", 128)))
    img = model_cfg.get("image_encoder", {})
    if img.get("type") == "swin" and not img.get("dynamic_img_size", False) and tile != model_cfg["tile_size"]:
        raise ValueError(f"--tile {tile}: {model_cfg.get('name', 'this model')} is built for {model_cfg['tile_size']} "
                         "pixel tiles (its Swin masks are fixed); drop --tile, or add --set "
                         "image_encoder.dynamic_img_size=true")
    md = cfg.modality_dropout
    if md is None:
        md = float(model_cfg.get("modality_dropout", 0.0))
    return dataclasses.replace(cfg, tile=tile, modality_dropout=md)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """LR multiplier at ``step``: linear warmup from ``warmup_ratio`` over ``warmup_iters``, then
    cosine or poly (``(1 - p) ** poly_power``) decay from ``lr`` to ``min_lr`` (mmcv's rules)."""
    warm = cfg.warmup_iters if cfg.warmup_iters is not None else min(100, total // 10)
    w = min(1.0, cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * (step + 1) / max(1, warm))
    p = min(1.0, step / max(1, total))
    decay = 0.5 * (1 + math.cos(math.pi * p)) if cfg.schedule == "cosine" else (1.0 - p) ** cfg.poly_power
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    return w * (floor + (1.0 - floor) * decay)


def plan_table(cfg: TrainConfig, task: str = "semantic", steps_per_epoch: int | None = None) -> str:
    """What a run will do, as a two-column text table (``rsvl-train`` prints it first)."""
    from .losses import CADFORMER_LOSS_WEIGHTS, TSMNET_LOSS_WEIGHTS

    lw = cfg.loss_weights or (TSMNET_LOSS_WEIGHTS if task == "semantic" else CADFORMER_LOSS_WEIGHTS)
    sched = cfg.schedule if cfg.schedule == "cosine" else f"poly (power {cfg.poly_power})"
    warm = "min(100, total/10)" if cfg.warmup_iters is None else str(cfg.warmup_iters)
    length = f"{cfg.epochs} epochs" if cfg.iterations is None else f"{cfg.iterations} iterations"
    if steps_per_epoch:
        length += f" ({steps_per_epoch} steps/epoch)"
    rows = [
        ("recipe", cfg.recipe or "-"),
        ("model", cfg.model),
        ("data", cfg.data),
        ("length", length),
        ("batch", str(cfg.batch_size)),
        ("optimizer", f"{cfg.optimizer}, weight decay {cfg.weight_decay:g}"),
        ("lr", f"{cfg.lr:g} (backbone x{cfg.backbone_lr_mult:g}, min {cfg.min_lr:g})"),
        ("schedule", f"{sched}, warmup {warm} iters from x{cfg.warmup_ratio:g}"),
        ("loss weights", ", ".join(f"{k} {v:g}" for k, v in lw.items())),
        ("modality dropout", "model config" if cfg.modality_dropout is None else f"{cfg.modality_dropout:g}"),
        ("tile", "model config" if cfg.tile is None else f"{cfg.tile} x {cfg.tile}"),
        ("output folder", cfg.out),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_data_arg(data: str) -> tuple[str, str | None]:
    """``synthetic`` | ``synthetic-referring`` | ``KIND:PATH`` | ``PATH`` (kind ``auto``); see
    :mod:`rsvl_train.data.layouts`."""
    from .data.layouts import parse_data_spec

    return parse_data_spec(data)


def build_datasets(cfg: TrainConfig, model_cfg: dict[str, Any], out: Path) -> tuple[Dataset, Dataset]:
    """Train and validation datasets for ``cfg.data`` (synthetic data is generated under ``out/data``)."""
    from .data import synthetic

    kind, path = parse_data_arg(cfg.data)
    pre = model_cfg["preprocess"]
    referring = model_cfg.get("task") == "referring"
    if kind == "synthetic" and referring:
        kind = "synthetic-referring"
    if kind == "synthetic":
        root = out / "data"
        for split, n, seed in (("train", cfg.train_tiles, cfg.seed), ("val", cfg.val_tiles, cfg.seed + 10_000)):
            if not (root / split).is_dir():
                synthetic.make_tile_dataset(root, n_tiles=n, tile=cfg.tile, seed=seed, split=split)
        path, kind = str(root), "yeseg"
    if kind == "synthetic-referring":
        root = out / "data"
        if not (root / "train.json").is_file():
            n = cfg.train_tiles + cfg.val_tiles
            synthetic.make_referring_dataset(root, n=n, size=cfg.tile, seed=cfg.seed,
                                             splits={"train": cfg.train_tiles / n, "val": cfg.val_tiles / n})
        path, kind = str(root), "rrsis"
    assert path is not None
    from .data.layouts import open_datasets

    return open_datasets(kind, path, pre, task="referring" if referring else "semantic", size=cfg.tile,
                         classes=None if referring else _class_names(model_cfg))


def _class_names(model_cfg: dict[str, Any]) -> list[str]:
    return [c["name"] for c in model_cfg["classes"]]


class Trainer:
    """One training run. Semantic models see their class prompts every step (context tokens learn);
    referring models see one expression per image."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.model_cfg = get_model_config(cfg.model, **cfg.overrides)
        self.cfg = cfg = resolve(cfg, self.model_cfg)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.task = self.model_cfg.get("task", "semantic")
        # the data first: a wrong --data is refused before the (slow) model build
        self.train_set, self.val_set = build_datasets(cfg, self.model_cfg, self.out)
        model = create_model_from_config(self.model_cfg)
        self.pretrained = [self._load_pretrained(model, p) for p in cfg.pretrained]
        self.model = model.to(self.device)
        g = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True, generator=g,
                                       num_workers=cfg.workers, drop_last=True, collate_fn=collate)
        self.val_loader = DataLoader(self.val_set, batch_size=cfg.batch_size, shuffle=False,
                                     num_workers=cfg.workers, collate_fn=collate)
        self.opt = build_optimizer(self.model, cfg)
        self.steps_per_epoch = max(1, len(self.train_loader))
        if cfg.iterations is not None:
            self.cfg = cfg = dataclasses.replace(cfg, epochs=math.ceil(cfg.iterations / self.steps_per_epoch))
        total = cfg.iterations or cfg.epochs * self.steps_per_epoch
        self.total_steps = total
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(total, cfg))
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_epoch = 0
        self.best = -1.0
        if self.task == "semantic":
            ids, mask = self.model.tokenize(self.model.prompts(_class_names(self.model_cfg)))
            self.class_ids = torch.from_numpy(ids).to(self.device)
            self.class_mask = torch.from_numpy(mask).to(self.device)
        if cfg.resume:
            self._resume()

    def _descriptions(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``desc_ids``/``desc_mask`` (``text.desc_max_length`` tokens) when the model fuses scene
        descriptions and every sample of the batch has one; else nothing."""
        descs = batch.get("description")
        if not (self.model_cfg.get("description_fusion") and descs and all(descs)):
            return {}
        d_ids, d_mask = self.model.tokenize_descriptions(list(descs))
        return {"desc_ids": torch.from_numpy(d_ids).to(self.device),
                "desc_mask": torch.from_numpy(d_mask).to(self.device)}

    # ------------------------------------------------------------------ state
    @staticmethod
    def _load_pretrained(model: torch.nn.Module, path: str) -> dict[str, Any]:
        """``--pretrained PATH`` into the built model (:func:`rsvl_train.weights_io.load_pretrained`);
        returns the record kept in the checkpoint info (the load report and the file's sha256)."""
        from rsvl_runtime.files import sha256_file

        from .weights_io import load_pretrained

        report = load_pretrained(model, path)
        p = Path(path)
        digest = sha256_file(p) if p.is_file() else None
        return {**report.to_dict(), "path": str(p), "sha256": digest}

    def _info(self, epoch: int, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"model": self.cfg.model, "epoch": epoch, "train_config": asdict(self.cfg),
                "metrics": metrics or {}, "best": self.best, "torch": torch.__version__,
                **({"pretrained": self.pretrained} if self.pretrained else {})}

    def _save_optimizer(self, path: Path) -> None:
        from safetensors.torch import save

        flat: dict[str, torch.Tensor] = {}
        for i, state in self.opt.state_dict()["state"].items():
            for k, v in state.items():
                flat[f"{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        with atomic_open(path, "wb") as f:
            f.write(save(flat, metadata={"scheduler_step": str(self.sched.last_epoch)}))

    def _resume(self) -> None:
        from safetensors import safe_open

        last = self.out / "last.safetensors"
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} does not exist; start without --resume")
        load_weights(self.model, last)
        meta = json.loads((self.out / "last.json").read_text())
        self.start_epoch = int(meta["info"]["epoch"]) + 1
        self.best = float(meta["info"].get("best", -1.0))
        opt_path = self.out / "last.optim.safetensors"
        if opt_path.is_file():
            sd = self.opt.state_dict()
            with safe_open(str(opt_path), "pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    i, name = key.split(".", 1)
                    sd["state"].setdefault(int(i), {})[name] = f.get_tensor(key)
                step = int(f.metadata().get("scheduler_step", 0))
            self.opt.load_state_dict(sd)
            for _ in range(step):
                self.sched.step()
        log.info("resumed from %s at epoch %d", last, self.start_epoch)

    # ------------------------------------------------------------------ steps
    def _semantic_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from .losses import tsmnet_loss
        from .models.tsmnet import modality_dropout

        opt_x = batch["optical"].to(self.device)
        sar_x = batch["sar"].to(self.device)
        assert self.cfg.modality_dropout is not None  # resolved from the model config
        opt_x, sar_x = modality_dropout(opt_x, sar_x, self.cfg.modality_dropout)
        kwargs = self._descriptions(batch)
        weights = {f"{k}_weight": v for k, v in (self.cfg.loss_weights or {}).items()}
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            outputs = self.model(opt_x, sar_x, self.class_ids, self.class_mask, **kwargs)
            loss, parts = tsmnet_loss(outputs, batch["label"].to(self.device), **weights)
        return loss, {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}

    def _referring_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from .losses import cadformer_loss

        ids, mask = self.model.tokenize(list(batch["expression"]))
        weights = {f"{k}_weight": v for k, v in (self.cfg.loss_weights or {}).items()}
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out = self.model(batch["image"].to(self.device), torch.from_numpy(ids).to(self.device),
                             torch.from_numpy(mask).to(self.device))
            loss = cadformer_loss(out["logits"], batch["mask"].to(self.device), **weights)
        return loss, {"loss": float(loss.detach())}

    def train_epoch(self, epoch: int, deadline: float | None) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.model.train()
        step_fn = self._semantic_step if self.task == "semantic" else self._referring_step
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False)
        for batch in bar:
            loss, parts = step_fn(batch)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            if self.cfg.iterations is not None and self.sched.last_epoch >= self.cfg.iterations:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.warning("time budget reached during epoch %d; stopping after this batch", epoch + 1)
                break
        return {k: v / max(1, n) for k, v in sums.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        from .metrics import ConfusionMatrix, ReferringMetrics

        self.model.eval()
        if self.task == "semantic":
            cm = ConfusionMatrix(len(self.model_cfg["classes"]), ignore_index=255)
            text = self.model.encode_text(self.class_ids, self.class_mask)
            for batch in self.val_loader:
                desc = self._descriptions(batch)
                description = (self.model.encode_description(desc["desc_ids"], desc["desc_mask"]) if desc else None)
                out = self.model.forward_image(batch["optical"].to(self.device), batch["sar"].to(self.device), text,
                                               description)
                cm.update(out["logits"].argmax(1).cpu().numpy(), batch["label"].numpy())
            return cm.compute()
        rm = ReferringMetrics()
        for batch in self.val_loader:
            ids, mask = self.model.tokenize(list(batch["expression"]))
            out = self.model(batch["image"].to(self.device), torch.from_numpy(ids).to(self.device),
                             torch.from_numpy(mask).to(self.device))
            rm.update(out["logits"].argmax(1).cpu().numpy(), batch["mask"].numpy())
        return rm.compute()

    def fit(self) -> dict[str, Any]:
        key = "mIoU" if self.task == "semantic" else "oIoU"
        t0 = time.monotonic()
        deadline = t0 + self.cfg.max_minutes * 60 if self.cfg.max_minutes else None
        metrics: dict[str, Any] = {}
        for epoch in range(self.start_epoch, self.cfg.epochs):
            te = time.monotonic()
            losses = self.train_epoch(epoch, deadline)
            metrics = self.validate()
            score = float(metrics.get(key, metrics.get(key.lower(), 0.0)))
            record = {"epoch": epoch + 1, "seconds": round(time.monotonic() - te, 1),
                      "elapsed": round(time.monotonic() - t0, 1), **{f"train_{k}": v for k, v in losses.items()},
                      **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            with open(self.out / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %d/%d  loss %.4f  %s %.4f  (%.0fs)", epoch + 1, self.cfg.epochs,
                     losses.get("loss", float("nan")), key, score, record["seconds"])
            if score > self.best:
                self.best = score
                save_checkpoint(self.model, self.out / "best", self._info(epoch, metrics))
            save_checkpoint(self.model, self.out / "last", self._info(epoch, metrics))
            self._save_optimizer(self.out / "last.optim.safetensors")
            if deadline is not None and time.monotonic() > deadline:
                break
        summary = {"best": self.best, "metric": key, "minutes": round((time.monotonic() - t0) / 60, 2),
                   "final": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _lr_lambda(total: int, cfg: TrainConfig) -> Callable[[int], float]:
    return lambda step: lr_factor(step, total, cfg)


#: Parameter-name prefixes of the image backbones (``backbone_lr_mult`` applies to them).
BACKBONE_PREFIXES = ("optical_backbone.", "sar_backbone.")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD, momentum 0.9) over the trainable parameters; the backbones' group gets
    ``lr * backbone_lr_mult`` (the TSMNet official config: 0.1)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    backbone = [p for n, p in named if n.startswith(BACKBONE_PREFIXES)]
    rest = [p for n, p in named if not n.startswith(BACKBONE_PREFIXES)]
    if cfg.backbone_lr_mult == 1.0 or not backbone:
        groups: list[dict[str, Any]] = [{"params": [p for _, p in named]}]
    else:
        groups = [{"params": rest}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out

