"""The training engine: build everything from the config, train, evaluate, write the run folder.

A run resumes from its folder: rerunning the same command continues from the checkpoint written after
every epoch (or at the step where a stop signal came), and a finished run is not trained again.
"""

from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from sdexp import runs
from sdexp.checkpoint import TrainState, load_checkpoint, restore_metrics
from sdexp.compiled import compile_residual_branches, compiled_graph_count
from sdexp.conv import ConvWeightGrad, use_gemm_weight_grads
from sdexp.cuda_graphs import graph_residual_branches
from sdexp.data import ImageSplits, Loader, LoaderKind, build_data, build_loaders
from sdexp.environment import (
    device_name,
    git_revision,
    keep_freed_host_memory,
    peak_gpu_memory_gib,
    resolve_device,
    seed_everything,
    slurm_cpu_threads,
    slurm_job_id,
    speed_settings,
)
from sdexp.loggers import build_logger
from sdexp.models import ResNet, build_model
from sdexp.optim import build_optimizer
from sdexp.signals import StopSignals, reported_if_default
from sdexp.step import Step, build_step
from sdexp.step.base import autocast
from sdexp.stochastic_depth import set_survival_probs, survival_probs

log = logging.getLogger(__name__)


def prepare_model(cfg: DictConfig, num_classes: int, device: torch.device) -> ResNet:
    """The configured model on ``device``, in its memory format, with GEMM weight gradients, its
    branches CUDA-graphed or compiled if asked. On the CPU the process also keeps freed memory for
    the next step's activations (:func:`~sdexp.environment.keep_freed_host_memory`)."""
    if device.type == "cpu" and keep_freed_host_memory():
        log.info("glibc keeps freed memory in the process (no page faults for each step's activations)")
    amp_dtype, channels_last = speed_settings(cfg.trainer, device)
    model = build_model(cfg.model, cfg.stochastic_depth, num_classes, seed=cfg.seed).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.conv_weight_grad == ConvWeightGrad.gemm:
        log.info("trainer.conv_weight_grad=gemm: %d convolutions", use_gemm_weight_grads(model))
    if cfg.trainer.cuda_graphs:
        graph_residual_branches(model, cfg.trainer.batch_size, amp_dtype)
    if cfg.trainer.compile:
        compile_residual_branches(model)
    return model


@dataclass
class EpochProgress:
    """A training epoch in progress: enough to continue it exactly after a stop."""

    order: torch.Tensor  # this epoch's sample order
    loss_sum: torch.Tensor  # device sums, read once at the end of the epoch
    wrong: torch.Tensor
    first_bad_step: torch.Tensor  # first step with a non-finite loss, -1 if none
    step: int = 0  # steps done
    seen: int = 0
    executed_blocks: int = 0
    total_blocks: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def start(cls, loader: Loader) -> EpochProgress:
        device = loader.device
        return cls(
            order=loader.epoch_order(),
            loss_sum=torch.zeros((), device=device),
            wrong=torch.zeros((), device=device, dtype=torch.long),
            first_bad_step=torch.full((), -1, device=device, dtype=torch.long),
        )

    def state_dict(self) -> dict[str, Any]:
        return {k: v.cpu() if torch.is_tensor(v) else v for k, v in vars(self).items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        return cls(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()})


