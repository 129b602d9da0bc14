"""``pickloop bench dpo``: the reference's missing extra is one line, and what the reference is fed."""
from __future__ import annotations

import importlib.util
import sys

import pyarrow.parquet as pq
import pytest

from finetune.bench import dpo_diffusers
from finetune.dpo import PairSpec


def test_reference_without_script_or_extra_says_what_to_install(capsys, tmp_path):
    from finetune.bench.dpo import run_bench

    assert run_bench(reference="diffusers", reference_script=str(tmp_path / "missing.py")) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "pip install 'pickloop[diffusers-reference]'" in out[0]
    assert "train_diffusion_dpo.py" in out[0] and "raw.githubusercontent.com/huggingface/diffusers/v" in out[0]


def test_reference_reads_the_same_pairs_with_the_same_strength(tmp_path):
    from PIL import Image

    pairs = [PairSpec(f"p{i}", f"w{i}", f"l{i}") for i in range(6)]
    images = {k: Image.new("RGB", (4, 4), (40 * i, 0, 0)) for i, k in
              enumerate(k for p in pairs for k in (p.winner, p.loser))}
    rows = pq.read_table(dpo_diffusers.write_dataset(pairs, images, tmp_path / "d") / "train.parquet").to_pylist()
    # the example's reader: the images swap only when label_0 == 0, and the first is the winner
    winners = [r["jpg_1"] if r["label_0"] == 0 else r["jpg_0"] for r in rows]
    assert [r["caption"] for r in rows] == [p.prompt for p in pairs]
    assert sum(r["label_0"] == 0 for r in rows) == 3  # the winner sits second half the time
    import io
    assert [Image.open(io.BytesIO(w)).getpixel((0, 0)) for w in winners] == [images[p.winner].getpixel((0, 0))
                                                                            for p in pairs]
    args = dpo_diffusers.reference_args(base="b", data=tmp_path, out=tmp_path, steps=5, batch_size=4, rank=8,
                                        lr=1e-4, beta=5000.0, resolution=64, seed=0)
    assert args[args.index("--beta_dpo") + 1] == "2500"  # its loss has no 1/2: the same strength


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="the real torchvision is here")
def test_torchvision_stand_in_transforms(monkeypatch):
    from PIL import Image

    monkeypatch.syspath_prepend(str(dpo_diffusers.SHIMS))
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        monkeypatch.delitem(sys.modules, name)
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR),
                            transforms.CenterCrop(64), transforms.Lambda(lambda x: x), transforms.ToTensor(),
                            transforms.Normalize([0.5], [0.5])])
    x = t(Image.new("RGB", (128, 96), (255, 0, 0)))
    assert tuple(x.shape) == (3, 64, 64)
    assert float(x[0].min()) == 1.0 and float(x[1].max()) == -1.0
