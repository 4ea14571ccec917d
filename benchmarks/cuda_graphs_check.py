"""Correctness of ``trainer.cuda_graphs`` on a GPU: graphed and eager training give the same steps.

Two copies of the same model (same initial weights, same gate seed, same batches) train a few steps,
one with CUDA-graphed residual branches; the losses and the final weights must agree to float32
rounding (cuDNN in deterministic mode). Exits non-zero on a mismatch.

    python benchmarks/cuda_graphs_check.py [--model resnet110] [--steps 6]
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.nn import functional as F

from sdexp.config import compose_config
from sdexp.environment import seed_everything
from sdexp.errors import reported
from sdexp.optim import build_optimizer
from sdexp.stochastic_depth import set_survival_probs, survival_probs
from sdexp.train import prepare_model


def run(model_name: str, graphs: bool, steps: int, precision: str) -> tuple[list[float], torch.Tensor, int]:
    cfg = compose_config(
        [
            f"model={model_name}",
            "trainer.device=cuda",
            f"trainer.precision={precision}",
            f"trainer.cuda_graphs={str(graphs).lower()}",
            "trainer.deterministic=true",
        ]
    )
    seed_everything(0, deterministic=True)
    device = torch.device("cuda")
    model = prepare_model(cfg, 10, device)
    sd = cfg.stochastic_depth
    set_survival_probs(model.sd_blocks, survival_probs(sd.rule, len(model.sd_blocks), sd.final_survival))
    optimizer, _ = build_optimizer(model, cfg.optimizer, cfg.trainer.epochs)
    g = torch.Generator(device=device).manual_seed(1)
    losses, executed = [], 0
    model.train()
    for _ in range(steps):
        x = torch.randn(cfg.trainer.batch_size, 3, 32, 32, device=device, generator=g)
        if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (cfg.trainer.batch_size,), device=device, generator=g)
        amp = torch.bfloat16 if precision == "bf16" else None
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        executed += model.executed_last
    weights = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    buffers = torch.cat([b.float().flatten() for n, b in model.named_buffers() if "running" in n])
    return losses, torch.cat([weights, buffers]), executed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet110")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    ok = True
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 2e-2)):
        eager_losses, eager_state, eager_blocks = run(args.model, False, args.steps, precision)
        graph_losses, graph_state, graph_blocks = run(args.model, True, args.steps, precision)
        loss_diff = max(abs(a - b) for a, b in zip(eager_losses, graph_losses, strict=True))
        state_diff = ((graph_state - eager_state).norm() / eager_state.norm()).item()
        passed = eager_blocks == graph_blocks and loss_diff < tolerance and state_diff < tolerance
        ok &= passed
        print(
            f"{precision}: blocks run {eager_blocks} vs {graph_blocks}, max |loss diff| {loss_diff:.2e}, "
            f"relative weight+stats diff {state_diff:.2e} -> {'PASS' if passed else 'FAIL'} (tol {tolerance})"
        )
        print(f"  losses eager {[round(v, 5) for v in eager_losses]}")
        print(f"  losses graph {[round(v, 5) for v in graph_losses]}")
    return 0 if ok else 1


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        sys.exit(main())