def train_one_epoch(
    model: ResNet,
    step: Step,
    loader: Loader,
    epoch: EpochProgress,
    stop: StopSignals,
    progress: bool,
    desc: str,
) -> dict[str, float] | None:
    """Train the rest of ``epoch`` with ``step``; return its statistics, or None if a stop signal came
    first (then ``epoch`` holds the progress so far).

    Losses and errors are summed on the device and read once at the end (no per-step sync); so is the
    first step whose loss was not finite (``epoch.first_bad_step``, -1 if none), which the caller reads.
    """
    if stop.received is not None:  # it came in the evaluation before this epoch
        return None
    model.train()
    bar = tqdm(
        total=len(loader) * loader.batch_size,
        initial=epoch.seen,
        desc=desc,
        unit="img",
        unit_scale=True,
        leave=False,
        disable=not progress or None,  # None: only on a terminal
    )
    start = time.perf_counter()
    for x, y in loader.batches(epoch.order, epoch.step):
        loss, logits = step(x, y)
        epoch.executed_blocks += model.executed_last
        epoch.total_blocks += len(model.sd_blocks)
        epoch.step += 1
        epoch.loss_sum += loss * len(y)
        epoch.wrong += (logits.argmax(1) != y).sum()
        bad = (epoch.first_bad_step < 0) & ~torch.isfinite(loss)
        epoch.first_bad_step = torch.where(bad, epoch.step, epoch.first_bad_step)
        epoch.seen += len(y)
        bar.update(len(y))
        if stop.received is not None:  # here, not before a step: the next batch draws its augmentation
            break
    bar.close()
    train_loss, train_wrong = epoch.loss_sum.item(), epoch.wrong.item()  # waits for the device
    epoch.elapsed_s += time.perf_counter() - start
    if epoch.step < len(loader):
        return None
    return {
        "train_loss": train_loss / epoch.seen,
        "train_error": 100.0 * train_wrong / epoch.seen,
        "epoch_time_s": epoch.elapsed_s,
        "images_per_s": epoch.seen / epoch.elapsed_s,
        "executed_block_fraction": epoch.executed_blocks / max(epoch.total_blocks, 1),
    }


@torch.inference_mode()
def evaluate(
    model: ResNet, loader: Loader, amp_dtype: torch.dtype | None = None, stop: StopSignals | None = None
) -> float | None:
    """Top-1 error in percent (NaN for an empty split), or None if a stop signal came first: a long
    evaluation must not keep a stop (a scheduler's time limit) waiting."""
    if len(loader.labels) == 0:
        return math.nan
    model.eval()
    device = loader.device
    wrong = torch.zeros((), device=device, dtype=torch.long)
    for x, y in loader:
        if stop is not None and stop.received is not None:
            return None
        with autocast(device, amp_dtype):
            wrong += (model(x).argmax(1) != y).sum()
    return 100.0 * wrong.item() / len(loader.labels)


def _evaluate(
    model: ResNet, loaders: dict[str, Loader], amp_dtype: torch.dtype | None, stop: StopSignals
) -> dict[str, float] | None:
    """The validation and test errors, or None if a stop signal came first."""
    errors = {}
    for split in ("val", "test"):
        if (error := evaluate(model, loaders[split], amp_dtype, stop)) is None:
            return None
        errors[f"{split}_error"] = error
    return errors


def _identity(cfg: DictConfig) -> dict[str, Any]:
    """What tells runs apart in ``result.json``, and a checkpoint from another run's."""
    return {
        "model": str(cfg.model.name),
        "dataset": str(cfg.dataset.name),
        "stochastic_depth": str(cfg.stochastic_depth.rule),
        "final_survival": cfg.stochastic_depth.final_survival,
        "seed": cfg.seed,
    }


def _run_fields(cfg: DictConfig, model: ResNet, device: torch.device, data: ImageSplits) -> dict[str, Any]:
    """What a new run's ``result.json`` says about it besides its progress."""
    return {
        **_identity(cfg),
        "train_images": len(data.train),
        "classes": len(data.classes),
        "num_params": sum(p.numel() for p in model.parameters()),
        "torch_version": str(torch.__version__),
        "device_name": device_name(device),
        "git_revision": git_revision(),
        "slurm_job_id": slurm_job_id(),
    }


def _set_up(cfg: DictConfig) -> torch.device:
    """CPU threads, the device, and every seed."""
    threads = cfg.trainer.num_threads or slurm_cpu_threads()
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    return device


def _check_same_data(run_dir: Path, checkpoint: dict[str, Any], data: ImageSplits) -> None:
    """Refuse to resume a run on other data than its checkpoint trained on: a resumed epoch's sample
    order, and the model's head, would not fit it. Checked by the training images and classes the run
    recorded; for runs from before it recorded them, by an epoch in progress and the head's size."""
    result, in_progress = checkpoint["result"], checkpoint["epoch_in_progress"]
    head = checkpoint["model"].get("head.bias")
    then = {
        "training images": result.get("train_images", len(in_progress["order"]) if in_progress else None),
        "classes": result.get("classes", len(head) if head is not None else None),
    }
    now = {"training images": len(data.train), "classes": len(data.classes)}
    changed = [what for what, count in then.items() if count is not None and count != now[what]]
    if changed:
        raise runs.RunFolderError(
            f"{run_dir} holds a run that trained on "
            + " and ".join(f"{then[what]} {what}" for what in changed)
            + f"; dataset={result.get('dataset')} now gives "
            + " and ".join(f"{now[what]}" for what in changed)
            + f": restore the data, or train in {runs.OTHER_FOLDER}"
        )


