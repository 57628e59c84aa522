"""Every objective against a direct float64 transcription of its formula (docs/objectives.md), plus
invariances, gradient checks, known limits and degenerate batches."""

import math

import pytest
import torch

from tbps.losses import (
    citc,
    cmpm,
    id_loss,
    itc,
    mlm_loss,
    nitc,
    ritc,
    sdm,
    sigmoid_nitc,
    simclr,
    tal,
)

F64 = torch.float64


# -- direct transcriptions (loops over the formula's indices, float64) -----------------------
def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def softmax_row(v):
    return torch.exp(v - torch.logsumexp(v, 0))


def id_targets(pids, i):
    y = torch.tensor([float(pids[i] == pids[j]) for j in range(len(pids))], dtype=F64)
    return y / y.sum()


def reference_itc(f, g, s, w=None):
    S = s * unit(f) @ unit(g).T
    B = S.shape[0]
    w = torch.ones(B, dtype=F64) if w is None else w
    i2t = -sum(w[i] * (S[i, i] - torch.logsumexp(S[i], 0)) for i in range(B)) / B
    t2i = -sum(w[i] * (S[i, i] - torch.logsumexp(S[:, i], 0)) for i in range(B)) / B
    return (i2t + t2i) / 2


def reference_kl_rows(M, pids, eps, w=None):
    """mean_i w_i sum_j p_ij (log p_ij - log(q_ij + eps)), p = softmax_row(M)."""
    B = M.shape[0]
    w = torch.ones(B, dtype=F64) if w is None else w
    total = 0.0
    for i in range(B):
        p, q = softmax_row(M[i]), id_targets(pids, i)
        total += w[i] * sum(p[j] * (torch.log(p[j]) - torch.log(q[j] + eps)) for j in range(B))
    return total / B


def reference_sdm(f, g, pids, s, eps=1e-8, w=None):
    S = s * unit(f) @ unit(g).T
    return reference_kl_rows(S, pids, eps, w) + reference_kl_rows(S.T, pids, eps, w)


def reference_cmpm(f, g, pids, eps=1e-8, norm="l2"):
    """CMPM with q_ij = 1/sqrt(n_i) (l2, IRRA's code) or 1/n_i (l1, the paper) on i's identity."""
    B = f.shape[0]
    total = 0.0
    for M in (f @ unit(g).T, g @ unit(f).T):  # raw image against normalised text, and back
        for i in range(B):
            n = sum(int(pids[j] == pids[i]) for j in range(B))
            p = softmax_row(M[i])
            for j in range(B):
                q = (1 / math.sqrt(n) if norm == "l2" else 1 / n) if pids[j] == pids[i] else 0.0
                total += p[j] * (torch.log(p[j]) - math.log(q + eps)) / B
    return total


def reference_ritc(f, g, pids, s, eps=0.01):
    S = s * unit(f) @ unit(g).T
    return (reference_kl_rows(S, pids, eps) + reference_kl_rows(S.T, pids, eps)) / 2


def reference_ritc_sigmoid(f, g, pids, s, b, eps=0.01):
    S = s * unit(f) @ unit(g).T + b
    B = S.shape[0]
    total = 0.0
    for i in range(B):
        for j in range(B):
            y = float(pids[i] == pids[j])
            P = 1 / (1 + math.exp(-S[i, j].item()))
            Q = (1 - eps) * y + eps * (1 - y)
            total += P * math.log(P / Q) + (1 - P) * math.log((1 - P) / (1 - Q))
    return total / B


def reference_nitc(f, g, pids, s, alpha, f_bar=None, g_bar=None):
    f_bar = f if f_bar is None else f_bar
    g_bar = g if g_bar is None else g_bar
    S = s * unit(f) @ unit(g).T
    Sb = s * unit(f_bar) @ unit(g_bar).T
    B = S.shape[0]
    total = 0.0
    for M, Mb in ((S, Sb), (S.T, Sb.T)):
        row_sum = 0.0
        for i in range(B):
            T = alpha * softmax_row(Mb[i]) + (1 - alpha) * id_targets(pids, i)
            log_p = M[i] - torch.logsumexp(M[i], 0)
            row_sum += -sum(T[j] * log_p[j] for j in range(B))
        total += row_sum / B
    return total / 2


