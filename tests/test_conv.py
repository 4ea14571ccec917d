"""GEMM weight gradients for 3×3 convolutions (``trainer.conv_weight_grad=gemm``) against the
convolution library's own, on the CPU (benchmarks/conv_costs.py checks and times them on a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch import nn
from torch.nn import functional as F

from sdexp.config import compose_config
from sdexp.conv import GemmWeightGradConv2d, use_gemm_weight_grads, weight_grad_gemm
from sdexp.models import ResNet
from sdexp.train import prepare_model

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("c_in", "c_out", "size"), [(3, 16, 8), (16, 16, 8), (8, 4, 5)])
def test_the_gemm_weight_gradient_is_the_convolutions(c_in: int, c_out: int, size: int, layout: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, c_in, size, size, generator=generator).contiguous(memory_format=LAYOUTS[layout])
    weight = torch.randn(c_out, c_in, 3, 3, generator=generator, requires_grad=True)
    grad_out = torch.randn(4, c_out, size, size, generator=generator).contiguous(
        memory_format=LAYOUTS[layout]
    )
    (expected,) = torch.autograd.grad(F.conv2d(x, weight, padding=1), weight, grad_out)
    ours = weight_grad_gemm(x, grad_out)
    assert ours.shape == expected.shape and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_gemm_conv_is_the_conv_but_for_the_weight_gradients_summation_order(
    amp_dtype: torch.dtype | None,
) -> None:
    """The forward and the input gradient are the library's, bit for bit; under autocast its input and
    weight are cast as autocast casts them, and the weight gets an fp32 gradient."""
    torch.manual_seed(0)
    native = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    gemm = copy.deepcopy(native)
    assert use_gemm_weight_grads(gemm) == 1 and type(gemm) is GemmWeightGradConv2d
    x = torch.randn(4, 8, 6, 6)
    grads = []
    for conv in (native, gemm):
        x_leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = conv(x_leaf)
        grads.append((out, *torch.autograd.grad(out, (x_leaf, conv.weight), torch.ones_like(out))))
    (out, grad_x, grad_w), (gemm_out, gemm_grad_x, gemm_grad_w) = grads
    assert out.dtype == gemm_out.dtype == (amp_dtype or torch.float32)
    torch.testing.assert_close(gemm_out, out, rtol=0, atol=0)
    torch.testing.assert_close(gemm_grad_x, grad_x, rtol=0, atol=0)
    assert gemm_grad_w.dtype == torch.float32
    tolerance = 1e-5 if amp_dtype is None else 2e-2  # bf16: rounded after summing in another order
    torch.testing.assert_close(
        gemm_grad_w, grad_w, rtol=tolerance, atol=tolerance * grad_w.abs().max().item()
    )


def test_only_the_3x3_stride_1_convolutions_change_and_the_state_stays() -> None:
    torch.manual_seed(0)
    model = ResNet(num_classes=10, blocks_per_stage=[2, 2, 2], widths=[4, 8, 16], stem_width=4,
                   shortcut="projection")  # fmt: skip
    state = copy.deepcopy(model.state_dict())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fitting = [m for m in convs if m.kernel_size == (3, 3) and m.stride == (1, 1)]
    assert use_gemm_weight_grads(model) == len(fitting) == 1 + 2 * 6 - 2  # stem, blocks less 2 transitions
    assert all(type(m) is GemmWeightGradConv2d for m in fitting)
    assert all(type(m) is nn.Conv2d for m in convs if m not in fitting)  # stride 2, 1×1 projections
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_the_config_switch_builds_the_model_with_gemm_convs() -> None:
    for choice, expected in (("native", 0), ("gemm", 1 + 18 - 2)):  # stem, 18 block convs, 2 stride-2
        cfg = compose_config(["model=resnet20", "trainer.device=cpu", f"trainer.conv_weight_grad={choice}"])
        model = prepare_model(cfg, 10, torch.device("cpu"))
        assert sum(type(m) is GemmWeightGradConv2d for m in model.modules()) == expected
    with pytest.raises(ConfigCompositionException, match="conv_weight_grad"):
        compose_config(["trainer.conv_weight_grad=fast"])


def test_a_gemm_conv_built_directly_refuses_other_settings() -> None:
    assert GemmWeightGradConv2d(4, 8, 3, padding=1, bias=False).weight.shape == (8, 4, 3, 3)
    for settings in ({"stride": 2, "padding": 1, "bias": False}, {"padding": 1}, {"bias": False}):
        with pytest.raises(ValueError, match="is 3×3, stride 1, padding 1, without bias"):
            GemmWeightGradConv2d(4, 8, 3, **settings)


def test_torch_func_transforms_take_the_gemm_conv() -> None:
    torch.manual_seed(0)
    native = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    gemm = copy.deepcopy(native)
    use_gemm_weight_grads(gemm)
    x = torch.randn(2, 3, 5, 5)
    grads = [
        torch.func.grad(lambda w, conv=conv: torch.func.functional_call(conv, {"weight": w}, (x,)).sum())(
            conv.weight.detach()
        )
        for conv in (native, gemm)
    ]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)
