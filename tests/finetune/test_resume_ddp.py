"""Resume after SIGKILL gives the same LoRA; 2 processes (gloo) give the same LoRA as 1 with accumulation."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from finetune import checkpoint as ckpt
from finetune import lora as lora_io

CFG = {"steps": 6, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1, "log_every": 1, "seed": 3}


def _env(labelled) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PICKLOOP_HOME": str(labelled.home),
            "PICKLOOP_BASE_MODEL": str(labelled.settings.base_model)}


def _dpo_cmd(out, work=None, config=CFG) -> list[str]:
    cmd = [sys.executable, "-m", "finetune.dpo", "--out", str(out), "--config", json.dumps(config)]
    return cmd + (["--work", str(work)] if work else [])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(folder) -> dict[str, torch.Tensor]:
    return lora_io.load_lora_state(folder)[0]


def _assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"LoRA tensors differ by {worst}"


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(labelled, tmp_path):
    env = _env(labelled)
    cwd = os.getcwd()
    ref = subprocess.run(_dpo_cmd(tmp_path / "ref"), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]

    work, out = tmp_path / "work", tmp_path / "out"
    # seeded: every run kills at the same step, so a failure can be rerun as it was
    kill_after = random.Random("resume-after-sigkill").randint(1, CFG["steps"] - 2)
    proc = subprocess.Popen(_dpo_cmd(out, work), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = ckpt.latest_complete_checkpoint(work)
        if latest is not None and int(latest.name.split("-")[1]) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    killed_at = ckpt.latest_complete_checkpoint(work)
    assert killed_at is not None and len(ckpt.list_checkpoints(work)) >= 1

    resumed = subprocess.run(_dpo_cmd(out, work), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming from {killed_at.name}" in resumed.stdout + resumed.stderr
    _assert_same(_tensors(out), _tensors(tmp_path / "ref"), atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_with_accumulation(labelled, tmp_path):
    env = _env(labelled)
    one = {**CFG, "steps": 3, "batch_size": 1, "grad_accum": 2, "checkpoint_every": 0}
    two = {**one, "grad_accum": 1}
    r1 = subprocess.run(_dpo_cmd(tmp_path / "one", config=one), env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    # accelerate's --cpu flag runs a single process; --multi_gpu starts torchrun, and without CUDA the
    # trainer's Accelerator(cpu=True) makes that DDP over gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()),
              "-m", "finetune.dpo", "--out", str(tmp_path / "two"), "--config", json.dumps(two)]
    r2 = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=400)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    assert "dpo: 2 process(es), MULTI_CPU" in r2.stdout + r2.stderr
    a, b = _tensors(tmp_path / "one"), _tensors(tmp_path / "two")
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora.up" in k)
    assert moved > 1e-4  # the runs trained something
    _assert_same(a, b, atol=1e-5)
