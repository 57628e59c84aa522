"""Cross-rank gathering: two gloo ranks on CPU give the gradient of the global-batch loss."""

import pytest
import torch
import torch.distributed as dist

from ranks import run_gloo_ranks
from tbps.losses import LossInputs, compute_losses, resolve_objectives
from tbps.training.distributed import gather_batch, gather_with_grad, world_size

OBJECTIVES = resolve_objectives(
    {
        "itc": {"weight": 1.0},
        "sdm": {"weight": 0.5},
        "nitc": {"softlabel_ratio": 0.4},
        "tal": {"weight": 0.3},
        "citc": {"weight": 0.1},
        "cmpm": {"weight": 0.2},
        "id": {"weight": 0.7},
    }
)


def problem(seed=0, B=6, D=5):
    g = torch.Generator().manual_seed(seed)
    return {
        "x_img": torch.randn(B, 7, generator=g, dtype=torch.float64),
        "x_txt": torch.randn(B, 7, generator=g, dtype=torch.float64),
        "pids": torch.tensor([0, 1, 1, 2, 0, 3]),
        "weights": torch.tensor([1.0, 1.6, 1.0, 1.0, 1.6, 1.0], dtype=torch.float64),
        "w_img": torch.randn(7, D, generator=g, dtype=torch.float64),
        "w_txt": torch.randn(7, D, generator=g, dtype=torch.float64),
        "w_cls": torch.randn(D, 4, generator=g, dtype=torch.float64),
    }


def step(p, rows, gathered: bool):
    """Loss of a tiny 'model' (linear towers + classifier) on the given rows; returns grads."""
    params = {k: p[k].clone().requires_grad_(True) for k in ("w_img", "w_txt", "w_cls")}
    f = p["x_img"][rows] @ params["w_img"]
    g = p["x_txt"][rows] @ params["w_txt"]
    inputs = LossInputs(
        f,
        g,
        p["pids"][rows],
        torch.tensor(10.0, dtype=torch.float64),
        weights=p["weights"][rows],
        image_logits=f @ params["w_cls"],
        text_logits=g @ params["w_cls"],
    )
    global_inputs = inputs.gathered(gather_batch) if gathered else None
    total = compute_losses(OBJECTIVES, inputs, global_inputs)["total"]
    total.backward()
    return total.detach(), {k: v.grad for k, v in params.items()}


def _rank_main(rank):
    p = problem()
    rows = torch.arange(3) + 3 * rank
    total, grads = step(p, rows, gathered=True)
    for grad in grads.values():  # what DDP does with parameter gradients
        dist.all_reduce(grad)
        grad /= 2
    x = torch.arange(2.0, dtype=torch.float64).reshape(2, 1) + 10 * rank
    x.requires_grad_(True)
    together = gather_with_grad(x)
    (together * torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)).sum().backward()
    grads = {k: v.tolist() for k, v in grads.items()}
    return total.item(), grads, together.tolist(), x.grad.tolist()


def test_two_ranks_match_the_global_batch(tmp_path):
    results = run_gloo_ranks(_rank_main, tmp_path / "store")

    # per-sample objectives (ID) average over ranks like DDP; batch-level ones see all 6 rows
    p = problem()
    batch_level = {k: v for k, v in OBJECTIVES.items() if k != "id"}
    batch_total, id_terms, full_grads = _reference(p, batch_level)
    for rank in range(2):
        total, grads, together, x_grad = results[rank]
        expected_total = batch_total + id_terms[rank]
        assert total == pytest.approx(expected_total.item(), rel=1e-10)
        for name, grad in grads.items():
            grad = torch.tensor(grad, dtype=torch.float64)
            assert torch.allclose(grad, full_grads[name], rtol=1e-9, atol=1e-12), name
        assert together == [[0.0], [1.0], [10.0], [11.0]]
        x_grad = torch.tensor(x_grad, dtype=torch.float64)
        # each rank's copy of the loss sends gradient to every slice; the local rows get the sum
        expected = torch.tensor([[1.0], [2.0]]) if rank == 0 else torch.tensor([[3.0], [4.0]])
        assert torch.equal(x_grad, 2 * expected.double())


def _reference(p, batch_level):
    """Single process: batch-level objectives on all rows + mean over ranks of the local ID."""
    params = {k: p[k].clone().requires_grad_(True) for k in ("w_img", "w_txt", "w_cls")}
    f = p["x_img"] @ params["w_img"]
    g = p["x_txt"] @ params["w_txt"]
    scale = torch.tensor(10.0, dtype=torch.float64)
    inputs = LossInputs(f, g, p["pids"], scale, weights=p["weights"])
    total = compute_losses(batch_level, inputs)["total"]
    id_terms = []
    for rows in (torch.arange(3), torch.arange(3) + 3):
        local = LossInputs(
            f[rows],
            g[rows],
            p["pids"][rows],
            scale,
            weights=p["weights"][rows],
            image_logits=f[rows] @ params["w_cls"],
            text_logits=g[rows] @ params["w_cls"],
        )
        id_terms.append(compute_losses({"id": OBJECTIVES["id"]}, local)["total"])
    # DDP's average over ranks of (global batch-level loss + the rank's own ID term)
    (total + sum(id_terms) / 2).backward()
    return total.detach(), [t.detach() for t in id_terms], {k: v.grad for k, v in params.items()}


def test_single_process_passes_through():
    x = torch.randn(3, 2, requires_grad=True)
    assert world_size() == 1
    assert gather_with_grad(x) is x
    assert gather_batch({"a": x, "b": None}) == {"a": x, "b": None}
