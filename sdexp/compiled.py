"""torch.compile for the residual branches (``trainer.compile``).

Compiling the whole model would recompile for every drop pattern of the gates (2^L of them), so each
block's residual branch is compiled on its own and the gating stays in Python. What is compiled is the
branch's ``forward``, in place: parameter names and checkpoints stay the same. (``nn.Module.compile``
would do the same, but under torch 2.4 and 2.11 it compiles nothing: Dynamo skips the module's call.)
From torch 2.5 on, blocks of the same shape share one compiled graph; a ResNet compiles a few graphs
(one per distinct block shape, in training and in eval) in its first epoch and none after that, which
the trainer checks (:func:`compiled_graph_count`).
"""

from __future__ import annotations

import torch

from sdexp.models import ResNet

# graphs per code object: training and eval for each distinct block shape, with room to spare
CACHE_SIZE_LIMIT = 64


def compile_residual_branches(model: ResNet) -> None:
    """Compile every block's residual branch in place, with static shapes (the training loader drops
    incomplete batches, so training shapes never change)."""
    dynamo = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(dynamo, name, max(getattr(dynamo, name), CACHE_SIZE_LIMIT))
    for block in model.sd_blocks:
        block.residual.forward = torch.compile(block.residual.forward, dynamic=False)


def compiled_graph_count() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
