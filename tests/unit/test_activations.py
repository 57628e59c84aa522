"""QuickGELU as a fused SiLU computes CLIP's x * sigmoid(1.702 x)."""

import copy

import pytest
import torch
from transformers.activations import QuickGELUActivation

from tbps.model.activations import QuickGELU, use_fused_quick_gelu
from tbps.model.backbone import build_clip
from tbps.model.tbps import TBPSModel
from tbps.training.heads import MLMHead
from tiny_backbones import tiny_clip_config


def textbook(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def test_values_and_gradients_match_the_textbook_form():
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(QuickGELU()(x), textbook(x), rtol=1e-14, atol=1e-15)
    (grad,) = torch.autograd.grad(QuickGELU()(x).sum(), x)
    (want,) = torch.autograd.grad(textbook(x).sum(), x)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(QuickGELU(), (x[::50].detach().clone().requires_grad_(),))
    x32 = torch.randn(4096) * 4
    torch.testing.assert_close(QuickGELU()(x32), textbook(x32), rtol=2e-6, atol=1e-6)


def tiny_clip(hidden_act: str = "quick_gelu") -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_clip_config(text_length=12, vocab=50, special_ids=(1, 3, 0))
    for tower in (config.text_config, config.vision_config):
        tower.hidden_act = hidden_act
    return build_clip(config, (48, 32)).eval()


def test_every_quick_gelu_of_a_clip_is_replaced_and_the_outputs_stay():
    model = tiny_clip()
    before = copy.deepcopy(model)
    assert use_fused_quick_gelu(model) == 2 + 2  # one per layer of both towers
    assert not any(isinstance(m, QuickGELUActivation) for m in model.modules())
    ids = torch.randint(4, 40, (3, 12))
    ids[:, -1] = 3
    images = torch.randn(3, 3, 48, 32)
    with torch.no_grad():
        for new, old in (
            (model.get_text_features(input_ids=ids), before.get_text_features(input_ids=ids)),
            (model.get_image_features(pixel_values=images), before.get_image_features(images)),
        ):
            new, old = (getattr(t, "pooler_output", t) for t in (new, old))
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)


def test_other_activations_are_left_alone():
    model = tiny_clip("gelu")
    kinds = [type(m) for m in model.modules()]
    assert use_fused_quick_gelu(model) == 0
    assert [type(m) for m in model.modules()] == kinds


def test_tbps_models_and_the_mlm_head_use_it():
    model = TBPSModel(tiny_clip(), image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    activations = [m for m in model.modules() if isinstance(m, (QuickGELU, QuickGELUActivation))]
    assert len(activations) == 4 and all(isinstance(m, QuickGELU) for m in activations)
    assert any(isinstance(m, QuickGELU) for m in MLMHead(32, 32, 64, 50, layers=1).modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_stay_in_their_dtype(dtype):
    x = torch.randn(64, dtype=dtype)
    out = QuickGELU()(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), textbook(x.float()), rtol=2e-2, atol=2e-2)
