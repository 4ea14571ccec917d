"""Training speed, measured in one process: stochastic vs constant depth, precision, memory format,
the training step (``trainer.step``), CUDA graphs and torch.compile of the residual branches, the fast
loader vs DataLoader.

Times the trainer's own ``train_one_epoch`` (gate sampling, the loader with its augmentation,
optimizer step, one device sync per epoch) on random CIFAR-shaped data, after a warm-up epoch, and
reports the median of several epochs per case, and the trainer's ``evaluate`` on the same images
(the paper's 500 epochs include 15,000 evaluated images each). Constant and stochastic depth are timed
in alternate epochs, and SD/const is the median of the ratios of neighbouring epochs, so drift on a
shared machine cancels out. Also times the input pipeline alone, and counts page faults per step (on
the CPU, memory handed back to the kernel and faulted in again costs time that varies from run to run).

    python benchmarks/train_speed.py --model resnet110              # the paper's network
    python benchmarks/train_speed.py --step autograd,segments        # the two training steps
    python benchmarks/train_speed.py --compile false,true            # eager vs compiled branches
    python benchmarks/train_speed.py --loader fast,torch             # device-resident vs DataLoader
    python benchmarks/train_speed.py --conv-weight-grad native,gemm  # cuDNN's weight gradients vs GEMMs
    python benchmarks/train_speed.py --quick                         # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
import traceback
from typing import NamedTuple

import arg_types  # sibling scripts: benchmarks/ is on sys.path when a benchmark runs
import pandas as pd
import torch
from arg_types import count, flag, listed, one_of
from omegaconf import DictConfig
from plain_peer import cifar_depth, images_per_s, sync

from sdexp.config import ConfigError, compose_config, register_configs, validate
from sdexp.conv import ConvWeightGrad
from sdexp.cuda_graphs import branch_inputs
from sdexp.data import DeviceLoader, Loader, LoaderKind, TorchLoader
from sdexp.environment import resolve_device, seed_everything, speed_settings
from sdexp.errors import SdexpError, reported
from sdexp.models import IMAGE_SIZE
from sdexp.optim import build_optimizer
from sdexp.signals import StopSignals
from sdexp.step import StepKind, build_step
from sdexp.stochastic_depth import set_survival_probs, survival_probs
from sdexp.train import EpochProgress, evaluate, prepare_model, train_one_epoch

PAPER_EPOCHS, PAPER_TRAIN_IMAGES = 500, 45_000
PAPER_EVAL_IMAGES, EVAL_BATCH = 15_000, 1000  # validation and test images per epoch (5,000 + 10,000)


def page_faults() -> int:
    """This process's minor page faults so far: host memory it was handed anew by the kernel."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Setting(NamedTuple):
    """What is compared besides the depth rule: one table row per rule and setting."""

    precision: str  # fp32 or bf16
    channels_last: bool
    step: str  # trainer.step: auto, autograd, segments or graph
    graphs: bool  # CUDA-graphed branches
    compiled: bool  # torch.compile'd branches
    loader: str  # fast (device-resident) or torch (DataLoader + torchvision)
    weight_grad: str  # trainer.conv_weight_grad: native or gemm


def make_loader(
    kind: str, images: int, batch: int, device: torch.device, channels_last: bool, workers: int
) -> Loader:
    """A training loader of ``kind`` over random uint8 CIFAR-shaped images, augmented as in training."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    common = {"train": True, "augment": True, "channels_last": channels_last}
    if kind == "torch":
        return TorchLoader(x, y, batch, [0.5] * 3, [0.25] * 3, device, num_workers=workers, **common)
    return DeviceLoader(x, y, batch, [0.5] * 3, [0.25] * 3, device, **common)


def expected_ratio(
    model: torch.nn.Module, batch: int, amp_dtype: torch.dtype | None, probs: list[float]
) -> float:
    """Σ p_l·t_l / Σ t_l: the SD/constant time ratio the blocks alone would give, from each residual
    branch's measured forward+backward time t_l (early, wide-image blocks can cost more than late ones)."""
    device = next(model.parameters()).device
    times = []
    for block, x in zip(model.sd_blocks, branch_inputs(model, batch, amp_dtype), strict=True):
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            grad = torch.randn_like(block.residual(x))  # a dense gradient, as in training (not sum()'s)
        for rep in range(3):
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = block.residual(x)
            out.backward(grad)
            sync(device)
            if rep:  # the first is a warm-up
                times.append((block, time.perf_counter() - start))
    per_block = [sum(t for b, t in times if b is block) for block in model.sd_blocks]
    return sum(p * t for p, t in zip(probs, per_block, strict=True)) / sum(per_block)