def reference_sigmoid(f, g, pids, s, b, alpha=0.0):
    S = s * unit(f) @ unit(g).T + b
    B = S.shape[0]
    total = 0.0
    for i in range(B):
        for j in range(B):
            y = float(pids[i] == pids[j])
            if alpha == 0:
                z = 1.0 if y else -1.0
                total += -math.log(1 / (1 + math.exp(-z * S[i, j].item())))
            else:
                sig = 1 / (1 + math.exp(-S[i, j].item()))
                T = alpha * sig + (1 - alpha) * y
                total += -(T * math.log(sig) + (1 - T) * math.log(1 - sig))
    return total / B


def reference_citc(f, g, lam_in=0.25, lam_inter=0.25):
    f, g = unit(f), unit(g)
    B = f.shape[0]
    inmodal = sum((f[i] @ f[j] - g[i] @ g[j]) ** 2 for i in range(B) for j in range(B)) / B**2
    inter = sum((f[i] @ g[j] - g[i] @ f[j]) ** 2 for i in range(B) for j in range(B)) / B**2
    return lam_in * inmodal + lam_inter * inter


def reference_simclr(z1, z2, tau=0.1):
    z = unit(torch.cat([z1, z2]))
    n, B = z.shape[0], z1.shape[0]
    total = 0.0
    for k in range(n):
        pos = (k + B) % n
        others = [z[k] @ z[j] / tau for j in range(n) if j != k]
        total += -(z[k] @ z[pos] / tau - torch.logsumexp(torch.stack(others), 0))
    return total / n


def reference_tal_rows(S, pids, margin, tau):
    B = S.shape[0]
    out = []
    for i in range(B):
        pos = [j for j in range(B) if pids[i] == pids[j]]
        neg = [j for j in range(B) if pids[i] != pids[j]]
        if not neg:
            out.append(torch.zeros((), dtype=F64))
            continue
        a = torch.softmax(torch.stack([S[i, j].detach() / tau for j in pos]), 0)
        s_pos = sum(a[k] * S[i, j] for k, j in enumerate(pos))
        lse = torch.logsumexp(torch.stack([S[i, j] / tau for j in neg]), 0)
        out.append(torch.clamp(margin - s_pos + tau * lse, min=0))
    return out


def reference_tal(f, g, pids, margin=0.1, tau=0.015):
    S = unit(f) @ unit(g).T
    rows_i2t = reference_tal_rows(S, pids, margin, tau)
    rows_t2i = reference_tal_rows(S.T, pids, margin, tau)
    return sum(a + b for a, b in zip(rows_i2t, rows_t2i)) / S.shape[0]


def reference_ce(logits, labels):
    return -sum(logits[i, labels[i]] - torch.logsumexp(logits[i], 0) for i in range(len(labels)))


# -- inputs -----------------------------------------------------------------------------------
def batch(seed, B=8, D=6, num_ids=3):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, generator=g, dtype=F64) * 3
    t = torch.randn(B, D, generator=g, dtype=F64)
    pids = torch.randint(0, num_ids, (B,), generator=g)
    return f, t, pids


def contrastive_cases(pids, s=10.0, b=-2.0):
    """name -> (our function of (f, g, pids), reference of the same)."""
    return {
        "itc": (lambda f, g, p: itc(f, g, s), lambda f, g, p: reference_itc(f, g, s)),
        "sdm": (lambda f, g, p: sdm(f, g, p, s), lambda f, g, p: reference_sdm(f, g, p, s)),
        "cmpm": (lambda f, g, p: cmpm(f, g, p), reference_cmpm),
        "nitc": (
            lambda f, g, p: nitc(f, g, p, s, alpha=0.4),
            lambda f, g, p: reference_nitc(f, g, p, s, 0.4),
        ),
        "sigmoid_nitc": (
            lambda f, g, p: sigmoid_nitc(f, g, p, s, b),
            lambda f, g, p: reference_sigmoid(f, g, p, s, b),
        ),
        "sigmoid_nitc_soft": (
            lambda f, g, p: sigmoid_nitc(f, g, p, s, b, alpha=0.3),
            lambda f, g, p: reference_sigmoid(f, g, p, s, b, 0.3),
        ),
        "ritc": (lambda f, g, p: ritc(f, g, p, s), lambda f, g, p: reference_ritc(f, g, p, s)),
        "ritc_sigmoid": (
            lambda f, g, p: ritc(f, g, p, s, logit_bias=b),
            lambda f, g, p: reference_ritc_sigmoid(f, g, p, s, b),
        ),
        "citc": (lambda f, g, p: citc(f, g, s), lambda f, g, p: reference_citc(f, g)),
        "tal": (lambda f, g, p: tal(f, g, p), reference_tal),
    }