def _check_checkpoint(run_dir: Path, cfg: DictConfig, checkpoint: dict[str, Any], data: ImageSplits) -> None:
    """Refuse to resume on other data (:func:`_check_same_data`), or from a checkpoint of another run
    (one copied in from another folder): its seed, model, data set or rule as its result records them,
    or its weights' names and shapes, differ from this run's."""
    _check_same_data(run_dir, checkpoint, data)
    recorded = checkpoint["result"]
    ours = _identity(cfg)
    changed = [f"{key} {recorded[key]}, not {value}" for key, value in ours.items()
               if key in recorded and str(recorded[key]) != str(value)]  # fmt: skip
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = build_model(cfg.model, cfg.stochastic_depth, len(data.classes), seed=cfg.seed)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if shapes != {name: tuple(value.shape) for name, value in checkpoint["model"].items()}:
        changed.append("weights of another architecture")
    if changed:
        raise runs.RunFolderError(
            f"{run_dir / runs.CHECKPOINT} is another run's: {'; '.join(changed)}: move it away to train "
            f"from the first epoch, or train in {runs.OTHER_FOLDER}"
        )


def _start_or_resume(
    cfg: DictConfig,
    run_dir: Path,
    state: TrainState,
    checkpoint: dict[str, Any] | None,
    device: torch.device,
    data: ImageSplits,
) -> tuple[runs.RunRecord, EpochProgress | None]:
    """The run's record, new or resumed from ``checkpoint`` (whose state is restored into ``state``),
    and the epoch the checkpoint stopped in the middle of, if any."""
    if checkpoint is None:
        return runs.RunRecord.new(run_dir, _run_fields(cfg, state.model, device, data)), None
    state.restore(checkpoint)
    in_progress = None
    if checkpoint["epoch_in_progress"] is not None:
        in_progress = EpochProgress.from_state_dict(checkpoint["epoch_in_progress"], device)
    elif checkpoint["result"]["epochs_completed"] >= cfg.trainer.epochs:  # its result.json was lost
        log.info("the checkpoint holds all %d epochs: rebuilding result.json from it", cfg.trainer.epochs)
        return runs.RunRecord(run_dir, checkpoint["result"], checkpoint["rows"]), None
    step = in_progress.step if in_progress else 0
    record = runs.RunRecord.resumed(
        run_dir, checkpoint["result"], checkpoint["rows"], step,
        device_name=device_name(device), slurm_job_id=slurm_job_id(),
    )  # fmt: skip
    log.info("resuming epoch %d at step %d", record.next_epoch, step)
    return record, in_progress


