"""Image transform presets (train + matching eval transform, same mean/std) and SS/MVS views."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from tbps.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

Transform = Callable[[object], torch.Tensor]
Size = tuple[int, int]


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def _crop_ratio(size: Size) -> tuple[float, float]:
    """Aspect-ratio range (w/h) of random resized crops: 3/4 to 4/3 around the target's own."""
    aspect = size[1] / size[0]
    return aspect * 3 / 4, aspect * 4 / 3


def eval_transform(
    image_size: Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> Transform:
    """Resize to (H, W), to tensor, normalise."""
    resize, normalise = eval_stages(image_size, mean, std, interpolation)
    return T.Compose([*resize.transforms, *normalise.transforms])


def eval_stages(
    image_size: Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> tuple[Transform, Transform]:
    """:func:`eval_transform` in two stages: PIL image -> resized uint8 (3, H, W) tensor, and
    uint8 tensor(s) -> normalised float32, which also takes a whole (B, 3, H, W) batch with
    the same result. Decoding workers run the first and send 4x fewer bytes; the second runs
    once per batch."""
    resize = T.Compose([T.Resize(tuple(image_size), interpolation=interpolation), T.ToImage()])
    normalise = T.Compose(_to_tensor(mean, std)[1:])
    return resize, normalise


class RandomDistinctOps(torch.nn.Module):
    """Apply ``k`` distinct ops drawn without replacement (torch RNG), in their listed order."""

    def __init__(self, ops: Sequence[Callable], k: int) -> None:
        super().__init__()
        if not 0 < k <= len(ops):
            raise ValueError(f"cannot pick {k} distinct ops out of {len(ops)}")
        self.ops = list(ops)
        self.k = k

    def forward(self, image):
        for i in sorted(torch.randperm(len(self.ops))[: self.k].tolist()):
            image = self.ops[i](image)
        return image

    def extra_repr(self) -> str:
        return f"k={self.k}"


class TrainStages(T.Compose):
    """A preset's training transform as two stages: ``resize`` (PIL image -> resized uint8
    (3, H, W) tensor, deterministic, so its result may be cached) and ``augment`` (uint8 tensor
    -> augmented, normalised float32). Called as a whole it is the full transform."""

    def __init__(self, resize: T.Compose, augment: T.Compose) -> None:
        super().__init__([*resize.transforms, *augment.transforms])
        self.resize = resize
        self.augment = augment


def _resize_stage(size: Size, interpolation: InterpolationMode) -> T.Compose:
    return T.Compose([T.Resize(size, interpolation=interpolation), T.ToImage()])


def _irra(size: Size, mean: Sequence[float], std: Sequence[float]) -> TrainStages:
    return TrainStages(
        _resize_stage(size, InterpolationMode.BILINEAR),
        T.Compose(
            [
                T.RandomHorizontalFlip(0.5),
                T.Pad(10),
                T.RandomCrop(size),
                *_to_tensor(mean, std)[1:],
                T.RandomErasing(scale=(0.02, 0.4), value=0),
            ]
        ),
    )


def _pick_two(
    size: Size, mean: Sequence[float], std: Sequence[float], interpolation: InterpolationMode
) -> TrainStages:
    """Resize, then 2 distinct ops of six (TBPS-CLIP), on the uint8 tensor, then normalise.
    An op that is picked is applied (flip and erasing always; grayscale with p 0.1).
    """
    ops = [
        T.ColorJitter(0.1, 0.1, 0.1, 0.0),
        T.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),  # no bicubic on tensors
        T.RandomResizedCrop(
            size, scale=(0.9, 1.0), ratio=_crop_ratio(size), interpolation=interpolation
        ),
        T.RandomGrayscale(0.1),
        T.RandomHorizontalFlip(1.0),
        T.RandomErasing(p=1.0, scale=(0.10, 0.20), value=0),
    ]
    return TrainStages(
        _resize_stage(size, interpolation),
        T.Compose(
            [
                RandomDistinctOps(ops, k=2),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean, std),
            ]
        ),
    )


def _tbps_clip(size: Size, mean: Sequence[float], std: Sequence[float]) -> TrainStages:
    return _pick_two(size, mean, std, InterpolationMode.BILINEAR)


def _siglip(size: Size, mean: Sequence[float], std: Sequence[float]) -> TrainStages:
    return _pick_two(size, mean, std, InterpolationMode.BICUBIC)


def _none(size: Size, mean: Sequence[float], std: Sequence[float]) -> TrainStages:
    resize, normalise = eval_stages(size, mean, std)
    return TrainStages(resize, normalise)


#: preset -> (train transform builder, resize interpolation shared with its eval transform)
PRESETS: dict[str, tuple[Callable[[Size, Sequence[float], Sequence[float]], TrainStages], str]] = {
    "irra": (_irra, InterpolationMode.BILINEAR),
    "tbps_clip": (_tbps_clip, InterpolationMode.BILINEAR),
    "siglip": (_siglip, InterpolationMode.BICUBIC),
    "none": (_none, InterpolationMode.BILINEAR),
}


def _size(image_size: Sequence[int]) -> Size:
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image size must be [height, width], got {list(image_size)}")
    return int(image_size[0]), int(image_size[1])


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"unknown augment.preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")


def preset_interpolation(preset: str) -> str:
    """The resize interpolation (``bilinear`` / ``bicubic``) of a preset's eval transform."""
    _check_preset(preset)
    return PRESETS[preset][1].value


def build_image_transforms(
    preset: str,
    image_size: Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> tuple[TrainStages, Transform]:
    """(train, eval) transforms of a preset; both normalise with the same mean/std.

    ``irra``: resize, h-flip 0.5, pad 10, random crop, normalise, random erasing (0.02-0.4).
    ``tbps_clip``: resize, two distinct ops of {colour jitter 0.1, rotation 15 deg, random resized
    crop 0.9-1, grayscale 0.1, h-flip, erasing 0.1-0.2}, normalise. ``siglip``: the same with
    bicubic resizing (its eval transform too). ``none``: resize, normalise.
    """
    _check_preset(preset)
    size = _size(image_size)
    build, interpolation = PRESETS[preset]
    return build(size, mean, std), eval_transform(size, mean, std, interpolation)


class RandomGaussianBlur(torch.nn.Module):
    """Gaussian blur of a PIL image with sigma drawn uniformly from ``sigma`` (torch RNG).

    PIL's blur (extended box filters) costs about a millisecond at 384x128, where a dense
    39x13 kernel convolution costs about 60.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def ss_view_transform(
    image_size: Sequence[int],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    preset: str = "none",
) -> Transform:
    """One SimCLR view of a PIL image: random resized crop (0.2-1), colour jitter
    0.4/0.4/0.4/0.1 (p 0.8), grayscale (p 0.2), Gaussian blur sigma 0.1-2 (p 0.5), h-flip,
    normalise. Resizing uses the preset's interpolation."""
    _check_preset(preset)
    size = _size(image_size)
    interpolation = PRESETS[preset][1]
    return T.Compose(
        [
            T.RandomResizedCrop(
                size, scale=(0.2, 1.0), ratio=_crop_ratio(size), interpolation=interpolation
            ),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
            T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(0.5),
            *_to_tensor(mean, std),
        ]
    )