def check_images(images: int, batch: int) -> None:
    """An epoch of ``images`` must hold at least one batch (an incomplete last batch is dropped)."""
    if images < batch:
        raise SdexpError(f"--images {images} is less than one batch ({batch} images)")


def case_config(args: argparse.Namespace, rule: str, setting: Setting) -> DictConfig:
    """The run config of one table row; raises :class:`ConfigError` for a combination that a run
    would refuse."""
    cfg = compose_config(
        [
            f"model={args.model}",
            f"stochastic_depth={rule}",
            f"trainer.device={args.device}",
            f"trainer.precision={setting.precision}",
            f"trainer.channels_last={str(setting.channels_last).lower()}",
            f"trainer.step={setting.step}",
            f"trainer.cuda_graphs={str(setting.graphs).lower()}",
            f"trainer.compile={str(setting.compiled).lower()}",
            f"trainer.conv_weight_grad={setting.weight_grad}",
        ]
    )
    validate(cfg)
    return cfg


class Case:
    """One configuration, built and warmed up: :meth:`time_epoch` trains one timed epoch, :meth:`row`
    summarises them. Constant and stochastic depth are timed alternately, epoch by epoch, so that a
    machine that speeds up or slows down during the run changes both alike."""

    def __init__(self, args: argparse.Namespace, rule: str, setting: Setting) -> None:
        cfg = case_config(args, rule, setting)
        check_images(args.images, cfg.trainer.batch_size)  # before the model and step are built
        self.rule, self.setting, self.repeats = rule, setting, args.repeats
        self.device = resolve_device(cfg.trainer.device)
        self.amp_dtype, self.channels_last = speed_settings(cfg.trainer, self.device)
        seed_everything(0, cfg.trainer.deterministic)  # as a run does: cudnn.benchmark on CUDA
        self.model = prepare_model(cfg, 10, self.device)
        sd = cfg.stochastic_depth
        probs = survival_probs(sd.rule, len(self.model.sd_blocks), sd.final_survival)
        set_survival_probs(self.model.sd_blocks, probs)
        optimizer, _ = build_optimizer(self.model, cfg.optimizer, cfg.trainer.epochs)
        self.step = build_step(cfg.trainer, sd.mode, self.model, optimizer, self.amp_dtype)
        self.batch = cfg.trainer.batch_size
        loader_args = (self.batch, self.device, self.channels_last, args.workers)
        self.loader = make_loader(setting.loader, args.images, *loader_args)
        self.epochs: list[dict] = []
        self.train(make_loader(setting.loader, self.batch * 10, *loader_args))  # warm-up

    def train(self, data: Loader) -> dict:
        progress, stop = EpochProgress.start(data), StopSignals()
        return train_one_epoch(self.model, self.step, data, progress, stop, False, "")

    def time_epoch(self) -> None:
        faults = page_faults()
        stats = self.train(self.loader)
        stats["page_faults_per_step"] = (page_faults() - faults) / len(self.loader)
        self.epochs.append(stats)

    def eval_images_per_s(self) -> float:
        """The trainer's ``evaluate`` over the timed epoch's images (batches of 1,000), after a warm-up."""
        images = self.loader.images if isinstance(self.loader, DeviceLoader) else self.loader.dataset.images
        loader = DeviceLoader(images, self.loader.labels, EVAL_BATCH, [0.5] * 3, [0.25] * 3, self.device,
                              channels_last=self.channels_last)  # fmt: skip
        times = []
        for _ in range(2):
            sync(self.device)
            start = time.perf_counter()
            evaluate(self.model, loader, self.amp_dtype)  # ends with a device sync
            times.append(time.perf_counter() - start)
        return len(loader.labels) / times[-1]

    def row(self) -> dict:
        probs = [b.survival for b in self.model.sd_blocks]
        expected = 1.0  # constant depth: every block runs
        if self.rule != "off":
            expected = expected_ratio(self.model, self.batch, self.amp_dtype, probs)
        input_times = []
        for _ in range(self.repeats):
            sync(self.device)
            start = time.perf_counter()
            for _batch in self.loader:
                pass
            sync(self.device)
            input_times.append(time.perf_counter() - start)
        images_per_s = statistics.median(e["images_per_s"] for e in self.epochs)
        epoch_s = PAPER_TRAIN_IMAGES / images_per_s
        eval_s = PAPER_EVAL_IMAGES / self.eval_images_per_s()
        train_s = statistics.median(e["epoch_time_s"] for e in self.epochs)
        return {
            "rule": self.rule,
            "precision": "bf16" if self.amp_dtype is not None else "fp32",
            "channels_last": self.channels_last,
            "step": self.setting.step + (f" ({self.step.kind})" if self.setting.step == "auto" else ""),
            "cuda_graphs": self.setting.graphs,
            "compiled": self.setting.compiled,
            "loader": self.setting.loader,
            "conv_weight_grad": self.setting.weight_grad,
            "images_per_s": images_per_s,
            "epoch_time_s": epoch_s,
            "eval_time_s": eval_s,
            "paper_500_epochs_min": PAPER_EPOCHS * (epoch_s + eval_s) / 60,
            "executed_block_fraction": statistics.mean(e["executed_block_fraction"] for e in self.epochs),
            "cost_weighted_ratio": expected,
            "input_share": statistics.median(input_times) / train_s,
            "page_faults_per_step": statistics.median(e["page_faults_per_step"] for e in self.epochs),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
        }


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--model", default=None, help="resnet110 (--quick: resnet20)")
    parser.add_argument("--device", type=arg_types.device, default="auto")
    parser.add_argument("--images", type=count, default=None, help="images per timed epoch")
    parser.add_argument("--repeats", type=count, default=None, help="timed epochs per case (median; 5)")
    parser.add_argument("--precision", type=listed(one_of("fp32", "bf16")), help="comma list of fp32,bf16")
    parser.add_argument("--channels-last", type=listed(flag), help="comma list of false,true")
    parser.add_argument("--step", type=listed(one_of(*StepKind)), default="autograd",
                        help=f"comma list of {','.join(StepKind)}")  # fmt: skip
    parser.add_argument("--cuda-graphs", type=listed(flag), default="false", help="comma list of false,true")
    parser.add_argument("--compile", type=listed(flag), default="false",
                        help="comma list of false,true: torch.compile branches")  # fmt: skip
    parser.add_argument("--loader", type=listed(one_of(*LoaderKind)), default="fast",
                        help="comma list of fast,torch (DataLoader)")  # fmt: skip
    parser.add_argument("--conv-weight-grad", type=listed(one_of(*ConvWeightGrad)), default="native",
                        help="comma list of native,gemm")  # fmt: skip
    parser.add_argument(
        "--workers", type=arg_types.workers, default=4, help="DataLoader worker processes (torch loader)"
    )
    parser.add_argument("--peer", type=flag, default=None, help="true/false: time the plain PyTorch peer too")
    parser.add_argument("--json", type=arg_types.new_file, default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: checks the script runs")
    args = parser.parse_args()
    register_configs()
    on_cuda = resolve_device(args.device).type == "cuda"
    arg_types.fill(
        args,
        {"model": "resnet20", "repeats": 1, "images": 512},
        {"model": "resnet110", "repeats": 5, "images": 20_000 if on_cuda else 2_048},
    )
    precisions = args.precision or (["fp32", "bf16"] if on_cuda else ["fp32"])
    layouts = args.channels_last or ([False, True] if on_cuda else [True])
    check_images(args.images, compose_config([f"model={args.model}"]).trainer.batch_size)  # before any row
    rows = []
    for setting in map(
        Setting._make,
        itertools.product(
            precisions, layouts, args.step, args.cuda_graphs, args.compile, args.loader, args.conv_weight_grad
        ),
    ):
        try:
            case_config(args, "linear", setting)
        except ConfigError as exc:  # e.g. segments with graphed branches
            print(f"skipped {setting}: {exc}", file=sys.stderr)
            continue
        try:
            constant, sd = (Case(args, rule, setting) for rule in ("off", "linear"))
            for _ in range(args.repeats):
                constant.time_epoch()
                sd.time_epoch()
        except SdexpError as exc:  # e.g. a step this machine cannot build: the other rows still run
            print(f"skipped {setting}: {exc}", file=sys.stderr)
            continue
        except RuntimeError:  # a capture or check that failed: its traceback, then the other rows
            print(f"failed {setting}:", file=sys.stderr)
            traceback.print_exc()
            continue
        pair = [constant.row(), sd.row()]
        pair[0]["ratio_to_constant"] = 1.0
        pair[1]["ratio_to_constant"] = statistics.median(  # of the ratios of epochs timed side by side
            s["epoch_time_s"] / c["epoch_time_s"] for c, s in zip(constant.epochs, sd.epochs, strict=True)
        )
        rows += pair
        for row in pair:
            print(json.dumps(row), file=sys.stderr, flush=True)
    if not rows:
        raise SdexpError("no setting left to time: each was skipped, for the reasons above")
    print(f"\n{args.model} on {rows[0]['device']}, torch {torch.__version__}, "
          f"{args.images} images per timed epoch, median of {args.repeats}")  # fmt: skip
    table = [
        {"rule": r["rule"], "precision": r["precision"], "ch_last": r["channels_last"],
         "step": r["step"],
         "graphs": r["cuda_graphs"], "compiled": r["compiled"], "loader": r["loader"],
         "weight grad": r["conv_weight_grad"],
         "img/s": f"{r['images_per_s']:.0f}", "45k-epoch s": f"{r['epoch_time_s']:.2f}",
         "SD/const": f"{r['ratio_to_constant']:.3f}",
         "blocks-only SD/const": f"{r['cost_weighted_ratio']:.3f}",
         "blocks run": f"{100 * r['executed_block_fraction']:.1f}%",
         "input %": f"{100 * r['input_share']:.1f}",
         "faults/step": f"{r['page_faults_per_step']:.0f}", "15k eval s": f"{r['eval_time_s']:.2f}",
         "500 ep. min": f"{r['paper_500_epochs_min']:.1f}"}
        for r in rows
    ]  # fmt: skip
    print(pd.DataFrame(table).to_markdown(index=False, disable_numparse=True))
    if args.peer or (args.peer is None and on_cuda):
        peer = peer_rows(args, rows)
        print(f"\nplain PyTorch peer (benchmarks/plain_peer.py), {peer[0]['steps']} steps per case")
        print(pd.DataFrame(peer).to_markdown(index=False, floatfmt=".3f"))
        rows += peer
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def peer_rows(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """The plain peer's speed for each precision, eager with both rules and as one whole-step CUDA
    graph at constant depth; ``sdexp/peer``: the speed of the first sdexp row of the same rule and
    precision over the peer's."""
    device = resolve_device(args.device)
    depth = cifar_depth(args.model)
    steps = max(3, args.images // 128)
    cases = [("eager", "off"), ("eager", "linear")] + ([("graph", "off")] if device.type == "cuda" else [])
    peer = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        for mode, rule in cases:
            speed = images_per_s(depth, mode, rule == "linear", precision == "bf16", 128, steps, device)
            ours = next(r["images_per_s"] for r in rows if (r["rule"], r["precision"]) == (rule, precision))
            peer.append({"peer": mode, "rule": rule, "precision": precision, "img/s": round(speed),
                         "sdexp/peer": ours / speed, "steps": steps})  # fmt: skip
    return peer


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
