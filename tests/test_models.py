"""Every model builds; parameter counts match He et al. (CIFAR) and torchvision (ResNet-18…152)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sdexp.config import CONF_DIR, compose_config
from sdexp.models import build_model

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def _build(name: str, num_classes: int = 10):
    cfg = compose_config([f"model={name}"])
    return build_model(cfg.model, cfg.stochastic_depth, num_classes, seed=0)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# He et al. 2016, Table 6, in millions (rounded as printed there).
HE_TABLE_6 = {
    "resnet20": 0.27,
    "resnet32": 0.46,
    "resnet44": 0.66,
    "resnet56": 0.85,
    "resnet110": 1.7,
    "resnet1202": 19.4,
}


@pytest.mark.parametrize("name", sorted(HE_TABLE_6))
def test_cifar_resnet_parameter_count(name: str) -> None:
    millions = _num_params(_build(name)) / 1e6
    digits = 1 if HE_TABLE_6[name] >= 1 else 2
    assert round(millions, digits) == HE_TABLE_6[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_imagenet_style_resnet_matches_torchvision(name: str) -> None:
    # torchvision's ResNet differs only in its 7×7 stem (ours is 3×3 for 32×32 inputs, no max-pool).
    reference = _num_params(getattr(torchvision.models, name)(num_classes=10))
    assert _num_params(_build(name)) == reference - 64 * 3 * (7 * 7 - 3 * 3)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18", "resnet50"])
def test_forward_32x32_batch(name: str) -> None:
    model = _build(name, num_classes=7)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert model(x).shape == (4, 7)
    model.eval()
    assert model(x).shape == (4, 7)


def test_depth_counts_blocks() -> None:
    # 6n+2 layers: 3 stages of n two-conv blocks; ResNet-110 has L = 54 residual blocks.
    assert len(_build("resnet110").sd_blocks) == 54
    assert len(_build("resnet1202").sd_blocks) == 600
    assert len(_build("resnet152").sd_blocks) == 3 + 8 + 36 + 3


@pytest.mark.parametrize("shortcut", ["pad", "avgpool"])
def test_a_dropped_transition_block_is_its_shortcut(shortcut: str) -> None:
    """``pad`` keeps every second pixel (He et al.'s option A), ``avgpool`` averages each 2×2 window (one
    version of the stochastic-depth authors' code); both append zero channels; a dropped block is that."""
    cfg = compose_config(["model=resnet20", f"model.shortcut={shortcut}"])
    model = build_model(cfg.model, cfg.stochastic_depth, 10, seed=0).train()
    block = model.stages[1][0]  # 16 -> 32 channels, stride 2
    x = torch.relu(torch.randn(2, 16, 8, 8))
    block.gate = False
    halved = torch.nn.functional.avg_pool2d(x, 2) if shortcut == "avgpool" else x[:, :, ::2, ::2]
    assert torch.equal(block(x), torch.cat([halved, torch.zeros_like(halved)], dim=1))
    assert _num_params(block.shortcut) == 0


def test_cifar_shortcuts_are_parameter_free() -> None:
    model = _build("resnet56")
    for block in model.sd_blocks:
        assert _num_params(block.shortcut) == 0
