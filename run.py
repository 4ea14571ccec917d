"""Train one stochastic-depth ResNet per Hydra job: ``python run.py [-m] [group=option] [key=value]``.

Rerunning a command resumes its run from the run folder's checkpoint, or skips it if it has finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sdexp.config import ConfigError, register_configs, validate
from sdexp.data import DatasetError
from sdexp.runs import RunFolderError
from sdexp.train import run

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        validate(cfg)
        run(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg)
    except (ConfigError, RunFolderError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
