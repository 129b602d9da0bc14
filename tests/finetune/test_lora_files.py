"""LoRA files: load in a fresh process without pickloop, kohya equivalence, corrupted files refused."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from finetune import lora as lora_io
from finetune import models as fm
from pickloop.errors import UserError


@pytest.fixture(scope="module")
def saved_lora(tiny_base, tmp_path_factory):
    """A LoRA with rank 4, alpha 2 (alpha != rank, so a lost alpha would show) and non-zero weights."""
    m = fm.load_train_models(str(tiny_base))
    lora_io.add_lora(m.unet, rank=4, alpha=2.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_io.lora_parameters(m.unet):
            p.copy_(torch.randn_like(p) * 0.3)
    out = tmp_path_factory.mktemp("lora") / "v1"
    sha = lora_io.save_lora(m.unet, out, metadata={"method": "test"})
    return out, sha, lora_io.lora_tensors(m.unet)


FRESH = textwrap.dedent('''
    import json, logging, sys, io
    import torch
    torch.set_num_threads(1)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlog
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    dlog.get_logger("diffusers").addHandler(handler)
    dlog.set_verbosity_warning()
    base, lora_dir = sys.argv[1], sys.argv[2]
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    def draw():
        g = torch.Generator().manual_seed(7)
        return pipe("a red circle on a blue background", num_inference_steps=4, guidance_scale=5.0,
                    generator=g, output_type="np").images
    base_img = draw()
    stream.truncate(0)
    pipe.load_lora_weights(lora_dir, weight_name="pytorch_lora_weights.safetensors", use_safetensors=True,
                           adapter_name="d")
    log_d = stream.getvalue()
    img_d = draw()
    n_lora = sum("lora_A" in n for n, _ in pipe.unet.named_parameters())
    pipe.unload_lora_weights()
    stream.truncate(0)
    pipe.load_lora_weights(lora_dir, weight_name="lora_kohya.safetensors", use_safetensors=True, adapter_name="k")
    log_k = stream.getvalue()
    img_k = draw()
    print(json.dumps({"pickloop_imported": any(m.split(".")[0] in ("pickloop", "finetune") for m in sys.modules),
                      "log_d": log_d, "log_k": log_k, "n_lora_A": n_lora,
                      "diff_base": float(abs(img_d - base_img).max()),
                      "diff_kohya": float(abs(img_k - img_d).max())}))
''')


def test_fresh_process_loads_diffusers_and_kohya_files(saved_lora, tiny_base, tmp_path):
    out, _, tensors = saved_lora
    script = tmp_path / "load.py"
    script.write_text(FRESH)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_base), str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["pickloop_imported"] is False
    for log in (res["log_d"], res["log_k"]):
        assert "unexpected key" not in log.lower() and "missing key" not in log.lower(), log
    assert res["n_lora_A"] == sum("lora_A" in k for k in tensors)  # every adapted layer got its weights
    assert res["diff_base"] > 1e-3  # the LoRA changes the fixed-seed image
    assert res["diff_kohya"] <= 1e-5  # the kohya file (with alpha 2, rank 4) draws the same image


def test_saved_file_carries_alpha_and_round_trips(saved_lora, tiny_base):
    out, sha, tensors = saved_lora
    state, config = lora_io.load_lora_state(out)
    assert config["r"] == 4 and config["lora_alpha"] == 2.0
    assert lora_io.file_sha256(out / lora_io.LORA_WEIGHT_NAME) == sha
    m = fm.load_train_models(str(tiny_base))
    lora_io.load_lora_into(m.unet, out)
    back = lora_io.lora_tensors(m.unet)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    kohya, _ = lora_io.read_safetensors(out / lora_io.KOHYA_WEIGHT_NAME)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["truncated", "bitflip", "pickle", "bitflip-no-manifest-header"])
def test_damaged_lora_is_one_clear_error_never_pickle(saved_lora, tmp_path, damage, monkeypatch):
    out, _, _ = saved_lora
    d = _copy(out, tmp_path / "lora")
    f = d / lora_io.LORA_WEIGHT_NAME
    data = bytearray(f.read_bytes())
    if damage == "truncated":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "bitflip":
        data[-100] ^= 0x10  # inside the tensor data: only the sha256 can tell
        f.write_bytes(bytes(data))
    elif damage == "pickle":
        f.write_bytes(pickle.dumps({"unet.x.lora.down.weight": [1.0, 2.0]}))
    else:  # no manifest to check against; a flipped bit in the JSON header
        (d / lora_io.MANIFEST_NAME).unlink()
        data[10] ^= 0x01
        f.write_bytes(bytes(data))

    def no_pickle(*a, **k):  # any attempt to unpickle fails the test
        raise AssertionError("pickle was loaded")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    with pytest.raises(UserError) as e:
        lora_io.load_lora_state(d)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg


def test_non_safetensors_name_refused(tmp_path):
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(UserError, match="only .safetensors"):
        lora_io.load_lora_state(tmp_path, weight_name="pytorch_lora_weights.bin")
