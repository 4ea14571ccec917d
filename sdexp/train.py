"""The training engine: build everything from the config, train, evaluate, write the run folder."""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from tqdm import tqdm

from sdexp import runs
from sdexp.data import DeviceLoader, build_data, build_loaders
from sdexp.models import ResNet, build_model
from sdexp.optim import build_optimizer
from sdexp.stochastic_depth import set_survival_probs, survival_probs

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, use only deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def git_revision() -> str | None:
    """The project's git commit (with ``-dirty`` if it has local changes), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def train_one_epoch(
    model: ResNet,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    progress: bool,
    desc: str,
) -> dict[str, float]:
    """One pass over the training split; losses are summed on the device and read once at the end."""
    model.train()
    model.executed_blocks = model.total_blocks = 0
    device = loader.images.device
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress or None):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        wrong += (logits.argmax(1) != y).sum()
        seen += len(y)
    train_loss, train_wrong = loss_sum.item(), wrong.item()  # waits for the device
    elapsed = time.perf_counter() - start
    return {
        "train_loss": train_loss / seen,
        "train_error": 100.0 * train_wrong / seen,
        "epoch_time_s": elapsed,
        "images_per_s": seen / elapsed,
        "executed_block_fraction": model.executed_blocks / max(model.total_blocks, 1),
    }


@torch.inference_mode()
def evaluate(model: ResNet, loader: DeviceLoader) -> float:
    """Top-1 error in percent."""
    model.eval()
    wrong = torch.zeros((), device=loader.images.device, dtype=torch.long)
    for x, y in loader:
        wrong += (model(x).argmax(1) != y).sum()
    return 100.0 * wrong.item() / len(loader.labels)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured model, writing ``metrics.csv`` and ``result.json`` into ``run_dir``."""
    tcfg, sd = cfg.trainer, cfg.stochastic_depth
    if tcfg.num_threads is not None:
        torch.set_num_threads(tcfg.num_threads)
    device = resolve_device(tcfg.device)
    seed_everything(cfg.seed, tcfg.deterministic)
    data = build_data(cfg.dataset)
    loaders = build_loaders(data, cfg.dataset, tcfg.batch_size, tcfg.eval_batch_size, device, seed=cfg.seed)
    model = build_model(cfg.model, sd, len(data.classes), seed=cfg.seed).to(device)
    optimizer, scheduler = build_optimizer(model, cfg.optimizer, tcfg.epochs)
    result: dict[str, Any] = {
        "status": "running",
        "epochs_completed": 0,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "stochastic_depth": str(sd.rule),
        "final_survival": sd.final_survival,
        "seed": cfg.seed,
        "num_params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "device_name": device_name(device),
        "git_revision": git_revision(),
        "train_time_s": 0.0,
    }
    runs.write_result(run_dir, result)
    log.info(
        "%s (%d params, %d residual blocks) on %s: %d train / %d val / %d test images, %s",
        cfg.model.name,
        result["num_params"],
        len(model.sd_blocks),
        cfg.dataset.name,
        len(data.train),
        len(data.val),
        len(data.test),
        result["device_name"],
    )
    rows: list[dict[str, Any]] = []
    best_val = math.inf
    for epoch in range(1, tcfg.epochs + 1):
        probs = survival_probs(sd.rule, len(model.sd_blocks), sd.final_survival, epoch - 1, tcfg.epochs)
        set_survival_probs(model.sd_blocks, probs)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(
            model, loaders["train"], optimizer, tcfg.progress, f"epoch {epoch}/{tcfg.epochs}"
        )
        scheduler.step()
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            val_error, test_error = (
                evaluate(model, loaders["val"]),
                evaluate(model, loaders["test"]),
            )
        else:
            val_error = test_error = math.nan
        rows.append({"epoch": epoch, "lr": lr, **stats, "val_error": val_error, "test_error": test_error})
        runs.write_metrics(run_dir, rows)
        result["epochs_completed"] = epoch
        result["train_time_s"] += stats["epoch_time_s"]
        if val_error < best_val:
            best_val = val_error
            result.update(best_val_error=val_error, best_epoch=epoch, test_error_at_best_val=test_error)
        if not math.isnan(test_error):
            result["test_error"] = test_error
        runs.write_result(run_dir, result)
        log.info(
            "epoch %d/%d  lr %.4g  loss %.4f  train %.2f%%  val %.2f%%  test %.2f%%  "
            "blocks run %.1f%%  %.0f img/s  %.1f s",
            epoch,
            tcfg.epochs,
            lr,
            stats["train_loss"],
            stats["train_error"],
            val_error,
            test_error,
            100 * stats["executed_block_fraction"],
            stats["images_per_s"],
            stats["epoch_time_s"],
        )
    result["status"] = "completed"
    runs.write_result(run_dir, result)
    log.info(
        "done: test error %.2f%% at best val epoch %d (%.2f%% at the last), %.0f s of training",
        result["test_error_at_best_val"],
        result["best_epoch"],
        result["test_error"],
        result["train_time_s"],
    )
    return result


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """:func:`train`, recording any exception as ``status: failed`` in ``result.json`` before re-raising."""
    log.info("run folder: %s", run_dir)
    try:
        return train(cfg, run_dir)
    except Exception as exc:
        log.error("training failed:\n%s", traceback.format_exc())
        path = run_dir / runs.RESULT
        result = runs.read_result(run_dir) if path.exists() else {}
        result.update(status="failed", error_type=type(exc).__name__, error=str(exc))
        runs.write_result(run_dir, result)
        raise
