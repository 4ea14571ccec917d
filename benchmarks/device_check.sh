#!/usr/bin/env bash
# One prepared run on a lent GPU machine (torch preinstalled there; hydra-core, omegaconf and antlr4
# carried as pure-Python packages in .devsite/, which .git/info/exclude keeps out of the repository):
# correctness of both CUDA-graph paths against eager autograd, the training-speed table for ResNet-110
# (autograd: eager and graphed branches; the segment-wise step; fp32 and bf16) with the plain PyTorch
# peer timed in the same process as the autograd rows. At most 8 minutes (the timeouts); output under $OUT.
# Carry .devsite (run: carry=[".devsite"]). The segment rows run in a process of their own, so that a
# failure there loses no other figure.
set -u
OUT=${OUT:-/tmp/sdexp-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.devsite" PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
echo "== CUDA graphs: graphed branches and the segment-wise step vs eager autograd"
timeout 150 python3 benchmarks/cuda_graphs_check.py 2>&1 | tee "$OUT/cuda_graphs_check.txt"
echo "== training speed, ResNet-110, channels-last: the segment-wise step"
timeout 120 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
  --step segments --peer false --json "$OUT/speed_segments.json" 2>"$OUT/speed_segments.log" \
  | tee "$OUT/speed_segments.txt"
echo "== training speed, ResNet-110, channels-last: autograd (eager, graphed branches); the plain peer"
timeout 210 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
  --step autograd --cuda-graphs false,true --json "$OUT/speed_autograd.json" 2>"$OUT/speed_autograd.log" \
  | tee "$OUT/speed_autograd.txt"
