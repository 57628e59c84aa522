"""Image augmentation presets, SS views, MVS views: shapes, statistics, determinism."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from fixtures import person_image
from tbps.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    RandomDistinctOps,
    build_image_transforms,
    ss_view_transform,
)
from tbps.errors import ConfigError

SIZE = (64, 32)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_shapes_and_reproducibility(preset):
    image = person_image("red", "blue", height=100, width=40)
    train, evaluate = build_image_transforms(preset, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    a = train(image)
    torch.manual_seed(0)
    b = train(image)
    assert a.shape == (3, *SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert evaluate(image).shape == (3, *SIZE)
    assert torch.equal(evaluate(image), evaluate(image))
    if preset != "none":
        outputs = {train(image).sum().item() for _ in range(8)}
        assert len(outputs) > 1  # it does augment


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_train_and_eval_normalise_with_the_same_mean_std(preset):
    grey = Image.new("RGB", (32, 64), (128, 128, 128))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    _, evaluate = build_image_transforms(preset, SIZE, mean, std)
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)])
    assert torch.allclose(evaluate(grey)[:, 32, 16], expected, atol=1e-5)
    train, _ = build_image_transforms(preset, SIZE, mean, std)
    m, s = torch.tensor(mean), torch.tensor(std)
    for _ in range(30):
        v = train(grey)[:, 32, 16]
        pixel = v * s + m  # undo the normalisation the train transform must share with eval
        # the centre pixel of a flat grey image is untouched (up to 10% jitter) or erased: to 0
        # after normalising (irra) or to black before it (tbps_clip, siglip)
        assert (
            torch.allclose(pixel, torch.full((3,), 128 / 255), atol=0.06)
            or torch.allclose(v, torch.zeros(3), atol=1e-5)
            or torch.allclose(pixel, torch.zeros(3), atol=1e-5)
        ), (pixel, v)


def test_siglip_resizes_bicubic_in_train_and_eval():
    train, evaluate = build_image_transforms("siglip", SIZE)
    resizes = [t for t in [*train.transforms, *evaluate.transforms] if isinstance(t, T.Resize)]
    assert len(resizes) == 2 and {r.interpolation for r in resizes} == {InterpolationMode.BICUBIC}


def test_random_distinct_ops_picks_k_without_replacement():
    calls = []

    def op(i):
        def apply(x):
            calls.append(i)
            return x

        return apply

    chooser = RandomDistinctOps([op(i) for i in range(6)], k=2)
    torch.manual_seed(1)
    seen = set()
    for _ in range(200):
        calls.clear()
        chooser(0)
        assert len(calls) == 2 and calls[0] < calls[1]  # distinct, applied in listed order
        seen.add(tuple(calls))
    assert len(seen) == 15  # every pair of the 6 ops occurs
    with pytest.raises(ValueError):
        RandomDistinctOps([op(0)], k=2)


def test_ss_views_are_independent_and_sized():
    image = person_image("green", "yellow", height=120, width=48)
    view = ss_view_transform(SIZE, preset="irra")
    torch.manual_seed(0)
    a, b = view(image), view(image)
    assert a.shape == b.shape == (3, *SIZE) and not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(view(image), a)


def test_bad_preset_and_size():
    with pytest.raises(ConfigError, match="unknown augment.preset 'simclr'; valid: irra, none"):
        build_image_transforms("simclr", SIZE)
    with pytest.raises(ConfigError, match=r"image size must be \[height, width\]"):
        build_image_transforms("irra", [64])
