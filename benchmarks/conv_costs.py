"""What the parts of one residual branch cost on this device, stage by stage: the 3×3 convolution's
forward, input gradient and weight gradient, BatchNorm+ReLU forward and backward, and the weight
gradient computed instead as one matrix product (or as nine, without the window matrix).

Why: the profile of a ResNet-110 step on an H200 (docs/performance.md, fp32) spent 5.1 of its 18.1 ms
of kernel time in one cuDNN implicit-GEMM convolution kernel, 36 calls of 140 µs, while the forward
and input-gradient kernels took about 30 µs. A weight gradient of a 3×3 convolution with few channels
is a product with a long inner dimension (batch × height × width, 131,072 in stage 1) and a tiny
result (channels × 9·channels), which a general matrix product splits along that dimension; the
matrix of input windows it needs is one copy of 9× the input. Its result is checked against cuDNN's
(the script fails if they differ beyond the precision's tolerance). In fp32, cuDNN computes in TF32
and the matrix product in full fp32 (each library's default in torch).

On CUDA each part is timed as a CUDA graph of several calls (kernel time with the host out of the
way, as in the captured training steps); elsewhere eagerly. Medians from ``torch.utils.benchmark``.
The last table multiplies by the calls per training step (two 3×3 convolutions and two BatchNorm+ReLU
per block; the stride-2 convolutions at stage transitions are counted as stride-1 ones).

    python benchmarks/conv_costs.py                                  # ResNet-110 shapes, batch 128
    python benchmarks/conv_costs.py --dtypes bf16 --layouts channels_last,nchw
    python benchmarks/conv_costs.py --quick                          # seconds; what CI runs
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import arg_types  # sibling scripts: benchmarks/ is on sys.path when a benchmark runs
import pandas as pd
import torch
from arg_types import count, listed, one_of
from torch.nn import functional as F

from sdexp.conv import weight_grad_gemm
from sdexp.environment import resolve_device
from sdexp.errors import reported

# torch.utils.benchmark (imported where it times) imports cpp_extension, which warns "No CUDA runtime is
# found" on a machine without a GPU: no C++ extension is built here, so it says nothing of these timings.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
TOLERANCE = {torch.float32: 1e-2, torch.bfloat16: 3e-2}  # cuDNN computes fp32 convolutions in TF32
GRAPH_CALLS = 10  # calls per captured graph: its launch is spread over them


def weight_grad_shifted(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The weight gradient of :func:`~sdexp.conv.weight_grad_gemm` without the window matrix: nine
    GEMMs, one per kernel offset, over row-shifted views of the padded input. The output gradient is
    padded to the input's padded grid with zeros, so that output position r meets input position
    r + offset in both flattened (N·(H+2)·(W+2), channels) matrices; the two padded copies (about 9 MB
    in stage 1, bf16) can stay in the GPU's L2 cache across the nine products."""
    c, wp = x.shape[1], x.shape[3] + 2
    inputs = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous().view(-1, c)
    grads = F.pad(grad_out, (0, 2, 0, 2)).permute(0, 2, 3, 1).contiguous().view(-1, grad_out.shape[1])
    rows = len(grads) - 2 * wp - 2  # every output position with a gradient, and no shifted row past the end
    products = [grads[:rows].t() @ inputs[i * wp + j : i * wp + j + rows] for i in range(3) for j in range(3)]
    return torch.stack(products).view(3, 3, -1, c).permute(2, 3, 0, 1)


def part_us(fn: Callable[[], object], device: torch.device, seconds: float) -> float:
    """Median µs per call of ``fn``: on CUDA replayed as a graph of :data:`GRAPH_CALLS` calls (captured
    after warm-up calls on a side stream), elsewhere called eagerly."""
    from torch.utils.benchmark import Timer  # after the logger above is quieted

    if device.type != "cuda":
        return 1e6 * Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=seconds).median
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    timer = Timer("graph.replay()", globals={"graph": graph})
    return 1e6 * timer.blocked_autorange(min_run_time=seconds).median / GRAPH_CALLS


