"""Train one stochastic-depth ResNet per Hydra job: ``python run.py [-m] [group=option] [key=value]``.

Rerunning a command resumes its run from the run folder's checkpoint, or skips it if it has finished.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sdexp import errors
from sdexp.config import register_configs, validate
from sdexp.train import run

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with errors.reported():  # a job's failure: one line and its exit status (the sweep stops too)
        hydra_cfg = HydraConfig.get()
        validate(cfg)
        run(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg)


if __name__ == "__main__":
    errors.let_hydra_raise()
    with errors.reported():  # composition and launcher errors: one line, exit status 2
        main()
