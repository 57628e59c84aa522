"""Image transform presets (train + matching eval transform with the same mean/std)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from tbps.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Transform = Callable[[object], torch.Tensor]


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def eval_transform(
    image_size: tuple[int, int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> Transform:
    """Resize to (H, W), to tensor, normalise."""
    return T.Compose(
        [T.Resize(tuple(image_size), interpolation=interpolation), *_to_tensor(mean, std)]
    )


def _irra(image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Transform:
    return T.Compose(
        [
            T.Resize(tuple(image_size)),
            T.RandomHorizontalFlip(0.5),
            T.Pad(10),
            T.RandomCrop(tuple(image_size)),
            *_to_tensor(mean, std),
            T.RandomErasing(scale=(0.02, 0.4), value=0),
        ]
    )


def _none(image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Transform:
    return eval_transform(image_size, mean, std)


PRESETS: dict[str, Callable[[tuple[int, int], Sequence[float], Sequence[float]], Transform]] = {
    "irra": _irra,
    "none": _none,
}


def build_image_transforms(
    preset: str,
    image_size: Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> tuple[Transform, Transform]:
    """(train, eval) transforms of a preset; both normalise with the same mean/std."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augment.preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image size must be [height, width], got {list(image_size)}")
    size = (int(image_size[0]), int(image_size[1]))
    return PRESETS[preset](size, mean, std), eval_transform(size, mean, std)
