"""Correctness of the CUDA-graph paths on a GPU: each trains the same steps as eager autograd.

Copies of the same model (same initial weights, same gate seed, same batches) train a few steps with
blocks dropped: eager autograd (the reference), ``trainer.cuda_graphs=true`` (graphed branches),
``trainer.step=segments`` (captured segments), ``trainer.step=graph`` (one graph, blocks switched
per step) and the segments with ``trainer.conv_weight_grad=gemm`` (GEMM weight gradients; one step,
:data:`STEPS`). Losses, gates, weights, BatchNorm statistics and momentum buffers must agree to a
stated tolerance (cuDNN in deterministic mode; fp32, then bf16). A path that fails to build is a FAIL
row (its traceback on stderr); the others still run. Exits non-zero on a mismatch or a failure.

    python benchmarks/cuda_graphs_check.py [--model resnet110] [--steps 6] [--paths segments,graph,gemm]
"""

from __future__ import annotations

import sys
import time
import traceback
from functools import partial
from typing import NamedTuple

import arg_types  # a sibling script: benchmarks/ is on sys.path
import pandas as pd
import torch
from arg_types import count, listed, one_of

from sdexp.config import compose_config, validate
from sdexp.environment import resolve_device, seed_everything, speed_settings
from sdexp.errors import reported
from sdexp.models import IMAGE_SIZE
from sdexp.optim import build_optimizer
from sdexp.step import build_step, cuda_driver
from sdexp.step import graph as step_graph
from sdexp.stochastic_depth import set_survival_probs, survival_probs
from sdexp.train import prepare_model

EAGER = ["trainer.step=autograd"]  # the reference: not the default (auto), which is segments on CUDA
PATHS = {  # each against EAGER
    "branches": [*EAGER, "trainer.cuda_graphs=true"],  # graphed residual branches
    "segments": ["trainer.step=segments"],
    "graph": ["trainer.step=graph"],  # one graph, blocks switched per step
    "gemm": ["trainer.step=segments", "trainer.conv_weight_grad=gemm"],  # GEMM weight gradients
}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # largest |loss diff| and relative state diff allowed
# Steps compared for a path that sums in another order than eager autograd: one. Training on random
# data at lr 0.1 diverges, which amplifies any such change (on the CPU, ResNet-56 after 6 steps: 0.10
# relative state difference for the GEMM weight gradients, 0.11 for NCHW instead of channels-last).
STEPS = {"gemm": 1}


class Trace(NamedTuple):
    losses: list[float]
    gates: list[list[bool]]
    state: torch.Tensor  # weights, BatchNorm statistics and momentum buffers, flattened
    peak_gib: float  # the most GPU memory the caching allocator held (0 on the CPU)


def run(model_name: str, device: str, overrides: list[str], steps: int, precision: str) -> Trace:
    cfg = compose_config(
        [
            f"model={model_name}",
            f"trainer.device={device}",
            f"trainer.precision={precision}",
            "trainer.deterministic=true",
            *overrides,
        ]
    )
    validate(cfg)
    seed_everything(0, deterministic=True)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    amp_dtype, _ = speed_settings(cfg.trainer, device)
    model = prepare_model(cfg, 10, device)
    sd = cfg.stochastic_depth
    set_survival_probs(model.sd_blocks, survival_probs(sd.rule, len(model.sd_blocks), sd.final_survival))
    optimizer, _ = build_optimizer(model, cfg.optimizer, cfg.trainer.epochs)
    step = build_step(cfg.trainer, cfg.stochastic_depth.mode, model, optimizer, amp_dtype)
    g = torch.Generator(device=device).manual_seed(1)
    losses, gates = [], []
    model.train()
    for _ in range(steps):
        x = torch.randn(cfg.trainer.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, generator=g)
        if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (cfg.trainer.batch_size,), device=device, generator=g)
        loss, _ = step(x, y)
        losses.append(loss.item())
        gates.append([b.gate for b in model.sd_blocks])
    momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
    tensors = [*model.parameters(), *(b for n, b in model.named_buffers() if "running" in n), *momentum]
    peak = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else 0.0
    return Trace(losses, gates, torch.cat([t.detach().float().flatten() for t in tensors]), peak)