def train(
    cfg: DictConfig, run_dir: Path, data: ImageSplits, checkpoint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train the configured model on ``data`` (from ``checkpoint`` if given), writing the run folder
    as it goes; return the run's result.

    Ends with ``status`` completed, diverged (a non-finite loss; training stops) or interrupted (a
    stop signal: the step in progress finishes, a checkpoint of the epoch so far is written, and the
    signal is passed on to its previous handler, which ends the process or requeues the job).
    """
    tcfg, sd = cfg.trainer, cfg.stochastic_depth
    device = _set_up(cfg)
    amp_dtype, channels_last = speed_settings(tcfg, device)
    loaders = build_loaders(
        data, cfg.dataset, tcfg.batch_size, tcfg.eval_batch_size, device, cfg.seed, channels_last
    )
    model = prepare_model(cfg, len(data.classes), device)
    optimizer, scheduler = build_optimizer(model, cfg.optimizer, tcfg.epochs)
    state = TrainState(
        model, optimizer, scheduler, {"gates": model.gate_generator, "loader": loaders["train"].generator}
    )
    checkpoint_path = run_dir / runs.CHECKPOINT

    record, in_progress = _start_or_resume(cfg, run_dir, state, checkpoint, device, data)
    mid_epoch = in_progress is not None and 0 < in_progress.step < len(loaders["train"])
    if mid_epoch and cfg.dataset.loader == LoaderKind.torch:
        log.warning("dataset.loader=torch: the rest of this epoch is not exactly the uninterrupted run's")
    step = build_step(tcfg, cfg.stochastic_depth.mode, model, optimizer, amp_dtype)  # after the restore
    logger = build_logger(cfg, run_dir, record.rows)
    log.info(
        "%s (%d params, %d residual blocks) on %s: %d train / %d val / %d test images, %s",
        cfg.model.name, record.result["num_params"], len(model.sd_blocks), cfg.dataset.name,
        len(data.train), len(data.val), len(data.test), record.result["device_name"],
    )  # fmt: skip

    graphs = None  # torch.compile's graph count after the first epoch of this process
    with StopSignals() as stop, closing(logger), torch.autograd.set_detect_anomaly(tcfg.detect_anomaly):
        for epoch in range(record.next_epoch, tcfg.epochs + 1):
            probs = survival_probs(sd.rule, len(model.sd_blocks), sd.final_survival, epoch - 1, tcfg.epochs)
            set_survival_probs(model.sd_blocks, probs)
            lr = optimizer.param_groups[0]["lr"]
            progress, in_progress = in_progress or EpochProgress.start(loaders["train"]), None
            desc = _epoch_description(epoch, tcfg.epochs, record.rows)
            stats = train_one_epoch(model, step, loaders["train"], progress, stop, tcfg.progress, desc)
            # also after a stop signal mid-epoch: a checkpoint of non-finite weights resumes nothing
            if (first_bad_step := int(progress.first_bad_step.item())) >= 0:
                record.diverged(epoch, first_bad_step)
                log.warning("diverged: non-finite loss at epoch %d, step %d", epoch, first_bad_step)
                break
            if stats is None:
                errors = None
            elif epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
                errors = _evaluate(model, loaders, amp_dtype, stop)
            else:  # not evaluated this epoch
                errors = {"val_error": math.nan, "test_error": math.nan}
            if errors is None:  # a stop signal, in the training steps or in their evaluation
                record.interrupted(epoch)  # the epoch resumes at its next step, or at its evaluation
                state.save(checkpoint_path, record, progress.state_dict())
                log.warning(
                    "received %s: stopped in epoch %d after step %d%s, checkpoint written: run the same "
                    "command again to resume", signal.Signals(stop.received).name, epoch, progress.step,
                    " (in its evaluation)" if stats is not None else "",
                )  # fmt: skip
                break
            _step_schedule(scheduler)  # after the evaluation: a checkpoint taken in it holds the epoch's rate
            record.epoch_done({"epoch": epoch, "lr": lr, **stats, **errors}, peak_gpu_memory_gib(device))
            state.save(checkpoint_path, record)
            logger.log_epoch(record.rows[-1])  # after the checkpoint: see sdexp.loggers
            _log_epoch(record.rows[-1], tcfg.epochs)
            if tcfg.compile:
                graphs = _report_compiles(epoch, graphs)
        else:  # every epoch trained, even if a stop signal came after the last one's checkpoint
            record.completed()
            logger.log_result(record.result)
    result = record.result
    stop.forward(ended=None if result["status"] == "interrupted" else result["status"])  # ends the process
    if result["status"] == "diverged":
        return result
    log.info(
        "done: best val error %s at epoch %d, test error there %s (%s at the last), %.0f s of training",
        _percent(result["best_val_error"]), result["best_epoch"], _percent(result["test_error_at_best_val"]),
        _percent(result["test_error"]), result["train_time_s"],
    )  # fmt: skip
    return result


def _percent(error: float) -> str:
    """An error for the log; ``-`` where there is none (an epoch not evaluated, an empty split)."""
    return "-" if math.isnan(error) else f"{error:.2f}%"


def _log_epoch(row: dict[str, Any], epochs: int) -> None:
    log.info(
        "epoch %d/%d  lr %.4g  loss %.4f  train %.2f%%  val %s  test %s  blocks run %.1f%%  %.0f img/s  "
        "%.1f s",
        row["epoch"], epochs, row["lr"], row["train_loss"], row["train_error"], _percent(row["val_error"]),
        _percent(row["test_error"]), 100 * row["executed_block_fraction"], row["images_per_s"],
        row["epoch_time_s"],
    )  # fmt: skip


def _step_schedule(scheduler: LRScheduler) -> None:
    """``scheduler.step()`` without PyTorch's warning that no ``optimizer.step()`` came first (so that a
    rate would be skipped): true only of a run resumed in epoch 1's evaluation, whose rates are the
    uninterrupted run's all the same (tests/test_resume.py)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
        scheduler.step()


