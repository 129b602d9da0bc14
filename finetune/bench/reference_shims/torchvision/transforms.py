"""The transforms the diffusers DPO example's data loading uses, with torchvision's semantics, on PIL and
numpy (see ../README.md)."""
from __future__ import annotations

import enum
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = Image.Resampling.NEAREST
    BILINEAR = Image.Resampling.BILINEAR
    BICUBIC = Image.Resampling.BICUBIC


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class Lambda:
    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> Any:
        return self.fn(x)


class Resize:
    """An int resizes the shorter side to that size, keeping the aspect ratio (torchvision's rule)."""

    def __init__(self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if min(w, h) == self.size:
            return img
        if w <= h:
            size = (self.size, int(self.size * h / w))
        else:
            size = (int(self.size * w / h), self.size)
        return img.resize(size, self.interpolation.value)


def _crop(img: Image.Image, top: int, left: int, size: int) -> Image.Image:
    return img.crop((left, top, left + size, top + size))


class CenterCrop:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        return _crop(img, int(round((h - self.size) / 2)), int(round((w - self.size) / 2)), self.size)


class RandomCrop:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        return _crop(img, random.randint(0, h - self.size), random.randint(0, w - self.size), self.size)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img


class ToTensor:
    """PIL RGB -> float tensor (3, H, W) in [0, 1]."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