def node_switch_check(device: str) -> bool:
    """The driver calls of ``trainer.step=graph`` on a small graph captured as the step captures
    (thread-local mode, a side stream): three parts, a kernel, a copy and an autograd backward (which
    autograd's worker thread launches), each one's nodes found while capturing, checked to be
    switchable, switched off and on again. Prints the host time per switch while the GPU is busy."""
    total, source, copied = (
        torch.zeros(1, device=device),
        torch.full((4,), 2.0, device=device),
        torch.zeros(4, device=device),
    )
    weight, grad = torch.full((4,), 3.0, device=device, requires_grad=True), torch.zeros(4, device=device)

    def backward() -> None:
        grad.copy_(torch.autograd.grad((weight * weight).sum(), weight)[0])

    graph, side = torch.cuda.CUDAGraph(keep_graph=True), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        backward()  # autograd's warm-up, outside the capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        captured = cuda_driver.capturing_graph(side)
        parts = [
            cuda_driver.added_nodes(captured, run)
            for run in (partial(total.add_, 1), partial(copied.copy_, source), backward)
        ]
    switchable = [len(step_graph.switchable(part)) for part in parts]
    graph.instantiate()
    switch = partial(cuda_driver.set_enabled, graph.raw_cuda_graph_exec())
    results = []
    for enabled in (True, False, True):
        for part in parts:
            for node in step_graph.switchable(part):
                switch(node, enabled)
        for tensor in (total, copied, grad):
            tensor.zero_()
        graph.replay()
        results.append([total.item(), copied.sum().item(), grad.sum().item()])
    node, flips = step_graph.switchable(parts[0])[0], 5000
    total.zero_()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU work, then a launch of the graph waiting
    graph.replay()
    start = time.perf_counter()
    for index in range(flips):
        switch(node, index % 2 == 0)  # ends switched off; the launch queued before keeps it on
    per_switch = (time.perf_counter() - start) / flips * 1e6
    results.append([total.item()])  # waits for the queued launch
    passed = results == [[1, 8, 24], [0, 0, 0], [1, 8, 24], [1]] and all(switchable)
    verdict = "PASS" if passed else "FAIL"
    print(f"node switch: nodes per part (kernel, copy, backward) {[len(p) for p in parts]}, switchable "
          f"{switchable}; results on/off/on/queued {results} ([1, 8, 24], zeros, [1, 8, 24], [1] expected); "
          f"{per_switch:.2f} us per cuGraphNodeSetEnabled with the GPU busy: {verdict}")  # fmt: skip
    return passed


def main() -> int:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--model", default="resnet110")
    parser.add_argument("--steps", type=count, default=6)
    parser.add_argument("--device", type=arg_types.device, default="cuda",
                        help="cuda or cuda:N; cpu: a rehearsal, segments and gemm only")  # fmt: skip
    parser.add_argument("--paths", type=listed(one_of(*PATHS)), default=",".join(PATHS),
                        help=f"comma list of {', '.join(PATHS)}")  # fmt: skip
    args = parser.parse_args()
    args.device = str(resolve_device(args.device))  # auto: cuda where there is one
    on_cuda = args.device.startswith("cuda")
    paths = {p: PATHS[p] for p in args.paths if on_cuda or p in ("segments", "gemm")}
    if not paths:
        parser.error("--paths: on the CPU only segments and gemm can be checked")
    try:
        switched = node_switch_check(args.device) if on_cuda else True
    except Exception:  # a driver call refused: its traceback, then the paths
        traceback.print_exc()
        switched = False
    rows = []
    for precision, tolerance in TOLERANCE.items():
        counts = {path: STEPS.get(path, args.steps) for path in paths}
        eager_runs = {n: run(args.model, args.device, EAGER, n, precision) for n in set(counts.values())}
        for path, overrides in paths.items():
            eager = eager_runs[counts[path]]
            try:
                fast = run(args.model, args.device, overrides, counts[path], precision)
            except Exception as exc:  # a capture the GPU refuses, a failed replay check, a driver call
                traceback.print_exc()
                rows.append({"path": path, "precision": precision, "result": f"FAIL: {exc}"[:200]})
                continue
            loss_diff = max(abs(a - b) for a, b in zip(eager.losses, fast.losses, strict=True))
            state_diff = ((fast.state - eager.state).norm() / eager.state.norm()).item()
            same_gates = fast.gates == eager.gates
            passed = same_gates and loss_diff < tolerance and state_diff < tolerance
            rows.append(
                {"path": path, "precision": precision, "same gates": same_gates,
                 "blocks run": sum(map(sum, fast.gates)), "of": sum(map(len, fast.gates)),
                 "max |loss diff|": f"{loss_diff:.2e}", "relative state diff": f"{state_diff:.2e}",
                 "tolerance": tolerance, "GiB (eager)": f"{fast.peak_gib:.2f} ({eager.peak_gib:.2f})",
                 "result": "PASS" if passed else "FAIL"}
            )  # fmt: skip
            print(f"  {path}, {precision}: losses eager {[round(v, 5) for v in eager.losses]}")
            print(f"  {path}, {precision}: losses fast  {[round(v, 5) for v in fast.losses]}")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0 if switched and all(r["result"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        sys.exit(main())