CASES = list(contrastive_cases(torch.zeros(1)))
SCALE_FREE = [c for c in CASES if c != "cmpm"]  # CMPM uses the raw embedding's norm


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_contrastive_match_float64_transcriptions(name, seed):
    f, t, pids = batch(seed)
    ours, reference = contrastive_cases(pids)[name]
    expected = float(reference(f, t, pids))
    assert ours(f, t, pids).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_nitc_soft_targets_from_given_target_embeddings():
    f, t, pids = batch(4)
    fb, tb, _ = batch(5)
    ours = nitc(f, t, pids, 20.0, alpha=0.7, image_feats_target=fb, text_feats_target=tb)
    assert ours.item() == pytest.approx(reference_nitc(f, t, pids, 20.0, 0.7, fb, tb).item())
    # alpha = 0 with distinct pids is plain ITC
    distinct = torch.arange(8)
    assert nitc(f, t, distinct, 20.0).item() == pytest.approx(itc(f, t, 20.0).item(), rel=1e-12)


def test_simclr_id_and_mlm_match_transcriptions():
    z1, z2, _ = batch(6, B=5, D=4)
    assert simclr(z1, z2, 0.1).item() == pytest.approx(reference_simclr(z1, z2).item(), rel=1e-10)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, 5, generator=g, dtype=F64)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = 0.5 * (reference_ce(a, labels) + reference_ce(b, labels)) / 6
    assert id_loss(a, b, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    logits = torch.randn(2, 4, 7, generator=g, dtype=F64)
    mlm_labels = torch.full((2, 4), -100)
    mlm_labels[0, 1], mlm_labels[1, 3], mlm_labels[1, 0] = 5, 0, 6
    flat, flat_labels = logits.reshape(8, 7), mlm_labels.reshape(8)
    keep = flat_labels != -100
    expected = reference_ce(flat[keep], flat_labels[keep]) / 3
    assert mlm_loss(logits, mlm_labels).item() == pytest.approx(expected.item(), rel=1e-12)
    assert mlm_loss(flat[keep], flat_labels[keep]).item() == pytest.approx(expected.item())


def test_per_sample_weights():
    f, t, pids = batch(7)
    w = torch.tensor([1.0, 1.6, 1.0, 1.0, 1.6, 1.0, 1.0, 1.0], dtype=F64)
    assert sdm(f, t, pids, 10.0, weights=w).item() == pytest.approx(
        reference_sdm(f, t, pids, 10.0, w=w).item(), rel=1e-9
    )
    assert itc(f, t, 10.0, weights=w).item() == pytest.approx(
        reference_itc(f, t, 10.0, w=w).item(), rel=1e-10
    )
    ones = torch.ones(8, dtype=F64)
    for fn in (
        lambda w: nitc(f, t, pids, 10.0, alpha=0.5, weights=w),
        lambda w: tal(f, t, pids, weights=w),
        lambda w: sigmoid_nitc(f, t, pids, 10.0, -3.0, weights=w),
        lambda w: cmpm(f, t, pids, weights=w),
        lambda w: ritc(f, t, pids, 10.0, weights=w),
        lambda w: id_loss(f, t, pids, weights=w),
    ):
        assert fn(ones).item() == pytest.approx(fn(None).item(), rel=1e-12)
        assert fn(2 * ones).item() == pytest.approx(2 * fn(None).item(), rel=1e-12)
    with pytest.raises(ValueError, match="per-sample weights have shape"):
        sdm(f, t, pids, 10.0, weights=torch.ones(3))


def test_invariant_to_feature_scale_and_batch_permutation():
    f, t, pids = batch(0)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    cases = contrastive_cases(pids, s=20.0)
    for name, (loss, _) in cases.items():
        base = loss(f, t, pids).item()
        if name in SCALE_FREE:
            assert loss(5 * f, 0.1 * t, pids).item() == pytest.approx(base, rel=1e-10), name
        assert loss(f[perm], t[perm], pids[perm]).item() == pytest.approx(base, rel=1e-10), name
    # CMPM: invariant to the norm of the side it normalises only
    assert cmpm(f, t, pids).item() != pytest.approx(cmpm(3 * f, t, pids).item())
    z1, z2, _ = batch(2, B=8)
    base = simclr(z1, z2).item()
    assert simclr(4 * z1, 0.5 * z2).item() == pytest.approx(base, rel=1e-10)
    assert simclr(z1[perm], z2[perm]).item() == pytest.approx(base, rel=1e-10)


def test_gradients():
    f, t, pids = batch(5, B=5, D=4)
    distinct = torch.arange(5)
    f.requires_grad_(True)
    t.requires_grad_(True)
    fb, tb = (x.detach() + 0.3 for x in (f, t))
    checks = {
        "itc": lambda a, b: itc(a, b, 7.0),
        "sdm": lambda a, b: sdm(a, b, pids, 7.0),
        "cmpm": lambda a, b: cmpm(a, b, pids),
        # soft targets from fixed target embeddings: the loss is smooth in (a, b)
        "nitc": lambda a, b: nitc(a, b, pids, 7.0, 0.5, fb, tb),
        "sigmoid_nitc": lambda a, b: sigmoid_nitc(a, b, pids, 7.0, -1.0),
        "sigmoid_soft": lambda a, b: sigmoid_nitc(a, b, pids, 7.0, -1.0, 0.5, fb, tb),
        "ritc": lambda a, b: ritc(a, b, pids, 7.0),
        "ritc_sigmoid": lambda a, b: ritc(a, b, pids, 7.0, logit_bias=-1.0),
        "citc": lambda a, b: citc(a, b, 7.0),
        # one positive per row: the detached positive weights are constant
        "tal": lambda a, b: tal(a, b, distinct, margin=0.5, tau=0.5),
        "simclr": lambda a, b: simclr(a, b, 0.5),
        "id": lambda a, b: id_loss(a, b, torch.tensor([0, 3, 1, 1, 2])),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (f, t)), name


def test_detached_weights_are_not_differentiated():
    """TAL's positive weights and N-ITC's soft targets are constants for the gradient."""
    f, t, pids = batch(8, B=6, D=4, num_ids=2)
    for fn, reference in (
        (lambda a, b: tal(a, b, pids, 0.5, 0.1), lambda a, b: reference_tal(a, b, pids, 0.5, 0.1)),
        (
            lambda a, b: nitc(a, b, pids, 5.0, 0.6),
            lambda a, b: reference_nitc(a, b, pids, 5.0, 0.6, a.detach(), b.detach()),
        ),
    ):
        a, b = f.clone().requires_grad_(True), t.clone().requires_grad_(True)
        ours = torch.autograd.grad(fn(a, b), (a, b))
        theirs = torch.autograd.grad(reference(a, b), (a, b))
        for x, y in zip(ours, theirs):
            assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def test_aligned_features_give_minimal_loss():
    B = 6
    eye = torch.eye(B, dtype=F64)
    pids = torch.arange(B)
    assert itc(eye, eye, 100.0).item() < 1e-10
    assert sdm(eye, eye, pids, 100.0).item() < 1e-10
    assert nitc(eye, eye, pids, 100.0, alpha=0.5).item() < 1e-10
    assert cmpm(100 * eye, 100 * eye, pids).item() < 1e-10
    assert sigmoid_nitc(eye, eye, pids, 100.0, -50.0).item() < 1e-10
    assert citc(eye, eye, 10.0).item() == 0.0
    assert tal(eye, eye, pids).item() == 0.0
    assert simclr(eye, eye, 0.01).item() < 1e-10
    # R-ITC's minimum over P of KL(P || q + eps) is -log(1 + B eps); aligned P is within eps
    aligned = ritc(eye, eye, pids, 100.0).item()
    assert -math.log(1 + B * 0.01) <= aligned <= -math.log(1.01) + 1e-9
    f, t, _ = batch(3, B=B)
    for name, (loss, _) in contrastive_cases(pids, s=100.0, b=-50.0).items():
        aligned_f = 100 * eye if name == "cmpm" else eye
        assert loss(aligned_f, aligned_f, pids) < loss(f, t, pids), name


@pytest.mark.parametrize("kind", ["distinct", "equal"])
def test_degenerate_pids_are_finite_with_finite_gradients(kind):
    f, t, _ = batch(2)
    pids = torch.arange(8) if kind == "distinct" else torch.zeros(8, dtype=torch.long)
    s = torch.tensor(50.0, dtype=F64)
    for name, (loss, _) in contrastive_cases(pids, s=s, b=torch.tensor(-5.0, dtype=F64)).items():
        a, b = f.clone().requires_grad_(True), t.clone().requires_grad_(True)
        value = loss(a, b, pids)
        value.backward()
        assert math.isfinite(value.item()), name
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), name
    if kind == "equal":
        # uniform targets: SDM is KL(p || uniform), ~0 for identical rows; TAL has no negative
        same = torch.ones(4, 3, dtype=F64)
        zeros = torch.zeros(4, dtype=torch.long)
        assert sdm(same, same, zeros, 10.0).item() == pytest.approx(0, abs=1e-6)
        assert tal(f, t, pids).item() == 0.0