def _epoch_description(epoch: int, epochs: int, rows: list[dict[str, Any]]) -> str:
    """The progress bar's label: the epoch, and the last epoch's loss and validation error."""
    desc = f"epoch {epoch}/{epochs}"
    if rows:
        desc += f" (last: loss {rows[-1]['train_loss']:.3f}, val {_percent(rows[-1]['val_error'])})"
    return desc


def _report_compiles(epoch: int, before: int | None) -> int:
    """Log how many graphs torch.compile has built; warn if an epoch after the first built more, or if
    none was built (a torch whose compile leaves the branches eager)."""
    graphs = compiled_graph_count()
    if before is None and graphs == 0:  # said once, after the first epoch
        log.warning(
            "trainer.compile=true, but torch %s compiled no graph: the branches ran eagerly",
            torch.__version__,
        )
    if before is not None and graphs > before:
        log.warning(
            "torch.compile built %d more graphs in epoch %d: recompiles after the first epoch slow "
            "training down", graphs - before, epoch,
        )  # fmt: skip
    log.info("torch.compile: %d graphs built so far", graphs)
    return graphs


def _finished(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The result of a finished run in ``run_dir`` (its metrics.csv written again from the checkpoint
    if it was moved away), or None if there is one to train (or resume); a run with another config
    raises :class:`~sdexp.runs.RunFolderError`."""
    runs.check_config(run_dir, cfg)
    previous = runs.finished_result(run_dir)
    if previous is None:
        return None
    restore_metrics(run_dir)
    log.info("%s already holds a %s run: nothing to do", run_dir, previous["status"])
    return previous


def run(cfg: DictConfig, run_dir: Path, hydra_cfg: DictConfig | None = None) -> dict[str, Any]:
    """Train into ``run_dir``, or resume the run there, or say it is finished.

    The folder and the data are checked before anything is written: a finished run is returned as it
    is; a run with another config, a damaged file in the folder, a folder another process is training
    in or an unreadable checkpoint raises :class:`~sdexp.runs.RunFolderError`, a missing or broken data
    set :class:`~sdexp.data.DatasetError`, and the folder is left as it was.
    Any exception during training is recorded as ``status: failed`` (with the error; Ctrl-C pressed
    twice as ``status: interrupted``) and re-raised with notes saying where and how to go on.
    """
    run_dir = Path(run_dir)
    finished = _finished(run_dir, cfg)
    if finished is not None:
        return finished
    # Before the folder is claimed, so that a data error leaves it as it was; no checkpoint to write yet.
    with reported_if_default(signal.SIGTERM):
        data = build_data(cfg.dataset)
    with runs.exclusive(run_dir):  # a second process on this folder is refused here
        finished = _finished(run_dir, cfg)  # another process may have finished it while data loaded
        if finished is not None:
            return finished
        checkpoint_path = run_dir / runs.CHECKPOINT
        checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
        if checkpoint is not None:
            _check_checkpoint(run_dir, cfg, checkpoint, data)  # before anything is written
        done = (runs.previous_result(run_dir) or {}).get("epochs_completed", 0)
        if checkpoint is None and done:
            log.warning(
                "%s records %d completed epochs but has no %s: training again from the first epoch",
                run_dir / runs.RESULT, done, runs.CHECKPOINT,
            )  # fmt: skip
        log.info("run folder: %s", run_dir)
        runs.write_config_files(run_dir, cfg, hydra_cfg)
        try:
            return train(cfg, run_dir, data, checkpoint)
        except BaseException as exc:
            if not isinstance(exc, SystemExit):  # SystemExit: a forwarded stop signal, already recorded
                runs.record_failure(run_dir, exc)
            raise
