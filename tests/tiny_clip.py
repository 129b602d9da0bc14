"""A CLIPModel + CLIPProcessor folder of the shapes CLIP's architecture with random weights, for tests."""
from __future__ import annotations

from pathlib import Path

import torch


def write_random_shapes_clip(out: Path, seed: int = 0) -> str:
    """Save a randomly initialised shapes-architecture CLIP (and its processor) into ``out``; returns the path."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    from pickloop.shapes import architectures as A

    tokenizer = A.make_tokenizer()
    torch.manual_seed(seed)
    A.make_clip(tokenizer).save_pretrained(out, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                                     image_mean=[0.5] * 3, image_std=[0.5] * 3),
                  tokenizer=tokenizer).save_pretrained(out)
    return str(out)
