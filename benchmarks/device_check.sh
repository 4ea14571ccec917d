#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch preinstalled there; hydra-core, omegaconf and antlr4
# carried as pure-Python packages in .devsite/): the test suite on that machine's torch, the quickstart
# on CUDA, then the training-speed table for ResNet-110. Writes everything under $OUT.
set -u
OUT=${OUT:-/tmp/sdexp-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.devsite" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
echo "== tests (CPU settings, this machine's torch)"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider --deselect tests/test_lint.py 2>&1 \
  | tee "$OUT/pytest.txt" | tail -4
echo "== quickstart on CUDA"
( time timeout 120 python3 run.py experiment=quickstart trainer.progress=false \
    hydra.run.dir="$OUT/quickstart" ) 2>&1 | tail -6
echo "== training speed, ResNet-110"
timeout 360 python3 benchmarks/train_speed.py --model resnet110 --json "$OUT/train_speed.json" \
  2>"$OUT/train_speed.log" | tee "$OUT/train_speed.txt"