def test_mlm_without_masked_positions_is_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="MLM logits cover"):
        mlm_loss(torch.randn(4, 5), torch.zeros(3, dtype=torch.long))


def test_half_precision_inputs_compute_in_float32():
    f, t, pids = batch(1)
    full = sdm(f.float(), t.float(), pids, 10.0)
    half = sdm(f.bfloat16(), t.bfloat16(), pids, 10.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_public_signatures():
    """External tools call these by position and keyword: the leading parameters are fixed."""
    import inspect

    expected = {
        itc: ["image_feats", "text_feats", "logit_scale"],
        sdm: ["image_feats", "text_feats", "pids", "logit_scale", "epsilon"],
        cmpm: ["image_feats", "text_feats", "pids", "epsilon"],  # then weights, target_norm
        id_loss: ["image_logits", "text_logits", "pids"],
        nitc: [
            "image_feats",
            "text_feats",
            "pids",
            "logit_scale",
            "alpha",
            "image_feats_target",
            "text_feats_target",
        ],
        sigmoid_nitc: ["image_feats", "text_feats", "pids", "logit_scale", "logit_bias"],
        ritc: ["image_feats", "text_feats", "pids", "logit_scale", "eps"],
        citc: ["image_feats", "text_feats", "logit_scale", "inmodal_weight", "intermodal_weight"],
        simclr: ["z1", "z2", "temperature"],
        tal: ["image_feats", "text_feats", "pids", "margin", "tau"],
        mlm_loss: ["logits", "labels"],
    }
    defaults = {"epsilon": 1e-8, "alpha": 0.0, "eps": 0.01, "temperature": 0.1, "margin": 0.1}
    defaults |= {"tau": 0.015, "inmodal_weight": 0.25, "intermodal_weight": 0.25}
    for fn, names in expected.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[: len(names)]] == names, fn.__name__
        for p in params[: len(names)]:
            if p.name in defaults:
                assert p.default == defaults[p.name], (fn.__name__, p.name)
        assert all(p.default is not inspect.Parameter.empty for p in params[len(names) :])


def test_cmpm_target_norm_l2_as_irra_code_l1_as_the_paper():
    torch.manual_seed(3)
    f, g = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    pids = torch.tensor([1, 1, 1, 2, 3, 3])  # identities with 3, 1 and 2 items
    for norm in ("l2", "l1"):
        got = cmpm(f, g, pids, target_norm=norm)
        assert got.item() == pytest.approx(float(reference_cmpm(f, g, pids, norm=norm)), rel=1e-9)
    assert cmpm(f, g, pids).item() == cmpm(f, g, pids, target_norm="l2").item()  # the default
    assert cmpm(f, g, pids, target_norm="l1").item() != pytest.approx(cmpm(f, g, pids).item())
    distinct = torch.arange(6)
    assert cmpm(f, g, distinct, target_norm="l1").item() == pytest.approx(
        cmpm(f, g, distinct, target_norm="l2").item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="target_norm='l3'; valid: l2, l1"):
        cmpm(f, g, pids, target_norm="l3")
