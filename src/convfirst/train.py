"""Training a ConvFirstNet (or any timm model) on an ImageFolder data set: bf16, channels_last, resumable, DDP.

The data set is a folder in ImageNet's usual layout, one sub-folder per class::

    DATA/train/<class>/<image>.JPEG
    DATA/val/<class>/<image>.JPEG

One process::

    python -m convfirst.train --data /data/imagenet --model convfirstnet_t --out runs/convfirstnet_t

Several GPUs of one machine (DDP; one process per GPU, NCCL on GPUs, gloo on CPUs)::

    torchrun --nproc_per_node 8 -m convfirst.train --data /data/imagenet --model convfirstnet_t \\
        --batch-size 128 --out runs/convfirstnet_t

Re-running the same command continues from ``OUT/last.pt`` (``--resume auto``): model, optimizer, learning
rate schedule, position inside the epoch and random-number state are restored, so an interrupted run and an
uninterrupted one train the same model. Each sample's augmentation is seeded by (seed, epoch, index), so
the data a step sees does not depend on where a run was interrupted or on the number of loader workers.

Mixed precision is bf16 autocast (no loss scaling needed); the model and every batch are channels_last.
Metrics go to ``OUT/metrics.jsonl`` (one JSON object per logged step and per evaluation).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .params import ParameterError

CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Every knob of a training run (the command-line flags, with ``-`` for ``_``)."""

    data: str = ""                      # folder with train/ and val/ sub-folders (ImageFolder layout)
    out: str = "runs/train"             # checkpoints and metrics go here
    model: str = "convfirstnet_t"       # any timm name; the ConvFirstNet/MBConvNet families are registered
    epochs: int = 300
    batch_size: int = 128               # per process
    lr: float = 4e-3                    # peak learning rate for a global batch of 4096 (scaled linearly)
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 20.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    mixup: float = 0.0                  # mixup alpha (0: off)
    cutmix: float = 0.0                 # cutmix alpha (0: off)
    auto_augment: str | None = None     # e.g. 'rand-m9-mstd0.5-inc1' (timm's RandAugment)
    img_size: int = 224
    clip_grad: float | None = None
    amp: bool = True                    # bf16 autocast
    channels_last: bool = True
    compile: bool = False               # torch.compile the model
    workers: int = 8
    seed: int = 0
    device: str = "auto"                # auto | cuda | cpu
    resume: str = "auto"                # auto (OUT/last.pt if present) | none | a checkpoint path
    save_every: int = 1000              # steps between checkpoints (and one at every epoch end)
    log_every: int = 50
    max_steps: int | None = None        # stop after this many optimizer steps in total (smoke tests)
    eval: bool = True                   # evaluate on val/ at every epoch end

    def check(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "img_size", "save_every", "log_every"):
            if int(getattr(self, name)) <= 0:
                raise ParameterError(f"parameter {name}={getattr(self, name)!r} must be a positive integer")
        if self.workers < 0:
            raise ParameterError(f"parameter workers={self.workers!r} must be >= 0")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ParameterError(f"parameter device={self.device!r} is not allowed; choose one of "
                                 f"['auto', 'cuda', 'cpu']")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ParameterError(f"parameter max_steps={self.max_steps!r} must be a positive integer or None")
        train_dir = Path(self.data) / "train"
        if not train_dir.is_dir():
            raise ParameterError(f"parameter data={self.data!r}: no folder {train_dir} (expected DATA/train/<class>/"
                                 f"<image> and DATA/val/<class>/<image>, the ImageFolder layout)")
        return self


# ----------------------------------------------------------------------------------------------------------
# Processes and devices
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Dist:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group if ``WORLD_SIZE`` is set (NCCL on GPUs, gloo on CPUs)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("parameter device='cuda' but no CUDA GPU is present; use device='cpu' or 'auto'")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)


def _all_reduce_sum(values: Sequence[float], d: Dist) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=d.device)
    if d.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------------------------------------
