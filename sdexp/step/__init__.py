"""The training step, forward + backward + optimizer step on one mini-batch (``trainer.step``).

- ``autograd`` (:mod:`~sdexp.step.autograd`): autograd over the whole model.
- ``segments`` (:mod:`~sdexp.step.segments`): the network cut into segments between static buffers,
  each replayed as a CUDA graph on CUDA; two graph launches per kept block.
- ``graph`` (:mod:`~sdexp.step.graph`): the same segments captured as one CUDA graph whose blocks are
  switched on or off per step; one launch per step. CUDA only.
- ``auto`` (the default): ``segments`` where they can help and work (CUDA, ``batch`` mode, neither
  ``cuda_graphs`` nor ``compile`` nor ``detect_anomaly``), else ``autograd``, saying which in one log
  line. Each captured graph is checked once against its eager run; if the capture fails or a check
  does not hold, the run goes on with ``autograd`` after one warning line (:class:`AutoStep`).
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from sdexp.errors import SdexpError
from sdexp.models import ResNet
from sdexp.step.autograd import AutogradStep
from sdexp.step.base import Step, StepKind
from sdexp.step.graph import GraphStep
from sdexp.step.graph import unsupported as unsupported_graph
from sdexp.step.segments import SegmentStep

__all__ = ["AutoStep", "Step", "StepKind", "build_step"]

log = logging.getLogger(__name__)


def _why_not_segments(tcfg: DictConfig, mode: str, device: torch.device) -> str | None:
    """Why ``auto`` trains this run with ``autograd``, or None where it takes the segments. On the
    CPU the segments' copies cost more than the host work they save (docs/performance.md)."""
    for reason, holds in (
        (f"the segments capture CUDA graphs; this run is on {device.type}", device.type != "cuda"),
        ("trainer.cuda_graphs=true graphs the branches instead", tcfg.cuda_graphs),
        ("trainer.compile=true compiles the branches instead", tcfg.compile),
        ("trainer.detect_anomaly=true needs autograd", tcfg.detect_anomaly),
        (f"stochastic_depth.mode={mode} draws random numbers inside the branch", mode != "batch"),
    ):
        if holds:
            return reason
    return None


class AutoStep:
    """``trainer.step=auto`` where it chose segments: the segment-wise step, or autograd (after one
    warning line) if the segments cannot be built here, e.g. a capture this GPU or torch version
    refuses, or a replay that does not match its eager run."""

    def __init__(self, segments: SegmentStep, fallback: AutogradStep) -> None:
        self.segments: SegmentStep | None = segments
        self.fallback = fallback
        self.step: SegmentStep | AutogradStep | None = None

    @property
    def kind(self) -> StepKind:
        """The step it took at its first call (``auto`` before)."""
        return self.step.kind if self.step is not None else StepKind.auto

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step is None:
            assert self.segments is not None
            try:
                self.segments.build(x, y)
                self.step = self.segments
            except RuntimeError as exc:  # CUDA errors, out of memory among them, are RuntimeErrors
                self.step, self.segments = self.fallback, None  # its graphs' memory goes with it
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)  # an error that breaks CUDA for good raises here
                    torch.cuda.empty_cache()  # for runs sharing the GPU
                log.warning("trainer.step=auto: the segment-wise step failed (%s); using autograd", exc)
        return self.step(x, y)


def build_step(
    tcfg: DictConfig,
    mode: str,
    model: ResNet,
    optimizer: torch.optim.Optimizer,
    amp_dtype: torch.dtype | None,
) -> Step:
    """The step ``tcfg.step`` asks for (``mode``: ``stochastic_depth.mode``) for ``model`` and
    ``optimizer``; ``auto`` says in one log line which it took and why."""
    autograd = AutogradStep(model, optimizer, amp_dtype)
    kind = StepKind(tcfg.step)
    if kind == StepKind.auto:
        reason = _why_not_segments(tcfg, mode, next(model.parameters()).device)
        log.info("trainer.step=auto: %s", f"autograd ({reason})" if reason else "segments (CUDA graphs)")
        if reason:
            return autograd
        return AutoStep(SegmentStep(model, optimizer, amp_dtype), autograd)
    if kind == StepKind.graph:
        device = next(model.parameters()).device
        why = unsupported_graph() if device.type == "cuda" else f"this run is on {device.type}"
        if why:  # torch and driver checked here, not in config.validate: on the node that runs the job
            raise SdexpError(
                f"trainer.step=graph needs CUDA graphs it can switch ({why}): use trainer.step=segments"
            )
    captured = {StepKind.segments: SegmentStep, StepKind.graph: GraphStep}
    return captured[kind](model, optimizer, amp_dtype) if kind in captured else autograd
