"""Real CIFAR-10 images (JPEG ImageFolder archive): extract, cache, and train a few hundred steps.

Runs when SDEXP_CIFAR10_JPEG names the archive (CI sets it to ../shared/data/cifar10-train-jpeg.tar.gz);
the images are never part of the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sdexp import runs
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # each test runs whole commands: the full suite only

ARCHIVE = os.environ.get("SDEXP_CIFAR10_JPEG", "")


@pytest.mark.skipif(
    not Path(ARCHIVE).is_file(),
    reason="set SDEXP_CIFAR10_JPEG to the cifar10-train-jpeg.tar.gz archive to run the real-data test",
)
def test_real_cifar10_images_train(tmp_path: Path) -> None:
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")
    command = [
        sys.executable, str(ROOT / "run.py"), "dataset=imagefolder", f"dataset.root={tmp_path / 'cifar10'}",
        f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.val_size=5000", "model=resnet20",
        "model.widths=[8,16,32]", "model.stem_width=8", "trainer.epochs=1", "trainer.device=cpu",
        "trainer.progress=false", "trainer.eval_batch_size=1000", "hydra.run.dir=run",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = runs.read_result(tmp_path / "run")
    assert result["status"] == "completed"
    (row,) = runs.read_metrics(tmp_path / "run")  # 45,000 images / 128 = 351 steps
    assert row["val_error"] < 80  # chance is 90 %: it learned from the real images
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1
    log = (tmp_path / "run" / runs.LOG).read_text()
    assert "45000 train / 5000 val / 0 test images" in log