# Data: per-sample seeded augmentation and a resumable, sharded order
# ----------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _seeded_rng(seed: int):
    """Run the body with torch, numpy and python RNGs seeded to ``seed``; restore their states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededSamples(torch.utils.data.Dataset):
    """A data set whose sample ``i`` in epoch ``e`` is augmented with RNGs seeded by (seed, e, i)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with _seeded_rng(hash((self.seed, self.epoch, int(index))) % 2**62):
            return self.dataset[index]


class EpochOrder(torch.utils.data.Sampler):
    """This rank's share of a seeded random permutation of the data set, from a given position.

    Every rank gets ``len(dataset) // world_size`` indices (the remainder is dropped, as DistributedSampler
    does with drop_last); ``start`` skips the samples an interrupted epoch already used.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        per_rank = self.size // self.world_size
        return perm[self.rank: per_rank * self.world_size: self.world_size][self.start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(self.size // self.world_size - self.start, 0)


def build_datasets(cfg: TrainConfig):
    """(train, val) ImageFolder data sets with timm's standard ImageNet transforms; val is None if absent."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    train_tf = create_transform(cfg.img_size, is_training=True, auto_augment=cfg.auto_augment,
                                interpolation="bicubic")
    val_tf = create_transform(cfg.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    root = Path(cfg.data)
    train = ImageFolder(str(root / "train"), transform=train_tf)
    val = ImageFolder(str(root / "val"), transform=val_tf) if (root / "val").is_dir() else None
    if val is not None and val.classes != train.classes:
        raise ParameterError(f"data={cfg.data!r}: val/ has classes {val.classes[:5]}... that differ from "
                             f"train/'s {train.classes[:5]}...")
    return train, val


# ----------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# ----------------------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    import timm

    from . import models as _family  # noqa: F401  (registers the ConvFirstNet/MBConvNet families)

    model = timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, drop_path_rate=cfg.drop_path)
    return model


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int) -> torch.optim.Optimizer:
    """AdamW, no weight decay on biases and normalisation parameters; lr scaled by global batch / 4096."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    lr = cfg.lr * cfg.batch_size * world_size / 4096
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------

def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, epoch: int, step_in_epoch: int,
                    global_step: int, cfg: TrainConfig, classes: list[str]) -> None:
    """Write everything a resumed run needs, atomically (a crash mid-write leaves the old file intact)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
             "global_step": global_step, "rng": _rng_state(), "config": asdict(cfg), "classes": classes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def find_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        p = Path(cfg.out) / CHECKPOINT_NAME
        return p if p.exists() else None
    p = Path(cfg.resume)
    if not p.exists():
        raise ParameterError(f"parameter resume={cfg.resume!r}: no checkpoint at {p} (use 'auto' or 'none')")
    return p


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------

