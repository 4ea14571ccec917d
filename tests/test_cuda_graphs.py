"""CUDA-graphed residual branches: what can be checked without a GPU (the GPU check is
benchmarks/cuda_graphs_check.py)."""

from __future__ import annotations

import pytest
import torch

from sdexp.config import ConfigError, compose_config, validate
from sdexp.cuda_graphs import branch_inputs
from sdexp.models import build_model


def testbranch_inputs_match_each_block_and_leave_batchnorm_alone() -> None:
    cfg = compose_config(["model=resnet20"])
    model = build_model(cfg.model, cfg.stochastic_depth, 10, seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = branch_inputs(model, 8, None)
    expected = [(8, 16, 32, 32)] * 4 + [(8, 32, 16, 16)] * 3 + [(8, 64, 8, 8)] * 2
    assert [tuple(x.shape) for x in inputs] == expected  # transition blocks see the previous width
    assert all(x.requires_grad for x in inputs)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where there is no CUDA")
def test_cuda_graphs_need_cuda() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.cuda_graphs=true needs a CUDA device"):
        validate(compose_config(["trainer.cuda_graphs=true"]))
