"""Every objective under CPU bf16 autocast: float32 logits and targets, as without autocast."""

from dataclasses import fields, replace

import pytest
import torch

from objective_fixtures import siglip_spec, training_batch
from tbps.losses import OBJECTIVES, LossInputs, compute_losses, resolve_objectives, ritc
from tbps.training.heads import IdentityClassifier
from tbps.training.module import TBPSLightningModule
from tbps.training.step import step_inputs

PIDS = [0, 0, 1, 2, 2, 3, 3, 3]
BF16 = torch.bfloat16
# Both runs see the same bf16-representable float32 values and, with the losses in float32,
# run the same float32 kernels: they agree to float32 rounding (~1e-7). A matmul left to
# autocast rounds each logit to bf16's 8 significant bits (rel 2^-9 ~ 2e-3, times the logit
# scale): the loss moves by >= 1e-4 relative, so 1e-5 separates the two by a wide margin.
RTOL, ATOL = 1e-5, 1e-6

#: parameter sets that reach every branch (objectives not listed: their defaults)
VARIANTS: dict[str, list[dict]] = {
    "nitc": [{"softlabel_ratio": 0.0}, {"softlabel_ratio": 0.5}],
    "sigmoid_nitc": [{"softlabel_ratio": 0.0}, {"softlabel_ratio": 0.5}],
    "ritc": [
        {"form": "softmax"},
        {"form": "sigmoid", "eps": 0.01},
        {"form": "sigmoid", "eps": 1e-3},
    ],
    "cmpm": [{"target_norm": "l2"}, {"target_norm": "l1"}],
}
CASES = [
    pytest.param(name, params, id=f"{name}-{params}" if params else name)
    for name in OBJECTIVES
    for params in VARIANTS.get(name, [{}])
]


def _all_objectives() -> dict:
    """Every registered objective, with the MVS view and TSE on where it has them."""
    return {
        name: {key: True for key in ("mvs", "tse") if key in spec.params}
        for name, spec in OBJECTIVES.items()
    }


@pytest.fixture(scope="module")
def module() -> TBPSLightningModule:
    torch.manual_seed(0)
    return TBPSLightningModule(siglip_spec(), _all_objectives(), num_classes=4)


def _float_fields(x: LossInputs) -> list[str]:
    return [f.name for f in fields(x) if isinstance(getattr(x, f.name), torch.Tensor)]


@pytest.fixture(scope="module")
def inputs(module) -> LossInputs:
    """LossInputs of the tiny SigLIP with every head, rounded to bf16 (values exact in both)."""
    with torch.no_grad():
        x, _ = step_inputs(module.model, module.heads, module.objectives, training_batch(PIDS))
    g = torch.Generator().manual_seed(1)
    x.weights = 0.5 + torch.rand(len(PIDS), generator=g)  # boosting weights
    rounded = {
        name: getattr(x, name).to(BF16).float()
        for name in _float_fields(x)
        if getattr(x, name).is_floating_point()
    }
    return replace(x, **rounded)


def _run(objectives: dict, x: LossInputs, autocast: bool, dtype: torch.dtype = torch.float32):
    """Total loss and the gradients of every floating input (None where unused)."""
    leaves = {
        name: getattr(x, name).detach().to(dtype, copy=True).requires_grad_()
        for name in _float_fields(x)
        if getattr(x, name).is_floating_point() and name != "weights"
    }
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        total = compute_losses(objectives, replace(x, **leaves))["total"]
    total.backward()
    return total, {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize(("name", "params"), CASES)
def test_every_objective_is_float32_under_autocast(inputs, name, params):
    objectives = resolve_objectives({name: {**_all_objectives()[name], **params}})
    reference, ref_grads = _run(objectives, inputs, autocast=False)
    total, grads = _run(objectives, inputs, autocast=True)
    assert torch.isfinite(reference) and torch.isfinite(total)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, reference, rtol=RTOL, atol=ATOL)
    assert {k for k, v in grads.items() if v is not None} == {
        k for k, v in ref_grads.items() if v is not None
    }
    for key, grad in grads.items():
        if grad is not None:
            torch.testing.assert_close(grad, ref_grads[key], rtol=RTOL, atol=ATOL, msg=key)
    # bf16 tensors, as the towers return them under autocast: the same values, the same loss
    half, _ = _run(objectives, inputs, autocast=True, dtype=BF16)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("eps", [0.01, 1e-3, 1e-4])
def test_sigmoid_ritc_targets_are_exact_under_autocast(inputs, eps):
    """Q = (1 - eps) y + eps (1 - y) in float32: bf16 makes 0.99 0.98828 and 0.999 1 (log 0)."""
    f, g, pids = inputs.image_feats, inputs.text_feats, inputs.pids
    scale, bias = inputs.logit_scale, inputs.logit_bias
    full = ritc(f, g, pids, scale, eps, logit_bias=bias)
    exact = ritc(f.double(), g.double(), pids, scale.double(), eps, logit_bias=bias.double())
    with torch.autocast("cpu", dtype=BF16):  # a direct call: the function runs in float32 itself
        got = ritc(f.to(BF16), g.to(BF16), pids, scale, eps, logit_bias=bias)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, full, rtol=RTOL, atol=ATOL)
    assert got.item() == pytest.approx(exact.item(), rel=1e-4)  # float32 vs float64 math


def test_heads_under_autocast(module):
    """The ID classifier's logits are float32; the MLM head still runs in bf16; the step trains."""
    torch.manual_seed(0)
    head = IdentityClassifier(32, 5)
    feats = torch.randn(6, 32).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        logits = head(feats)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(feats.float()), rtol=RTOL, atol=ATOL)
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=BF16):
        x, _ = step_inputs(module.model, module.heads, module.objectives, training_batch(PIDS))
        terms = compute_losses(module.objectives, x)
    assert x.mlm_logits.dtype == BF16  # the MLM transformer keeps autocast
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    terms["total"].backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
