#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch preinstalled there; hydra-core, omegaconf and antlr4
# carried as pure-Python packages in .devsite/, which .git/info/exclude keeps out of the repository):
# correctness of both CUDA-graph paths against eager autograd, the training-speed table for ResNet-110
# (autograd: eager and graphed branches; the segment-wise step; fp32 and bf16) with the plain PyTorch
# peer timed in the same process, per-stage costs in situ and the input pipeline. About 8 minutes in
# all; output under $OUT. Carry .devsite (run: carry=[".devsite"]).
set -u
OUT=${OUT:-/tmp/sdexp-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.devsite" PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
echo "== CUDA graphs: graphed branches and the segment-wise step vs eager autograd"
timeout 120 python3 benchmarks/cuda_graphs_check.py 2>&1 | tee "$OUT/cuda_graphs_check.txt"
echo "== training speed, ResNet-110, channels-last: autograd (eager, graphed branches), segments; the peer"
timeout 300 python3 benchmarks/train_speed.py --model resnet110 --images 10000 --repeats 3 --channels-last true \
  --step autograd,segments --cuda-graphs false,true --json "$OUT/train_speed.json" 2>"$OUT/train_speed.log" \
  | tee "$OUT/train_speed.txt"
echo "== per-stage costs in situ, ResNet-110, graphed branches (defaults: bf16, channels-last)"
timeout 60 python3 benchmarks/stage_costs.py model=resnet110 trainer.cuda_graphs=true 2>"$OUT/stage_costs.log" \
  | tee "$OUT/stage_costs.txt"
echo "== input pipeline"
timeout 60 python3 benchmarks/input_pipeline.py --device cuda --workers 8 | tee "$OUT/input_pipeline.txt"
