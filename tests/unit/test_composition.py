"""Objectives composed from config: validation, weighted terms, MVS/TSE, and the training step."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from objective_fixtures import clip_spec, siglip_spec, training_batch
from tbps.cli import compose_config
from tbps.errors import ConfigError
from tbps.losses import (
    OBJECTIVES,
    LossInputs,
    compute_losses,
    itc,
    nitc,
    objective_weights,
    required_features,
    resolve_objectives,
    sdm,
    tal,
)
from tbps.training.module import NonFiniteLossError, TBPSLightningModule
from tbps.training.step import softlabel_ramp

PRESETS = ("itc_sdm", "irra", "tbps_clip", "rde", "seed_best")


def feats(seed, B=8, D=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, D, generator=g, dtype=torch.float64),
        torch.randn(B, D, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (B,), generator=g),
    )


def preset(name):
    cfg = compose_config("train", [f"objectives={name}"])
    return OmegaConf.to_container(cfg.objectives, resolve=True)


# -- config -----------------------------------------------------------------------------------
def test_resolve_fills_defaults_and_drops_disabled():
    resolved = resolve_objectives(
        {
            "sdm": {"enabled": True, "weight": 0.5, "mvs": True},
            "tal": {"margin": 0.2},
            "itc": {"enabled": False},
            "id": 2,
        }
    )
    assert set(resolved) == {"sdm", "tal", "id"}
    assert resolved["sdm"] == {
        "weight": 0.5,
        "epsilon": 1e-8,
        "mvs": True,
        "tse": False,
        "tse_ratio": 0.3,
        "tse_dim": None,
    }
    assert resolved["tal"]["margin"] == 0.2 and resolved["tal"]["tau"] == 0.015
    assert resolved["id"] == {"weight": 2.0}
    assert resolve_objectives(resolved) == resolved  # idempotent: the module re-resolves
    assert objective_weights({"itc": {"weight": 0.5}, "sdm": {"enabled": False}}) == {"itc": 0.5}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"itx": {}}, "unknown objective objectives.itx; valid: citc, cmpm, id, itc, mlm"),
        ({"sdm": {"wieght": 1.0}}, r"objectives.sdm: unknown key\(s\) \['wieght'\]; valid: "),
        ({"nitc": {"alpha": 0.5}}, "valid: enabled, weight, softlabel_ratio, mvs, tse"),
        ({"itc": {"enabled": False}}, "no objective enabled"),
        ({"itc": {"weight": -1}}, "objectives.itc.weight must be >= 0"),
        ({"itc": {"weight": "high"}}, "objectives.itc.weight must be a number"),
        ({"itc": {"enabled": "yes"}}, "objectives.itc.enabled must be true or false"),
        (
            {"nitc": {"softlabel_ratio": 1.5}},
            r"objectives.nitc.softlabel_ratio must be in \[0, 1\]",
        ),
        ({"nitc": {"mvs": "on"}}, "objectives.nitc.mvs must be true or false"),
        ({"ss": {"temperature": 0}}, "objectives.ss.temperature must be positive"),
        ({"ritc": {"form": "hinge"}}, "objectives.ritc.form must be one of auto, softmax, sigmoid"),
        ({"mlm": {"layers": 0}}, "objectives.mlm.layers must be a positive integer"),
        ({"sdm": {"epsilon": 0}}, "objectives.sdm.epsilon must be positive"),
        ({"itc": [1, 2]}, "objectives.itc must be a mapping"),
        (
            {"tal": {"tse": True}, "sdm": {"tse": True, "tse_dim": 64}},
            "share one token-selection head but set different tse_ratio/tse_dim",
        ),
    ],
)
def test_bad_config_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        resolve_objectives(config)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve(name):
    resolved = resolve_objectives(preset(name))
    expected = {
        "itc_sdm": {"itc": 1.0, "sdm": 0.1},
        "irra": {"sdm": 1.0, "id": 1.0, "mlm": 1.0},
        "tbps_clip": {"nitc": 1.0, "ritc": 1.0, "citc": 0.1, "ss": 0.4},
        "rde": {"tal": 1.0},
        "seed_best": {"sigmoid_nitc": 1.0, "ss": 0.8, "citc": 0.1},
    }[name]
    assert {k: v["weight"] for k, v in resolved.items()} == expected
    if name == "tbps_clip":
        assert resolved["nitc"]["softlabel_ratio"] == 0.5 and resolved["nitc"]["mvs"]
    if name == "rde":
        assert resolved["tal"]["tse"] and resolved["tal"]["tse_dim"] == 1024


def test_default_objectives_are_itc_plus_a_tenth_of_sdm():
    f, t, pids = feats(0)
    scale = torch.tensor(20.0, dtype=torch.float64)
    terms = compute_losses(resolve_objectives(preset("itc_sdm")), LossInputs(f, t, pids, scale))
    assert set(terms) == {"itc", "sdm", "total"}
    expected = itc(f, t, scale) + 0.1 * sdm(f, t, pids, scale)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-12)
    # bare weights (old checkpoints' hyper-parameters) mean the same
    bare = compute_losses({"itc": 1.0, "sdm": 0.1}, LossInputs(f, t, pids, scale))
    assert bare["total"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_required_features_and_backbone_checks():
    assert required_features(resolve_objectives(preset("rde"))) == {"tse_head"}
    assert required_features(resolve_objectives(preset("irra"))) == {
        "id_head",
        "mlm_head",
        "logit_scale",
    }
    ritc = resolve_objectives({"ritc": {}})
    assert "logit_bias" in required_features(ritc, sigmoid_backbone=True)
    assert "logit_bias" not in required_features(ritc, sigmoid_backbone=False)
    with pytest.raises(ConfigError, match="objectives.sigmoid_nitc needs a sigmoid-style backbone"):
        TBPSLightningModule(clip_spec(), preset("seed_best"), num_classes=4)
    with pytest.raises(ConfigError, match="objectives.ritc.form=sigmoid needs a sigmoid-style"):
        TBPSLightningModule(clip_spec(), {"ritc": {"form": "sigmoid"}}, num_classes=4)
    with pytest.raises(ConfigError, match="objectives.id needs the number of training identities"):
        TBPSLightningModule(clip_spec(), preset("irra"), num_classes=0)
    with pytest.raises(ConfigError, match="on_nonfinite_loss must be one of error, skip"):
        TBPSLightningModule(clip_spec(), {"itc": {}}, on_nonfinite="ignore")


# -- composition ------------------------------------------------------------------------------
def test_mvs_averages_views_and_tse_adds_a_term():
    f, t, pids = feats(1)
    aug, _, _ = feats(2)
    tse_f, tse_t, _ = feats(3)
    scale = torch.tensor(10.0, dtype=torch.float64)
    inputs = LossInputs(
        f, t, pids, scale, aug_image_feats=aug, tse_image_feats=tse_f, tse_text_feats=tse_t
    )
    objectives = resolve_objectives(
        {
            "nitc": {"weight": 2.0, "mvs": True, "softlabel_ratio": 0.5},
            "tal": {"weight": 0.5, "tse": True},
        }
    )
    inputs.softlabel_ramp = 0.4
    terms = compute_losses(objectives, inputs)
    alpha = 0.5 * 0.4
    expected_nitc = 2.0 * (nitc(f, t, pids, scale, alpha) + nitc(aug, t, pids, scale, alpha)) / 2
    assert terms["nitc"].item() == pytest.approx(expected_nitc.item(), rel=1e-12)
    assert terms["tal"].item() == pytest.approx(0.5 * tal(f, t, pids).item(), rel=1e-12)
    assert terms["tal_tse"].item() == pytest.approx(0.5 * tal(tse_f, tse_t, pids).item())
    total = terms["nitc"] + terms["tal"] + terms["tal_tse"]
    assert terms["total"].item() == pytest.approx(total.item())


def test_batch_level_objectives_read_the_gathered_inputs():
    f, t, pids = feats(4)
    scale = torch.tensor(10.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    local = LossInputs(
        f[:4],
        t[:4],
        pids[:4],
        scale,
        image_logits=torch.randn(4, 3, generator=g, dtype=torch.float64),
        text_logits=torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    everything = LossInputs(f, t, pids, scale)
    terms = compute_losses(resolve_objectives({"sdm": {}, "id": {}}), local, everything)
    assert terms["sdm"].item() == pytest.approx(sdm(f, t, pids, scale).item())
    assert terms["id"].item() == pytest.approx(
        OBJECTIVES["id"].fn(local, {}).item()
    )  # per-sample: local rows only


def test_every_registered_objective_has_a_documented_preset_or_parameter_set():
    for name, spec in OBJECTIVES.items():
        assert spec.summary, name
        resolved = resolve_objectives({name: {}})
        assert set(resolved[name]) == {"weight", *spec.params}


def test_softlabel_ramp():
    assert softlabel_ramp(0, 10) == 0.0
    assert softlabel_ramp(5, 10) == 0.5
    assert softlabel_ramp(10, 10) == 1.0 and softlabel_ramp(25, 10) == 1.0
    assert softlabel_ramp(3, 0) == 1.0


# -- the training step --------------------------------------------------------------------------
class Logged(dict):
    def __call__(self, name, value, **kwargs):
        self[name] = float(torch.as_tensor(value).detach())


def module(spec, objectives, **kwargs):
    torch.manual_seed(0)
    m = TBPSLightningModule(spec, objectives, num_classes=kwargs.pop("num_classes", 4), **kwargs)
    m.log = Logged()
    return m


PIDS = [0, 0, 1, 2, 2, 3]


@pytest.mark.parametrize("name", ["irra", "tbps_clip", "rde", "seed_best", "itc_sdm"])
def test_training_step_of_each_preset_logs_terms_and_trains_every_head(name):
    spec = siglip_spec() if name == "seed_best" else clip_spec()
    m = module(spec, preset(name))
    loss = m.training_step(training_batch(PIDS), 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    logged = m.log
    terms = {k.removeprefix("train/") for k in logged} - {
        "loss",
        "logit_scale",
        "logit_bias",
        "id_acc_image",
        "id_acc_text",
        "mlm_acc",
    }
    expected = set(m.objectives) | {f"{n}_tse" for n, p in m.objectives.items() if p.get("tse")}
    expected |= {f"{n}_alpha" for n, p in m.objectives.items() if p.get("softlabel_ratio")}
    assert terms == expected
    assert logged["train/loss"] == pytest.approx(
        sum(v for k, v in logged.items() if k.removeprefix("train/") in m.objectives)
        + sum(v for k, v in logged.items() if k.endswith("_tse")),
        rel=1e-5,
    )
    if "id" in m.objectives:
        assert 0 <= logged["train/id_acc_image"] <= 1 and 0 <= logged["train/id_acc_text"] <= 1
    if "mlm" in m.objectives:
        assert 0 <= logged["train/mlm_acc"] <= 1
    untouched = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not untouched, untouched  # every trainable parameter (heads included) gets a gradient
    if name == "rde":  # TAL reads no logit scale: it is frozen, not left without gradient
        assert not m.model.hf.logit_scale.requires_grad
    # evaluation ranks with the fused global + TSE embedding when TSE is on
    m.eval()
    with torch.no_grad():
        image = m.encode_images(training_batch(PIDS)["images"])
    width = m.model.embed_dim + (1024 if name == "rde" else 0)
    assert image.shape == (6, width)
    assert torch.allclose(image.norm(dim=1), torch.ones(6), atol=1e-5)


def test_missing_view_is_a_clear_error():
    m = module(clip_spec(), {"nitc": {"mvs": True}})
    with pytest.raises(ConfigError, match="no 'aug_images' .the MVS view"):
        m.training_step(training_batch(PIDS, views=False), 0)
    m = module(clip_spec(), {"mlm": {}})
    with pytest.raises(ConfigError, match="no 'mlm_labels'"):
        m.training_step(training_batch(PIDS, views=False), 0)


@pytest.mark.parametrize("pids", [[0, 1, 2, 3, 4, 5], [1, 1, 1, 1, 1, 1]])
def test_degenerate_batches_train_with_finite_values(pids):
    objectives = {n: {} for n in ("itc", "sdm", "cmpm", "nitc", "ritc", "citc", "tal", "ss")}
    objectives["nitc"] = {"softlabel_ratio": 0.5, "mvs": True}
    m = module(clip_spec(), objectives, num_classes=6)
    loss = m.training_step(training_batch(pids), 0)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_nonfinite_loss_stops_or_skips(caplog):
    batch = training_batch(PIDS)
    batch["images"][2] = float("nan")
    m = module(clip_spec(), {"itc": {}, "sdm": {"weight": 0.1}})
    with pytest.raises(
        NonFiniteLossError, match=r"objective\(s\) itc \(nan\), sdm \(nan\) at step 0"
    ):
        m.training_step(batch, 7)
    m = module(clip_spec(), {"itc": {}}, on_nonfinite="skip")
    assert m.training_step(batch, 3) is None
    assert m.training_step(batch, 4) is None
    assert m.skipped_batches == 2 and m.log["train/skipped_batches"] == 2.0
    assert "skipped batch at step 0 (epoch 0, batch 4): non-finite loss in itc" in caplog.text
    assert m.training_step(training_batch(PIDS), 5) is not None


def test_boosting_weights_are_looked_up_per_dataset_index():
    m = module(clip_spec(), {"sdm": {}})
    batch = training_batch(PIDS)
    base = m.training_step(batch, 0).item()
    m.sample_weights = torch.ones(20)
    assert m.training_step(batch, 0).item() == pytest.approx(base, rel=1e-6)
    m.sample_weights[batch["indices"]] = 2.0
    assert m.training_step(batch, 0).item() == pytest.approx(2 * base, rel=1e-6)
    m.sample_weights = torch.ones(20)
    m.sample_weights[[3, 12]] = 1.6
    batch["indices"] = torch.tensor([3, 4, 10, 11, 12, 13])
    weighted = m.training_step(batch, 0).item()
    with torch.no_grad():
        f = m.model.image_embeddings(batch["images"])
        t = m.model.text_embeddings(batch["input_ids"], batch["attention_mask"])
        rows = torch.tensor([1.6, 1.0, 1.0, 1.0, 1.6, 1.0])
        expected = sdm(f, t, batch["pids"], m.model.logit_scale(), weights=rows)
    assert weighted == pytest.approx(expected.item(), rel=1e-5)


def test_skipped_batch_leaves_the_weights_untouched_under_a_trainer():
    import lightning as L

    good, bad = training_batch(PIDS), training_batch(PIDS)
    bad["images"][0] = float("nan")
    m = TBPSLightningModule(clip_spec(), {"itc": {}}, on_nonfinite="skip")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}

    def fit(module, batches):
        trainer = L.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        trainer.fit(module, train_dataloaders=loader)

    fit(m, [bad])
    assert m.skipped_batches == 1
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    fit(m, [good])
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters())
    strict = TBPSLightningModule(clip_spec(), {"itc": {}})
    with pytest.raises(NonFiniteLossError, match="non-finite loss in objective"):
        fit(strict, [bad])


def test_cmpm_target_norm_is_checked_and_passed_on():
    assert resolve_objectives({"cmpm": {}})["cmpm"]["target_norm"] == "l2"
    assert resolve_objectives({"cmpm": {"target_norm": "l1"}})["cmpm"]["target_norm"] == "l1"
    with pytest.raises(ConfigError, match="objectives.cmpm.target_norm must be one of l2, l1"):
        resolve_objectives({"cmpm": {"target_norm": "L2"}})
