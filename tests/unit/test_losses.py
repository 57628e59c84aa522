"""ITC and SDM against direct float64 transcriptions of their formulas, plus properties."""

import math

import pytest
import torch

from tbps.errors import ConfigError
from tbps.losses import LossInputs, compute_losses, itc, objective_weights, sdm


def reference_itc(f, g, s):
    f = f / f.norm(dim=1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True)
    S = s * f @ g.T
    B = S.shape[0]
    i2t = -sum(S[i, i] - torch.logsumexp(S[i], 0) for i in range(B)) / B
    t2i = -sum(S[i, i] - torch.logsumexp(S[:, i], 0) for i in range(B)) / B
    return (i2t + t2i) / 2


def reference_sdm(f, g, pids, s, eps=1e-8):
    f = f / f.norm(dim=1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True)
    S = s * f @ g.T
    B = S.shape[0]
    total = 0.0
    for M in (S, S.T):
        row_loss = 0.0
        for i in range(B):
            p = torch.exp(M[i] - torch.logsumexp(M[i], 0))
            y = torch.tensor([float(pids[i] == pids[j]) for j in range(B)], dtype=torch.float64)
            q = y / y.sum()
            row_loss += sum(p[j] * (torch.log(p[j]) - torch.log(q[j] + eps)) for j in range(B))
        total += row_loss / B
    return total


def batch(seed, B=8, D=6, num_ids=3):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    t = torch.randn(B, D, generator=g, dtype=torch.float64)
    pids = torch.randint(0, num_ids, (B,), generator=g)
    return f, t, pids


@pytest.mark.parametrize("seed", range(4))
def test_match_float64_transcriptions(seed):
    f, t, pids = batch(seed)
    assert itc(f, t, 10.0).item() == pytest.approx(reference_itc(f, t, 10.0).item(), rel=1e-10)
    assert sdm(f, t, pids, 10.0).item() == pytest.approx(
        reference_sdm(f, t, pids, 10.0).item(), rel=1e-9
    )


def test_invariant_to_feature_scale_and_batch_permutation():
    f, t, pids = batch(0)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    for loss in (lambda a, b, p: itc(a, b, 20.0), lambda a, b, p: sdm(a, b, p, 20.0)):
        base = loss(f, t, pids)
        assert loss(5 * f, 0.1 * t, pids).item() == pytest.approx(base.item(), rel=1e-10)
        assert loss(f[perm], t[perm], pids[perm]).item() == pytest.approx(base.item(), rel=1e-10)


def test_aligned_features_give_minimal_loss():
    eye = torch.eye(6, dtype=torch.float64)
    pids = torch.arange(6)
    assert itc(eye, eye, 100.0).item() < 1e-10
    assert sdm(eye, eye, pids, 100.0).item() < 1e-10
    f, t, _ = batch(3, B=6)
    assert itc(f, t, 100.0) > 1.0 and sdm(f, t, pids, 100.0) > 1.0


def test_logit_scale_as_tensor_and_degenerate_pids_are_finite():
    f, t, _ = batch(2)
    s = torch.tensor(50.0, dtype=torch.float64)
    for pids in (torch.arange(8), torch.zeros(8, dtype=torch.long)):
        assert math.isfinite(sdm(f, t, pids, s).item())
    assert math.isfinite(itc(f, t, s).item())
    # all pids equal: targets are uniform and SDM is KL(p || uniform), ~0 for identical rows
    same = torch.ones(4, 3, dtype=torch.float64)
    assert sdm(same, same, torch.zeros(4, dtype=torch.long), 10.0).item() == pytest.approx(
        0, abs=1e-6
    )


def test_gradients():
    f, t, pids = batch(5, B=5, D=4)
    f.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: itc(a, b, 7.0), (f, t))
    assert torch.autograd.gradcheck(lambda a, b: sdm(a, b, pids, 7.0), (f, t))


def test_composition_weights_and_validation():
    f, t, pids = batch(1)
    inputs = LossInputs(f, t, pids, torch.tensor(10.0, dtype=torch.float64))
    weights = objective_weights(
        {"itc": {"enabled": True, "weight": 0.5}, "sdm": {"enabled": False}}
    )
    assert weights == {"itc": 0.5}
    terms = compute_losses({"itc": 0.5, "sdm": 2.0}, inputs)
    assert terms["itc"].item() == pytest.approx(0.5 * itc(f, t, 10.0).item())
    assert terms["total"].item() == pytest.approx(terms["itc"].item() + terms["sdm"].item())
    with pytest.raises(ConfigError, match="unknown objective objectives.itx; valid: itc, sdm"):
        objective_weights({"itx": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="no objective enabled"):
        objective_weights({"itc": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"objectives.sdm: unknown key\(s\) \['wieght'\]"):
        objective_weights({"sdm": {"wieght": 1.0}})
