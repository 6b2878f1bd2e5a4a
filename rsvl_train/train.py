"""The training loop behind ``rsvl-train``: semantic (TSMNet) and referring (CADFormer) models.

Checkpoints are safetensors + JSON (``runs/NAME/last.*`` every epoch, ``best.*`` on the best
validation score); ``--resume`` continues from ``last``. Validation each epoch reports the
metrics of :mod:`rsvl_train.metrics`; the history goes to ``runs/NAME/history.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
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


@dataclass
class TrainConfig:
    model: str = "tsmnet-tiny"
    data: str = "synthetic"
    out: str = "runs/tsmnet-tiny"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    tile: int = 128
    train_tiles: int = 480
    val_tiles: int = 96
    modality_dropout: float = 0.15
    seed: int = 0
    workers: int = 0
    resume: bool = False
    max_minutes: float | None = None
    amp: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_data_arg(data: str) -> tuple[str, str | None]:
    """``synthetic`` | ``yeseg:PATH`` | ``swjtu:PATH`` | ``rrsis:PATH`` | ``synthetic-referring``."""
    kind, _, path = data.partition(":")
    kind = kind.lower()
    known = ("synthetic", "synthetic-referring", "yeseg", "swjtu", "rrsis")
    if kind not in known:
        raise ValueError(f"--data {data!r}: unknown dataset kind {kind!r}; use one of "
                         "synthetic, yeseg:PATH, swjtu:PATH, rrsis:PATH, synthetic-referring")
    if kind in ("yeseg", "swjtu", "rrsis") and not path:
        raise ValueError(f"--data {data!r}: give the dataset folder, e.g. --data {kind}:/data/{kind}")
    return kind, path or None


def build_datasets(cfg: TrainConfig, model_cfg: dict[str, Any], out: Path) -> tuple[Dataset, Dataset]:
    """Train and validation datasets for ``cfg.data`` (synthetic data is generated under ``out/data``)."""
    from .data import datasets, synthetic

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
    if kind == "rrsis":
        size = cfg.tile
        return (datasets.RRSISDataset(path, "train", pre, size=size),
                datasets.RRSISDataset(path, "val", pre, size=size))
    cls = datasets.SWJTUVisionLanguageDataset if kind == "swjtu" else datasets.OptSarSegDataset
    return cls(path, "train", pre, augment=True), cls(path, "val", pre, augment=False)


def _class_names(model_cfg: dict[str, Any]) -> list[str]:
    return [c["name"] for c in model_cfg["classes"]]


class Trainer:
    """One training run. Semantic models see their class prompts every step (context tokens learn);
    referring models see one expression per image."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model_cfg = get_model_config(cfg.model, **cfg.overrides)
        self.task = self.model_cfg.get("task", "semantic")
        self.model = create_model_from_config(self.model_cfg).to(self.device)
        self.train_set, self.val_set = build_datasets(cfg, self.model_cfg, self.out)
        g = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True, generator=g,
                                       num_workers=cfg.workers, drop_last=True, collate_fn=collate)
        self.val_loader = DataLoader(self.val_set, batch_size=cfg.batch_size, shuffle=False,
                                     num_workers=cfg.workers, collate_fn=collate)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, len(self.train_loader))
        total = cfg.epochs * self.steps_per_epoch
        warm = min(100, total // 10)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
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

    # ------------------------------------------------------------------ state
    def _info(self, epoch: int, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"model": self.cfg.model, "epoch": epoch, "train_config": asdict(self.cfg),
                "metrics": metrics or {}, "best": self.best, "torch": torch.__version__}

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
        opt_x, sar_x = modality_dropout(opt_x, sar_x, self.cfg.modality_dropout)
        kwargs: dict[str, Any] = {}
        descs = batch.get("description")
        if self.model_cfg.get("description_fusion") and descs and all(descs):
            d_ids, d_mask = self.model.tokenize(list(descs))
            kwargs = {"desc_ids": torch.from_numpy(d_ids).to(self.device),
                      "desc_mask": torch.from_numpy(d_mask).to(self.device)}
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            outputs = self.model(opt_x, sar_x, self.class_ids, self.class_mask, **kwargs)
            loss, parts = tsmnet_loss(outputs, batch["label"].to(self.device))
        return loss, {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}

    def _referring_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from .losses import cadformer_loss

        ids, mask = self.model.tokenize(list(batch["expression"]))
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out = self.model(batch["image"].to(self.device), torch.from_numpy(ids).to(self.device),
                             torch.from_numpy(mask).to(self.device))
            loss = cadformer_loss(out["logits"], batch["mask"].to(self.device))
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
                out = self.model.forward_image(batch["optical"].to(self.device), batch["sar"].to(self.device), text)
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


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out

