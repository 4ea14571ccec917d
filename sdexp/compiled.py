"""torch.compile for the residual branches (``trainer.compile``).

Compiling the whole model would recompile for every drop pattern of the gates (2^L of them), so each
block's residual branch is compiled on its own and the gating stays in Python. Each branch is compiled
in place, as ``nn.Module.compile`` does: the module calls its compiled ``forward`` from then on,
parameter names and checkpoints stay the same, and a copy of it is eager. (``nn.Module.compile``
itself compiles ``_call_impl``, which Dynamo skips under torch 2.4 and 2.11: nothing got compiled.)
From torch 2.5 on, blocks of the same shape share one compiled graph; a ResNet compiles a few graphs
(one per distinct block shape, in training and in eval) in its first epoch and none after that, which
the trainer checks (:func:`compiled_graph_count`).
"""

from __future__ import annotations

import torch

from sdexp.models import ResNet

SPARE_GRAPHS = 16  # beyond training and eval for every block, which only torch 2.4 builds (see above)


def compile_residual_branches(model: ResNet) -> None:
    """Compile every block's residual branch in place, with static shapes (the training loader drops
    incomplete batches, so training shapes never change)."""
    dynamo = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(dynamo, name, max(getattr(dynamo, name), 2 * len(model.sd_blocks) + SPARE_GRAPHS))  # per code
    for block in model.sd_blocks:
        block.residual._compiled_call_impl = torch.compile(block.residual.forward, dynamic=False)


def compiled_graph_count() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