def stage_parts(
    batch: int, channels: int, size: int, dtype: torch.dtype, layout: torch.memory_format,
    device: torch.device, seconds: float,
) -> dict[str, float]:  # fmt: skip
    """µs per call of each part for one stage's shape, and the GEMMs' largest relative difference from
    cuDNN."""
    generator = torch.Generator(device).manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
        return t.contiguous(memory_format=layout) if t.dim() == 4 else t

    x, grad_out = tensor(batch, channels, size, size), tensor(batch, channels, size, size)
    weight = tensor(channels, channels, 3, 3)
    bn_weight = torch.ones(channels, device=device)  # fp32, as autocast leaves BatchNorm's parameters
    bn_bias, mean, var = torch.zeros_like(bn_weight), torch.zeros_like(bn_weight), torch.ones_like(bn_weight)

    def conv_backward(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
        )

    x_grad = x.detach().requires_grad_()
    params = [bn_weight.requires_grad_(), bn_bias.requires_grad_()]

    def bn_relu() -> torch.Tensor:
        return F.relu(F.batch_norm(x_grad, mean, var, *params, training=True))

    def bn_relu_backward() -> object:
        return torch.autograd.grad(bn_relu(), [x_grad, *params], grad_out)

    cudnn = conv_backward([False, True, False])()[1]
    difference = 0.0
    for name, ours in (("GEMM", weight_grad_gemm), ("9 GEMMs", weight_grad_shifted)):
        part = ((ours(x, grad_out) - cudnn).abs().max() / cudnn.abs().max()).item()
        if not part <= TOLERANCE[dtype]:
            raise RuntimeError(f"the weight gradient as {name} differs from cuDNN's by {part:.2g} ({dtype})")
        difference = max(difference, part)
    us = {
        "conv forward": part_us(lambda: F.conv2d(x, weight, padding=1), device, seconds),
        "conv input grad": part_us(conv_backward([True, False, False]), device, seconds),
        "conv weight grad": part_us(conv_backward([False, True, False]), device, seconds),
        "weight grad as GEMM": part_us(lambda: weight_grad_gemm(x, grad_out), device, seconds),
        "weight grad as 9 GEMMs": part_us(lambda: weight_grad_shifted(x, grad_out), device, seconds),
        "BN+ReLU forward": part_us(bn_relu, device, seconds),
        "BN+ReLU fwd+bwd": part_us(bn_relu_backward, device, seconds),
    }
    return {**us, "GEMM rel. diff": difference}


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--depth", type=count, default=None, help="CIFAR ResNet depth, 6n+2 (110)")
    parser.add_argument("--batch", type=count, default=None, help="(128)")
    parser.add_argument("--dtypes", type=listed(one_of(*DTYPES)), default="fp32,bf16",
                        help=f"comma list of {', '.join(DTYPES)}")  # fmt: skip
    parser.add_argument("--layouts", type=listed(one_of(*LAYOUTS)), default="channels_last",
                        help=f"comma list of {', '.join(LAYOUTS)}")  # fmt: skip
    parser.add_argument("--device", type=arg_types.device, default=None, help="auto: CUDA where there is one")
    parser.add_argument(
        "--seconds", type=arg_types.seconds, default=None, help="timing per part, at least (0.2)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny, on the CPU: checks the script runs")
    args = parser.parse_args()
    arg_types.fill(
        args,
        {"depth": 20, "batch": 8, "device": "cpu", "seconds": 0.01},
        {"depth": 110, "batch": 128, "device": "auto", "seconds": 0.2},
    )
    if (args.depth - 2) % 6 or args.depth < 8:
        parser.error(f"--depth {args.depth} is no CIFAR ResNet depth (6n+2, n >= 1)")
    device, blocks = resolve_device(args.device), (args.depth - 2) // 6
    torch.backends.cudnn.benchmark = True  # as training sets it (sdexp.environment)

    rows = []
    for dtype_name in args.dtypes:
        for layout_name in args.layouts:
            for stage, (channels, size) in enumerate(((16, 32), (32, 16), (64, 8)), start=1):
                parts = stage_parts(
                    args.batch, channels, size, DTYPES[dtype_name], LAYOUTS[layout_name], device, args.seconds
                )
                rows.append({"dtype": dtype_name, "layout": layout_name, "stage": stage,
                             "input": f"{args.batch}×{channels}×{size}×{size}", **parts})  # fmt: skip
    table = pd.DataFrame(rows)
    print(f"\nµs per call on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, "
          f"torch {torch.__version__}, batch {args.batch}")  # fmt: skip
    print(table.to_markdown(index=False, floatfmt=[".1f"] * (table.shape[1] - 1) + [".1e"]))

    per_step = (
        table.assign(
            convs=lambda t: 2 * blocks * (t["conv forward"] + t["conv input grad"] + t["conv weight grad"]),
            bn_relu=lambda t: 2 * blocks * t["BN+ReLU fwd+bwd"],
            saved=lambda t: 2 * blocks * (t["conv weight grad"] - t["weight grad as GEMM"]).clip(lower=0),
            saved_9=lambda t: (
                2 * blocks * (t["conv weight grad"] - t["weight grad as 9 GEMMs"]).clip(lower=0)
            ),
        )
        .groupby(["dtype", "layout"], sort=False)[["convs", "bn_relu", "saved", "saved_9"]]
        .sum()
        / 1e3
    )
    per_step.columns = ["3×3 convs ms", "BN+ReLU ms", "saved by GEMM weight grads ms", "saved by 9 GEMMs ms"]
    print(f"\nper training step of ResNet-{args.depth} ({2 * blocks} of each per stage), all blocks kept:")
    print(per_step.reset_index().to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
