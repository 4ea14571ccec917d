"""The benchmark scripts run (quick mode) and print their tables; no timing is asserted."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # each test runs whole commands: the full suite only


def benchmark(name: str, *args: str) -> str:
    """Run ``benchmarks/<name>.py --quick`` and return what it printed; it must succeed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def cells(printed: str) -> list[list[str]]:
    """The rows of the markdown tables in ``printed``, each a list of its stripped cells."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in printed.splitlines()
        if line.startswith("|")
    ]


def test_train_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    printed = benchmark(
        "train_speed", "--device=cpu", "--step=autograd,segments", "--peer=true", f"--json={out}"
    )
    assert cells(printed)[0][:4] == ["rule", "precision", "ch_last", "step"]
    rows = json.loads(out.read_text())
    ours, peer = rows[:4], rows[4:]
    assert [(r["rule"], r["step"]) for r in ours] == [
        ("off", "autograd"), ("linear", "autograd"), ("off", "segments"), ("linear", "segments")
    ]  # fmt: skip
    for constant, sd in (ours[:2], ours[2:]):
        assert constant["executed_block_fraction"] == 1.0
        assert 0.5 < sd["executed_block_fraction"] < 1.0
        assert 0.5 < sd["cost_weighted_ratio"] < 1.0
    assert all(r["images_per_s"] > 0 and r["eval_time_s"] > 0 for r in ours)
    assert "15k eval s" in cells(printed)[0]
    assert [(r["peer"], r["rule"]) for r in peer] == [
        ("eager", "off"),
        ("eager", "linear"),
    ]  # no graph on the CPU
    assert all(r["img/s"] > 0 and r["sdexp/peer"] > 0 for r in peer)
    assert cells(printed)[-1][:3] == ["eager", "linear", "fp32"]


def test_stage_costs_quick() -> None:
    printed = benchmark("stage_costs")
    rows = [row[:2] for row in cells(printed)]
    assert ["stage 1 branches", "3"] in rows and ["stage 3 branches", "3"] in rows
    assert "predicted SD/constant step time (linear, p_L = 0.5)" in printed
    assert ["1", "32×16×32×32"] in rows and ["3", "32×64×8×8"] in rows


def test_conv_costs_quick() -> None:
    printed = benchmark("conv_costs")
    rows = cells(printed)
    assert rows[0][:4] == ["dtype", "layout", "stage", "input"] and rows[0][-1] == "GEMM rel. diff"
    parts = [row for row in rows[2:] if len(row) == len(rows[0])]
    assert [row[:4] for row in parts] == [
        [dtype, "channels_last", str(stage), f"8×{c}×{s}×{s}"]
        for dtype in ("fp32", "bf16")
        for stage, (c, s) in enumerate(((16, 32), (32, 16), (64, 8)), start=1)
    ]
    assert all(float(cell) > 0 for row in parts for cell in row[4:-1])
    for row in parts:  # the GEMM weight gradient is the library's (oneDNN's here)
        assert float(row[-1]) <= (1e-5 if row[0] == "fp32" else 3e-2)
    assert "per training step of ResNet-20 (6 of each per stage)" in printed


def test_input_pipeline_quick() -> None:
    printed = benchmark("input_pipeline", "--device=cpu")
    loaders = [row[0] for row in cells(printed)]
    assert "device-resident (fast)" in loaders and "DataLoader + torchvision" in loaders


def test_aggregate_quick() -> None:
    printed = benchmark("aggregate")
    assert "20 runs × 10 epochs (200 metric rows) -> 10 groups" in printed
    assert "total" in [row[0] for row in cells(printed)]


def test_sweep_quick() -> None:
    assert "local (2 workers)" in [row[0] for row in cells(benchmark("sweep"))]


def test_sweep_gpu_mode_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the launcher sees a GPU 0; the quick runs use the CPU
    rows = cells(benchmark("sweep", "--runs-per-gpu=1,2"))
    assert rows[0][:3] == ["k", "runs", "wall s"]
    assert [row[:2] for row in rows[2:]] == [["1", "1"], ["2", "2"]]  # one round of k runs for each k
    assert rows[0][4] == "aggregate img/s (all running)"  # read from each run's train.log
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows[2:])


def test_sweep_gpu_mode_without_a_visible_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, on any machine
    for quick, advice in ((["--quick"], "set CUDA_VISIBLE_DEVICES=0"), ([], "--quick with CUDA_VISIBLE")):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--runs-per-gpu=2", *quick],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"--runs-per-gpu needs GPU 0, which is not visible here: {advice}" in proc.stderr


def test_concurrent_images_per_s_counts_only_the_time_all_runs_train() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        sweep = importlib.import_module("sweep")
    finally:
        sys.path.pop(0)
    # two runs of 100 images per 1-s epoch, the second started 0.5 s later: 200 img/s while both train
    assert sweep.concurrent_images_per_s([[0, 1, 2, 3], [0.5, 1.5, 2.5, 3.5]], 100) == pytest.approx(200)
    assert sweep.concurrent_images_per_s([[0, 1, 2, 3], [0, 2, 4, 6]], 100) == pytest.approx(150)
    assert sweep.concurrent_images_per_s([[0, 1, 2], [5, 6, 7]], 100) is None  # one after the other
    assert sweep.concurrent_images_per_s([[0, 1, 2], [1]], 100) is None  # a run with one epoch


def test_step_profile_quick() -> None:
    for args, what in (((), "trainer.step=auto (took autograd)"), (("--peer=eager",), "plain peer (eager)")):
        printed = benchmark("step_profile", *args)
        assert what in printed and "2 steps of 128" in printed and "wall per step" in printed
        rows = cells(printed)
        assert rows[0][:2] == ["operator (own CPU time)", "ms per step"]
        assert any(row[0] == "aten::convolution_backward" for row in rows[2:])  # the backward is profiled


def test_cuda_graphs_check_rehearses_on_the_cpu() -> None:
    """The GPU check's CPU rehearsal: the segments (exactly) and the GEMM weight gradients against eager
    autograd, fp32 and bf16; the one graph is left out on the CPU."""
    script = ROOT / "benchmarks" / "cuda_graphs_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device=cpu", "--model=resnet20", "--steps=2",
         "--paths=segments,graph,gemm"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = cells(proc.stdout)
    assert [(row[0], row[1], row[-1]) for row in rows[2:]] == [
        (path, precision, "PASS") for precision in ("fp32", "bf16") for path in ("segments", "gemm")
    ]
    assert [float(row[6]) for row in rows[2:]][::2] == [0.0, 0.0]  # the segments: the same state


@pytest.mark.skipif(torch.cuda.is_available(), reason="its default device, cuda, is there")
def test_the_gpu_check_on_a_machine_without_one_says_so() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cuda_graphs_check.py")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "argument --device: 'cuda': CUDA is not available here" in proc.stderr


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("sweep", ["--jobs", "0"], "argument --jobs: '0' is not an integer >= 1"),
        ("sweep", ["--runs-per-gpu", "1,x"], "argument --runs-per-gpu: 'x' is not an integer >= 1"),
        ("train_speed", ["--images", "-3"], "argument --images: '-3' is not an integer >= 1"),
        ("train_speed", ["--quick", "--images", "5"], "--images 5 is less than one batch (128 images)"),
        ("step_profile", ["--peer=eager", "--model=resnet18"], "model=resnet18: the plain peer is a CIFAR"),
        (
            "cuda_graphs_check",
            ["--device=cpu", "--paths=segments,nope"],
            "argument --paths: 'nope' is not one of branches, segments, graph",
        ),
        ("conv_costs", ["--dtypes=fp16"], "argument --dtypes: 'fp16' is not one of fp32, bf16"),
        ("conv_costs", ["--depth=7"], "--depth 7 is no CIFAR ResNet depth (6n+2, n >= 1)"),
        ("conv_costs", ["--depth=2"], "--depth 2 is no CIFAR ResNet depth (6n+2, n >= 1)"),
        ("conv_costs", ["--device=tpu"], "argument --device: 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        ("conv_costs", ["--seconds=inf"], "argument --seconds: 'inf' is not a number of seconds > 0"),
        ("train_speed", ["--channels-last=maybe"], "--channels-last: 'maybe' is not one of false, true"),
        ("train_speed", ["--precision=fp32,fp32"], "argument --precision: 'fp32,fp32' lists a value twice"),
        ("train_speed", ["--json=nowhere/rows.json"], "--json: 'nowhere/rows.json': no folder nowhere"),
        (
            "train_speed",
            ["--json=/proc/rows.json"],
            "--json: '/proc/rows.json': no file can be written in /proc",
        ),
        ("train_speed", ["--quick", "--model=resnet999"], "model=resnet999: no such option"),
        ("step_profile", ["--peer=eager", "--rule=uniform"], "--rule uniform: the plain peer drops blocks"),
        ("step_profile", ["--precision=fp16"], "argument --precision: 'fp16' is not one of fp32, bf16"),
        ("stage_costs", ["--steps=0"], "argument --steps: '0' is not an integer >= 1"),
        ("stage_costs", ["--quick", "trainer.batch_size=0"], "trainer.batch_size=0 is not allowed"),
        ("sweep", ["seed=3"], "seed=3: overrides are for GPU mode (--runs-per-gpu)"),
    ],
)
def test_bad_benchmark_arguments_are_named(script: str, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