def _log(path: Path, record: dict, d: Dist) -> None:
    if d.is_main:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: TrainConfig, d: Dist) -> dict:
    """Top-1 accuracy and mean loss on ``loader`` (summed over all ranks)."""
    model.eval()
    correct = total = loss_sum = 0.0
    for images, targets in loader:
        images = images.to(d.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model(images)
        loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        correct += float((logits.argmax(1) == targets).sum())
        total += targets.numel()
    correct, total, loss_sum = _all_reduce_sum([correct, total, loss_sum], d)
    model.train()
    return {"top1": 100 * correct / max(total, 1), "val_loss": loss_sum / max(total, 1), "val_images": total}


def train(cfg: TrainConfig) -> dict:
    """Run (or continue) training; returns a summary: per-step losses of this invocation, final step, metrics."""
    cfg.check()
    d = setup_distributed(cfg.device)
    out = Path(cfg.out)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + d.rank)
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)

    train_set, val_set = build_datasets(cfg)
    seeded = SeededSamples(train_set, cfg.seed)
    order = EpochOrder(len(seeded), d.rank, d.world_size, cfg.seed)
    steps_per_epoch = len(order) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ParameterError(f"batch_size={cfg.batch_size} x {d.world_size} process(es) is larger than the "
                             f"{len(train_set)} training images")
    total_steps = cfg.epochs * steps_per_epoch

    model = build_model(cfg, len(train_set.classes)).to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, d.world_size)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    min_ratio = cfg.min_lr / max(optimizer.param_groups[0]["lr"], 1e-12)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, min(min_ratio, 1.0)))

    epoch, step_in_epoch, global_step = 0, 0, 0
    resume_path = find_resume(cfg)
    if resume_path is not None:
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        if state["step_in_epoch"] >= steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        _set_rng_state(state["rng"])
        _log(out / METRICS_NAME, {"event": "resume", "from": str(resume_path), "global_step": global_step}, d)

    net = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda"
                                                  else None)
    if cfg.compile:
        net = torch.compile(net)

    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=len(train_set.classes))

    val_loader = None
    if cfg.eval and val_set is not None:
        val_order = EpochOrder(len(val_set), d.rank, d.world_size, cfg.seed)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_order,
                                                 num_workers=cfg.workers, pin_memory=d.device.type == "cuda")

    losses: list[float] = []
    last_eval: dict = {}
    stop = False
    net.train()
    while epoch < cfg.epochs and not stop:
        seeded.set_epoch(epoch)
        order.set_epoch(epoch, start=step_in_epoch * cfg.batch_size)
        loader = torch.utils.data.DataLoader(
            seeded, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.workers, drop_last=True,
            pin_memory=d.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(cfg.seed + epoch))  # keeps loader seeding off the global RNG
        t0, images_seen = time.perf_counter(), 0
        for images, targets in loader:
            images = images.to(d.device, non_blocking=True)
            targets = targets.to(d.device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = net(images)
            if mixup is not None:
                loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            step_in_epoch += 1
            global_step += 1
            images_seen += images.shape[0]
            loss_value = float(loss.detach())
            losses.append(loss_value)
            if global_step % cfg.log_every == 0 or step_in_epoch == steps_per_epoch:
                (mean_loss,) = _all_reduce_sum([loss_value / d.world_size], d)
                rate = images_seen * d.world_size / (time.perf_counter() - t0)
                _log(out / METRICS_NAME, {"event": "train", "epoch": epoch, "global_step": global_step,
                                          "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                          "img_per_s": rate}, d)
            done = cfg.max_steps is not None and global_step >= cfg.max_steps
            if d.is_main and (global_step % cfg.save_every == 0 or step_in_epoch == steps_per_epoch or done):
                save_checkpoint(out / CHECKPOINT_NAME, model=model, optimizer=optimizer, scheduler=scheduler,
                                epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step, cfg=cfg,
                                classes=train_set.classes)
            if done:
                stop = True
                break
        if stop:
            break
        if val_loader is not None:
            last_eval = evaluate(net, val_loader, cfg, d)
            _log(out / METRICS_NAME, {"event": "eval", "epoch": epoch, "global_step": global_step, **last_eval}, d)
        epoch, step_in_epoch = epoch + 1, 0
    if d.world_size > 1:
        dist.barrier()
    return {"losses": losses, "global_step": global_step, "epoch": epoch, "eval": last_eval,
            "checkpoint": str(out / CHECKPOINT_NAME)}


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Command-line flags for every :class:`TrainConfig` field (``--batch-size``, ``--no-amp``, ...)."""
    ap = argparse.ArgumentParser(prog="python -m convfirst.train", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, default=default, action=argparse.BooleanOptionalAction)
        elif f.name in ("max_steps",):
            ap.add_argument(flag, type=int, default=default)
        elif f.name in ("clip_grad",):
            ap.add_argument(flag, type=float, default=default)
        elif f.name == "auto_augment":
            ap.add_argument(flag, type=str, default=default)
        else:
            ap.add_argument(flag, type=type(default), default=default, required=f.name == "data")
    return TrainConfig(**vars(ap.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_args(argv)
    summary = train(cfg)
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
