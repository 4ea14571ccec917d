"""The ``hydra/launcher=slurm`` preset's schema: hydra-submitit-launcher's ``submitit_slurm`` keys plus
``runs_per_task``. Registered as ``sdexp_slurm`` for conf/hydra/launcher/slurm.yaml to build on.

No ``from __future__ import annotations`` here: Hydra's plugin scan imports this module outside
``sys.modules``, where a dataclass cannot resolve string annotations.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.sdexp_launcher.slurm_launcher.SlurmLauncher"
    runs_per_task: int = 1  # runs packed into one array task, each its own process (README)


SCHEMA = "sdexp_slurm"  # a Hydra option of hydra/launcher too, but with submitit's defaults: not to be chosen
ConfigStore.instance().store(group="hydra/launcher", name=SCHEMA, node=SlurmConf, provider="sdexp")
