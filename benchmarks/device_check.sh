#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch preinstalled there; hydra-core, omegaconf and antlr4
# carried as pure-Python packages in .devsite/, which .git/info/exclude keeps out of the repository):
# CUDA-graph correctness, the training-speed table for ResNet-110 (eager, CUDA graphs, compiled
# branches; fp32 and bf16), per-stage costs in situ, the input-pipeline table and the compile tests on
# that machine's torch. About 11 minutes in all; output under $OUT.
set -u
OUT=${OUT:-/tmp/sdexp-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.devsite" PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
echo "== CUDA graphs: graphed vs eager training steps"
timeout 120 python3 benchmarks/cuda_graphs_check.py 2>&1 | tee "$OUT/cuda_graphs_check.txt"
echo "== training speed, ResNet-110, channels-last: eager, CUDA graphs, compiled branches"
timeout 420 python3 benchmarks/train_speed.py --model resnet110 --images 10000 --repeats 3 --channels-last true \
  --cuda-graphs false,true --compile false,true --json "$OUT/train_speed.json" 2>"$OUT/train_speed.log" \
  | tee "$OUT/train_speed.txt"
echo "== per-stage costs in situ, ResNet-110, CUDA graphs (defaults: bf16, channels-last)"
timeout 60 python3 benchmarks/stage_costs.py model=resnet110 trainer.cuda_graphs=true 2>"$OUT/stage_costs.log" \
  | tee "$OUT/stage_costs.txt"
echo "== input pipeline"
timeout 60 python3 benchmarks/input_pipeline.py --device cuda --workers 8 | tee "$OUT/input_pipeline.txt"
echo "== compile tests on this machine's torch (they run on its CPU)"
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_compiled.py 2>&1 | tail -3
