"""The diffusers Diffusion-DPO example (``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py``),
run unchanged in a child process on the same pairs, model and settings as ``pickloop bench dpo``.

The example is not part of the diffusers wheel: the bench takes its path (``--reference-script``) and,
when it is missing, prints one line saying where to get the copy that matches the installed diffusers.
It needs ``datasets`` (extra ``pickloop[diffusers-reference]``). Two imports of the example are met by
stand-ins in ``finetune/bench/reference_shims`` when the real package is missing, and the output says so:
torchvision's transforms (data loading only; PyPI's torchvision does not import beside the CPU build of
torch 2.13.0) and wandb (imported, unused without ``--report_to wandb``).

Timing without touching the script: ``torch.optim.AdamW.step`` is wrapped to record the wall and CPU
clocks after each optimizer step, so a step's time covers everything the example does per step (data
loading, VAE encoding, text encoding, both U-Net passes, the update). The child's last line is
``steps=<n> wall_s=<..> cpu_s=<..> peak_rss_mb=<..> shims=<..>`` over the steps after ``warmup``.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from finetune.bench import peak_rss_mb

SHIMS = Path(__file__).parent / "reference_shims"


def install_hint() -> str:
    import diffusers

    url = (f"https://raw.githubusercontent.com/huggingface/diffusers/v{diffusers.__version__}/examples/"
           "research_projects/diffusion_dpo/train_diffusion_dpo.py")
    return (f"the diffusers DPO reference needs `pip install 'pickloop[diffusers-reference]'` and the example "
            f"script: curl -Lo train_diffusion_dpo.py {url}, then --reference-script train_diffusion_dpo.py")


def missing(script: str | None) -> str | None:
    """One line saying what to install, or None when the reference can run."""
    if not script or not Path(script).is_file() or importlib.util.find_spec("datasets") is None:
        return install_hint()
    return None


def write_dataset(pairs: Sequence[Any], images: dict, folder: Path) -> Path:
    """The pairs as a Pick-a-Pic parquet the example reads (``label_0`` 1 or 0, winner position alternating)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(img: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    rows = []
    for i, p in enumerate(pairs):
        w, lo = png(images[p.winner]), png(images[p.loser])
        first = i % 2 == 0
        rows.append({"caption": p.prompt, "jpg_0": w if first else lo, "jpg_1": lo if first else w,
                     "label_0": 1.0 if first else 0.0, "label_1": 0.0 if first else 1.0})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    return folder


def reference_args(*, base: str, data: Path, out: Path, steps: int, batch_size: int, rank: int, lr: float,
                   beta: float, resolution: int, seed: int) -> list[str]:
    """The example's flags for pickloop's settings. Its loss has no 1/2 (see ``DPOConfig``): beta/2 there."""
    return ["--pretrained_model_name_or_path", base, "--dataset_name", str(data), "--dataset_split_name", "train",
            "--output_dir", str(out), "--resolution", str(resolution), "--train_batch_size", str(batch_size),
            "--max_train_steps", str(steps), "--rank", str(rank), "--learning_rate", str(lr),
            "--beta_dpo", str(int(round(beta / 2))), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--checkpointing_steps", str(10**9), "--seed", str(seed), "--no_hflip", "--mixed_precision", "no",
            "--adam_weight_decay", "0.0", "--report_to", "tensorboard"]


def run_reference(script: str, args: list[str], warmup: int) -> dict[str, float | str]:
    """Run the example in a child process; its figures (see the module docstring)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "finetune.bench.dpo_diffusers", script, str(warmup), json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the diffusers reference run failed: {tail}")
    last = proc.stdout.strip().splitlines()[-1]
    out: dict[str, float | str] = {}
    for kv in last.split():
        k, v = kv.split("=", 1)
        out[k] = v if k == "shims" else float(v)
    return out


def _install_shims(names: list[str]) -> None:
    """Make ``import NAME`` in the example find the stand-in, after the libraries have decided, by the real
    package's absence, which optional backends to use (they must keep treating torchvision as missing)."""
    import diffusers.utils
    import peft  # noqa: F401
    import transformers.utils

    transformers.utils.is_torchvision_available()
    diffusers.utils.is_torchvision_available()
    sys.path.insert(0, str(SHIMS))
    for name in names:
        importlib.import_module(name)
    if "torchvision" in names:
        importlib.import_module("torchvision.transforms")
    sys.path.remove(str(SHIMS))


def _child(script: str, warmup: int, args: list[str]) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shims = [name for name in ("torchvision", "wandb") if importlib.util.find_spec(name) is None]
    if shims:
        _install_shims(shims)
    marks: list[tuple[float, float]] = []
    step = torch.optim.AdamW.step

    def timed_step(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = step(self, *a, **kw)
        marks.append((time.perf_counter(), time.process_time()))
        return result

    torch.optim.AdamW.step = timed_step
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
    (w0, c0), (w1, c1) = marks[warmup - 1], marks[-1]
    n = len(marks) - warmup
    print(f"steps={n} wall_s={(w1 - w0) / n:.5f} cpu_s={(c1 - c0) / n:.5f} peak_rss_mb={peak_rss_mb():.1f} "
          f"shims={','.join(shims) or 'none'}")


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
