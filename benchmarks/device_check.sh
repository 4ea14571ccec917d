#!/usr/bin/env bash
# The prepared measurements for a lent GPU machine, in parts of at most 10, 4 and 10 minutes (the sums
# of their timeouts; about 5, 3 and 6 expected), most telling first; output under $OUT. First run on an
# H200 on 2026-11-28 (docs/performance.md, session 8).
#   check:   the one-graph step (trainer.step=graph, session 9, never run on a GPU yet): the driver's node
#            switch and the step on ResNet-20 (if it fails, the rest goes on with the segments alone);
#            what each part of a residual branch costs (benchmarks/conv_costs.py, session 11); ResNet-110
#            bf16 speed of segments and one graph, each with cuDNN's and with GEMM weight gradients
#            (trainer.conv_weight_grad, session 11), with the plain PyTorch peer in the same process;
#            ResNet-110 against eager autograd; one run.py run.
#   profile: where the steps' time goes (benchmarks/step_profile.py; one graph also with GEMM weight
#            gradients), against the peer's whole-step graph.
#   more:    the fp32 speed rows; conv_costs in NCHW; several runs per GPU (benchmarks/sweep.py, issue
#            16), with and without MPS; the autograd rows (eager and graphed branches, bf16).
# torch is preinstalled there; hydra-core, omegaconf, antlr4, submitit and hydra-submitit-launcher
# travel as pure-Python packages in .devsite/ (kept out of the repository by .git/info/exclude), made with
#     pip install --no-deps --target .devsite hydra-core==1.3.8 omegaconf==2.3.1 \
#         antlr4-python3-runtime==4.9.3 submitit==1.5.4 hydra-submitit-launcher==1.2.0
#     run: command="bash benchmarks/device_check.sh check", carry=[".devsite"]
set -u
OUT=${OUT:-/tmp/sdexp-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.devsite" PYTHONUNBUFFERED=1 SDEXP_TRACEBACK=1
RUNS=$(mktemp -d)

check() {
  timeout 20 python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
  echo "== 1. the driver's node switch, then the one-graph step on ResNet-20 against eager autograd"
  timeout 90 python3 benchmarks/cuda_graphs_check.py --model resnet20 --steps 3 --paths graph 2>&1 \
    | tee "$OUT/graph_quick_check.txt" | grep -v "^  File"
  local quick=${PIPESTATUS[0]} steps=segments,graph
  if [ "$quick" != 0 ]; then steps=segments; echo "the one-graph step failed (above): segments only"; fi
  echo "== 2. the parts of a branch per stage (convolutions, BatchNorm+ReLU, weight gradient as one GEMM)"
  timeout 60 python3 benchmarks/conv_costs.py 2>&1 | tee "$OUT/conv_costs.txt"
  echo "== 3. training speed, ResNet-110, bf16, channels-last: $steps x cuDNN's or GEMM weight gradients; the peer"
  timeout 190 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
    --precision bf16 --step $steps --conv-weight-grad native,gemm --peer true --json "$OUT/speed_bf16.json" \
    2>"$OUT/speed_bf16.log" | tee "$OUT/speed_bf16.txt"
  grep -E "^(failed|skipped)|Error" "$OUT/speed_bf16.log" | head -5
  echo "== 4. ResNet-110 against eager autograd: $steps (bf16 weight copies since session 9), GEMM weight grads"
  timeout 170 python3 benchmarks/cuda_graphs_check.py --paths $steps,gemm 2>&1 \
    | tee "$OUT/cuda_graphs_check.txt" | grep -v "^  File"
  echo "== 5. run.py trainer.step=${steps##*,}, ResNet-110, 2 epochs of 12,800 synthetic images"
  timeout 60 python3 run.py model=resnet110 dataset=synthetic dataset.train_size=12800 dataset.val_size=5000 \
    dataset.test_size=10000 trainer.epochs=2 trainer.progress=false trainer.step=${steps##*,} \
    hydra.run.dir="$RUNS/default" >/dev/null 2>&1
  cp "$RUNS/default/train.log" "$OUT/run_train.log"; cp "$RUNS/default/result.json" "$OUT/run_result.json"
  grep -E "trainer.step|WARN|ERROR|epoch" "$OUT/run_train.log" | cut -c1-220
}

profile() {
  echo "== where the time goes: one graph and segments at constant depth, one graph with SD; the peer's graph"
  for how in "--step graph --rule off" "--step segments --rule off" "--step graph --rule linear" \
    "--step graph --rule off --conv-weight-grad gemm" "--rule off --peer graph"; do
    timeout 45 python3 benchmarks/step_profile.py --images 2560 $how 2>&1 | tee -a "$OUT/step_profile.txt"
  done
}

more() {
  echo "== training speed, ResNet-110, fp32, channels-last: segments and one graph; the peer"
  timeout 150 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
    --precision fp32 --step segments,graph --peer true --json "$OUT/speed_fp32.json" 2>"$OUT/speed_fp32.log" \
    | tee "$OUT/speed_fp32.txt"
  echo "== the parts of a branch in NCHW"
  timeout 60 python3 benchmarks/conv_costs.py --layouts nchw 2>&1 | tee "$OUT/conv_costs_nchw.txt"
  echo "== runs per GPU (issue 16): one round of k runs for k = 1, 2, 4, 8 (MPS where it starts), k = 4 without"
  timeout 200 python3 benchmarks/sweep.py --runs-per-gpu 1,2,4,8 2>&1 | grep -v "start (CUDA" | tee "$OUT/sweep.txt"
  timeout 60 python3 benchmarks/sweep.py --runs-per-gpu 4 hydra.launcher.mps=false 2>&1 | grep -v "start (CUDA" \
    | tee -a "$OUT/sweep.txt"
  echo "== training speed, ResNet-110, bf16, channels-last: autograd, eager and graphed branches"
  timeout 100 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
    --precision bf16 --step autograd --cuda-graphs false,true --peer false --json "$OUT/speed_autograd.json" \
    2>"$OUT/speed_autograd.log" | tee "$OUT/speed_autograd.txt"
}

"${@:-check}"
