"""Cross-rank gathering: two gloo ranks on CPU give the gradient of the global-batch loss."""

from types import SimpleNamespace

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


# -- the size exchange of the training gather ---------------------------------------------------
def _count_size_exchanges(monkeypatch_target):
    """Wrap distributed._gather_sizes (in this forked rank) to count its calls."""
    calls = []
    original = monkeypatch_target._gather_sizes

    def counting(rows, device):
        calls.append(rows)
        return original(rows, device)

    monkeypatch_target._gather_sizes = counting
    return calls


def _gatherer_main(rank):
    import tbps.training.distributed as distributed

    calls = _count_size_exchanges(distributed)
    gatherer = distributed.BatchGatherer(equal_sizes=True)
    out = []
    for step in range(3):
        x = torch.full((2, 3), float(10 * step + rank))
        got = gatherer({"x": x, "none": None})
        assert got["none"] is None
        out.append(got["x"][:, 0].tolist())
    exchanged = len(calls)
    always = distributed.BatchGatherer(equal_sizes=False)
    always({"x": torch.zeros(2, 1)})
    always({"x": torch.zeros(2, 1)})
    exchanged_always = len(calls) - exchanged
    unequal = distributed.BatchGatherer(equal_sizes=True)
    try:
        unequal({"x": torch.zeros(2 + rank, 1)})
        error = None
    except ValueError as e:
        error = str(e)
    return out, exchanged, exchanged_always, error


def test_equal_batch_sizes_are_exchanged_once_then_assumed(tmp_path):
    results = run_gloo_ranks(_gatherer_main, tmp_path / "store")
    for rank in range(2):
        out, exchanged, exchanged_always, error = results[rank]
        assert out == [[0.0, 0.0, 1.0, 1.0], [10.0, 10.0, 11.0, 11.0], [20.0, 20.0, 21.0, 21.0]]
        assert exchanged == 1  # the first step only
        assert exchanged_always == 2  # without the flag: every call
        assert "different sizes [2, 3]" in error  # the first step's check, on every rank


# -- training logs under DDP: no per-step all-reduce ----------------------------------------
class _Recorded(dict):
    """Stands in for LightningModule.log: name -> (value, keyword arguments)."""

    def __call__(self, name, value, **kwargs):
        self[name] = (float(torch.as_tensor(value).detach()), kwargs)


def _training_log_main(rank):
    from torch.utils.data import DataLoader

    import tbps.training.distributed as distributed
    from objective_fixtures import clip_spec, training_batch
    from tbps.training.module import TBPSLightningModule

    calls = _count_size_exchanges(distributed)
    torch.manual_seed(0)
    m = TBPSLightningModule(clip_spec(), {"itc": {}, "id": {}}, num_classes=4)
    m._trainer = SimpleNamespace(
        train_dataloader=DataLoader(range(6), batch_size=3, drop_last=True), world_size=2
    )
    m.log = _Recorded()
    for step in range(2):
        batch = training_batch([0, 1, 2] if rank == 0 else [2, 3, 3], seed=10 * step + rank)
        m.training_step(batch, step)
    return {k: (v, kw) for k, (v, kw) in m.log.items()}, len(calls)


def test_training_logs_sync_only_the_epoch_means_under_ddp(tmp_path):
    results = run_gloo_ranks(_training_log_main, tmp_path / "store", timeout=120)
    for rank in range(2):
        logged, exchanges = results[rank]
        assert exchanges == 1  # drop_last loader with a fixed batch size: checked once
        for name, (_, kwargs) in logged.items():
            if name.endswith("_epoch"):
                assert kwargs["sync_dist"] and kwargs["on_epoch"] and not kwargs["on_step"]
            else:
                assert not kwargs.get("sync_dist", False), name  # no all-reduce per step
        assert {"train/loss_epoch", "train/itc_epoch", "train/id_epoch"} <= set(logged)
        assert {"train/id_acc_image_epoch", "train/id_acc_text_epoch"} <= set(logged)
    # the batch-level term is the same on both ranks; the per-sample ID term is the rank's own
    assert results[0][0]["train/itc"][0] == pytest.approx(results[1][0]["train/itc"][0])
    assert results[0][0]["train/id"][0] != results[1][0]["train/id"][0]


# -- evaluation under DDP: scored once on rank 0, the numbers broadcast -----------------------
def _eval_problem():
    g = torch.Generator().manual_seed(4)
    images = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1)
    return images, torch.tensor([0, 1, 1, 2, 3]), texts, torch.tensor([0, 0, 1, 2, 2, 3, 1])


def _share(n, rank, world=2):
    """A DistributedSampler-like share: rank, rank + world, ..., padded with repeats."""
    per_rank = -(-n // world)
    order = list(range(n)) + list(range(per_rank * world - n))
    return torch.tensor(order[rank::world])


def _eval_main(rank):
    from lightning.pytorch.trainer.states import TrainerFn

    import tbps.training.module as module_mod
    from objective_fixtures import clip_spec

    scored = []
    original = module_mod.evaluate_embeddings

    def counting(*args):
        scored.append(rank)
        return original(*args)

    module_mod.evaluate_embeddings = counting
    m = module_mod.TBPSLightningModule(clip_spec(), {"itc": {}})
    m._trainer = SimpleNamespace(
        world_size=2,
        sanity_checking=False,
        is_global_zero=rank == 0,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        current_epoch=0,
        max_epochs=1,
    )
    m.log = _Recorded()
    images, image_pids, texts, text_pids = _eval_problem()
    for prefix in ("val", "test"):
        mine_i, mine_t = _share(len(images), rank), _share(len(texts), rank)
        m._eval_buffers = {
            "images": [images[mine_i]],
            "image_pids": [image_pids[mine_i]],
            "image_idx": [mine_i],
            "texts": [texts[mine_t]],
            "text_pids": [text_pids[mine_t]],
            "text_idx": [mine_t],
        }
        m._eval_end(prefix)
    logged = {k: (v, kw["sync_dist"]) for k, (v, kw) in m.log.items()}
    return logged, m.results, m.chance, len(scored)


def test_eval_metrics_are_scored_once_on_rank_zero_and_logged_alike(tmp_path):
    from tbps.evaluation.metrics import chance_level
    from tbps.evaluation.retrieval import evaluate_embeddings

    results = run_gloo_ranks(_eval_main, tmp_path / "store", timeout=120)
    images, image_pids, texts, text_pids = _eval_problem()
    expected = evaluate_embeddings(images, image_pids, texts, text_pids)
    assert results[0][3] == 2 and results[1][3] == 0  # val and test, on rank 0 only
    assert results[0][0] == results[1][0]  # every rank logs the same numbers
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]
    logged = results[0][0]
    assert len(logged) == 20  # val and test, 2 tasks, 5 metrics
    for prefix in ("val", "test"):
        assert results[0][1][prefix] == expected
        for task, metrics in expected.items():
            for key in ("R1", "R5", "R10", "mAP", "mINP"):
                value, sync = logged[f"{prefix}/{task}/{key}"]
                assert value == pytest.approx(float(metrics[key])) and not sync
    assert results[0][2] == {
        "test": {
            "t2i": chance_level(text_pids, image_pids),
            "i2t": chance_level(image_pids, text_pids),
        }
    }
