"""``pickloop bench scale``: the U-Nets are the published SD 1.5 / SDXL shapes, and the bench runs end to end."""
from __future__ import annotations

import pytest
import torch

from finetune.bench.scale import build_unet, conditioning, run_bench
from pickloop.cli import main as cli_main


@pytest.mark.parametrize("arch,params", [("sd15", 859_520_964), ("sdxl", 2_567_463_684)])
def test_unets_have_the_published_parameter_counts(arch, params):
    unet = build_unet(arch, device="meta")  # shapes only: nothing allocated
    assert sum(p.numel() for p in unet.parameters()) == params
    cond = conditioning(unet, 2, device="meta", dtype=torch.float32)
    assert cond["encoder_hidden_states"].shape[-1] == unet.config.cross_attention_dim
    assert ("added_cond_kwargs" in cond) == (arch == "sdxl")


def test_bench_runs_on_the_embedded_unet(capsys):
    figures = run_bench(arch="shapes", steps=1, batch=2)
    for key in ("dpo_step_s", "dpo_peak_mb", "sample_step_s", "ddpo_train_step_s", "ddpo_peak_mb"):
        assert figures[key] > 0, key
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("arch=shapes device=cpu precision=fp32 batch=2 params_m=") and "dpo_step_s=" in last
    if not torch.cuda.is_available():  # asking for a GPU that is not there: one clear line, no traceback
        assert cli_main(["bench", "scale", "--arch", "sd15", "--device", "cuda"]) == 2
        assert "torch sees no GPU" in capsys.readouterr().err
