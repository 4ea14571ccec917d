#!/usr/bin/env bash
# The prepared measurements for a lent GPU machine, in two parts of at most 8 and 6 minutes (the
# timeouts), so that a failure in the first can be fixed before the second; output under $OUT.
# First run on an H200 on 2026-11-28 (docs/performance.md, session 8): check took 82 s (before the
# profiles and the one-graph step were added; now expect 3-5 minutes).
#   check: the CUDA-graph paths against eager autograd; the speed of the segment-wise and the
#          one-graph step, fp32 and bf16, with the plain PyTorch peer timed in the same process; two
#          runs of run.py (the default step and trainer.step=graph: which step, speed, peak memory);
#          where the steps' time goes (benchmarks/step_profile.py).
#   more:  several runs per GPU (benchmarks/sweep.py, issue 16), with and without MPS; the autograd rows
#          (eager and graphed branches, bf16) for comparison.
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
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
  echo "== CUDA graphs: graphed branches, the segment-wise step and the one-graph step vs eager autograd"
  timeout 200 python3 benchmarks/cuda_graphs_check.py 2>&1 | tee "$OUT/cuda_graphs_check.txt" | grep -v "^  File"
  echo "== training speed, ResNet-110, channels-last: segments and one graph, fp32 and bf16; the plain peer"
  timeout 200 python3 benchmarks/train_speed.py --model resnet110 --images 6400 --repeats 3 --channels-last true \
    --step segments,graph --peer true --json "$OUT/speed_steps.json" 2>"$OUT/speed_steps.log" \
    | tee "$OUT/speed_steps.txt"
  tail -5 "$OUT/speed_steps.log"
  echo "== run.py, ResNet-110, 2 epochs of 12,800 synthetic images: the default step, then trainer.step=graph"
  for step in auto graph; do
    timeout 60 python3 run.py model=resnet110 dataset=synthetic dataset.train_size=12800 dataset.val_size=5000 \
      dataset.test_size=10000 trainer.epochs=2 trainer.progress=false trainer.step=$step \
      hydra.run.dir="$RUNS/$step" >/dev/null 2>&1
    cp "$RUNS/$step/train.log" "$OUT/${step}_train.log"; cp "$RUNS/$step/result.json" "$OUT/${step}_result.json"
    grep -E "trainer.step|WARN|epoch" "$OUT/${step}_train.log" | cut -c1-220
  done
  echo "== where the time goes: segments and one graph at constant and stochastic depth; the peer's whole-step graph"
  for how in "--step segments --rule off" "--step graph --rule off" "--step graph --rule linear" \
    "--rule off --peer graph"; do
    timeout 45 python3 benchmarks/step_profile.py --images 2560 $how 2>&1 | tee -a "$OUT/step_profile.txt"
  done
}

more() {
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
