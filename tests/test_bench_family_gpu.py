"""bench/family_gpu.py, the GPU figures of every family, run on the CPU at tiny widths: a GPU lease is too
short to find out there that the script (or a family under bf16) breaks."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_env


@pytest.mark.slow
def test_family_gpu_bench_measures_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/family_gpu.py", "--device", "cpu", "--smoke", "--families",
                           "stylegan2_32,lapgan", "--precisions", "bf16", "--search-seconds", "0", "--timeout", "900"],
                          cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=1900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for family in ("stylegan2_32", "lapgan"):
        assert f"{family}_bf16_error" not in figures, figures
        assert figures[f"{family}_bf16_img_s"] > 0 and figures[f"{family}_bf16_batch"] == 4, figures
    assert figures["stylegan2_32_bf16_graphed"] is False  # lazy R1 / path length: the trainer runs it eagerly
