"""The GPU benchmark's code paths on CPU (tiny models) and the prepared device check's guard rails.

Timings are not checked (tests check behaviour, not time); what is checked is that every stage row of every
SAM-family backend runs, that samseg's generator is compared with segment_anything's on the same model, and that
the device script refuses to run without the wheels it must install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_gpu_bench_smoke_runs_every_stage_for_segment_anything_and_sam2():
    result = _run(sys.executable, "bench/gpu.py", "--cpu-smoke")

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for backend in ("tiny", "sam2-tiny"):
        for stage in ("SAM AMG", "voting", "SAM encoder", "refinement", "engine"):
            assert any(line.startswith(f"{stage} {backend} ") for line in lines), (stage, backend)
    reference = [line for line in lines if line.startswith("SAM AMG") and "SamAutomaticMaskGenerator" in line]
    assert [line.split()[2] for line in reference] == ["tiny"]  # SAM 2 has no segment_anything reference
    assert any(line.startswith("speedup SAM AMG tiny:") for line in lines)


def test_device_check_refuses_to_run_without_its_wheels(tmp_path):
    script = REPO_ROOT / "bench" / "device_check.sh"
    assert _run("bash", "-n", str(script)).returncode == 0
    copy = tmp_path / "repo"
    (copy / "bench").mkdir(parents=True)
    (copy / "bench" / "device_check.sh").write_text(script.read_text())

    result = subprocess.run(
        ["bash", str(copy / "bench" / "device_check.sh")], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2 and "device_check.sh fetch" in result.stderr
