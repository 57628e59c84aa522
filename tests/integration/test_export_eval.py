"""A trained run leaves the training loop: export (tbps, hf, onnx) and `tbps eval model=DIR`
reproduce the run's own test metrics exactly; older checkpoints keep working."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tbps.cli import main
from tbps.model.checkpoint import model_from_checkpoint
from tbps.model.export import IMAGE_ONNX, TEXT_ONNX, onnx_session
from tbps.model.tbps import TBPSModel

FIXTURE = Path(__file__).parents[1] / "data" / "ckpt_v0_1_rde"  # written by tbps at 91f0a24
TINY = [
    "debug=tiny",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "report.failures=0",
    "backbone.vision.width=32",
    "backbone.text.width=32",
    "backbone.embed_dim=32",
    "backbone.vision.layers=1",
    "backbone.text.layers=1",
    "backbone.tokenizer.vocab_size=300",
    "data.synth.num_identities=40",
]


def _synth_args(config: Path) -> list[str]:
    synth = OmegaConf.load(config).data.synth
    return [f"data.synth.{k}={v}" for k, v in OmegaConf.to_container(synth).items()]


def _eval(tmp_path, source: str, synth: list[str], name: str) -> dict:
    out = tmp_path / f"{name}.json"
    code = main(["eval", source, f"cache_dir={tmp_path / 'cache'}", f"out={out}", *synth])
    assert code == 0
    return json.loads(out.read_text())


def _same_metrics(evaluated: dict, expected: dict) -> None:
    for task in ("t2i", "i2t"):
        for key in ("R1", "R5", "R10", "mAP", "mINP", "num_queries"):
            assert evaluated[task][key] == expected[task][key], (task, key)


@pytest.fixture(scope="module")
def rde_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rde")
    args = ["train", *TINY, "objectives=rde", "objectives.tal.tse_dim=16"]
    assert main([*args, f"run_dir={tmp / 'run'}", f"cache_dir={tmp / 'cache'}"]) == 0
    return tmp / "run"


@pytest.mark.parametrize("objectives", ["itc_sdm", "rde"])
def test_eval_of_the_exported_folder_equals_the_runs_own_test_metrics(
    objectives, rde_run, tmp_path
):
    if objectives == "rde":
        run = Path(shutil.copytree(rde_run, tmp_path / "run"))  # others use the shared run
    else:
        run = tmp_path / "run"
        assert main(["train", *TINY, f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    folder = tmp_path / "model"
    assert main(["export", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"out={folder}"]) == 0
    shutil.rmtree(run / "checkpoints")  # the folder stands alone
    synth = _synth_args(run / "config.yaml")
    _same_metrics(_eval(tmp_path, f"model={folder}", synth, "eval"), metrics["test"]["best"])
    model = TBPSModel.from_pretrained(folder)
    assert (model.token_selection is not None) == (objectives == "rde")


def test_checkpoint_of_tbps_0_1_still_evaluates_and_exports(tmp_path, capsys):
    ckpt = FIXTURE / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("heads.tse.") for k in saved["state_dict"])  # the old layout
    assert "token_selection" not in saved["hyper_parameters"]["model_spec"]
    # its token-selection head predates RDE's exact TSE: one clear line, nothing written
    assert main(["eval", f"ckpt_path={ckpt}", f"cache_dir={tmp_path / 'cache'}"]) == 2
    assert main(["export", f"ckpt_path={ckpt}", f"out={tmp_path / 'old'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("layout before RDE's exact TSE") == 2 and not (tmp_path / "old").exists()
    # the rest of the 0.1 format still loads: the same run without that head
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if "tse" not in k}
    saved["hyper_parameters"]["objectives"]["tal"]["tse"] = False
    ckpt = run / "checkpoints" / "best.ckpt"
    torch.save(saved, ckpt)
    # no data= given: the run's own data section (its config.yaml) is evaluated
    expected = _eval(tmp_path, f"ckpt_path={ckpt}", [], "ckpt")
    assert "synthetic test" in capsys.readouterr().out
    assert expected["t2i"]["R1"] > 0
    folder = tmp_path / "model"
    assert main(["export", f"ckpt_path={ckpt}", f"out={folder}"]) == 0
    _same_metrics(_eval(tmp_path, f"model={folder}", [], "folder"), expected)
    assert TBPSModel.from_pretrained(folder).info["data"]["synth"]["num_identities"] == 40
    assert TBPSModel.from_pretrained(folder).token_selection is None
    # a failure report from tbps eval, e.g. for a cross-domain check
    page = tmp_path / "cross" / "failures.html"
    args = [f"model={folder}", f"cache_dir={tmp_path / 'cache'}", "report.failures=3"]
    assert main(["eval", *args, f"report.path={page}"]) == 0
    assert "failure report:" in capsys.readouterr().out and page.is_file()
    assert list((tmp_path / "cross" / "failures_files").glob("*.jpg"))
    # data= on the command line wins: another dataset is scored
    other = _eval(tmp_path, f"model={folder}", ["data.synth.num_identities=60"], "other")
    assert other["t2i"]["num_queries"] != expected["t2i"]["num_queries"]


def test_onnx_export_matches_torch_with_any_batch_size(rde_run, tmp_path, capsys):
    ckpt = rde_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "onnx"
    assert main(["export", f"ckpt_path={ckpt}", f"out={out}", "format=onnx"]) == 0
    assert "onnxruntime vs torch: image max |diff|" in capsys.readouterr().out
    assert {IMAGE_ONNX, TEXT_ONNX, "config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    model = model_from_checkpoint(ckpt)
    texts = ["a woman in a red coat", "a man with a black backpack and blue jeans", "a child"]
    for n in (1, 5):
        tokens = model.tokenize((texts * 2)[:n])
        pixels = torch.rand(n, 3, *model.image_size)
        with torch.no_grad():
            want_img = model.encode_images(pixels).numpy()
            want_txt = model.encode_texts(**tokens).numpy()
        got_img = onnx_session(out / IMAGE_ONNX).run(None, {"pixel_values": pixels.numpy()})[0]
        feeds = {k: v.numpy() for k, v in tokens.items()}
        got_txt = onnx_session(out / TEXT_ONNX).run(None, feeds)[0]
        assert got_img.shape == want_img.shape and got_txt.shape == want_txt.shape
        assert np.abs(got_img - want_img).max() <= 1e-4
        assert np.abs(got_txt - want_txt).max() <= 1e-4


def test_hf_export_loads_in_transformers_and_starts_a_new_run(rde_run, tmp_path):
    from transformers import AutoModel

    from tbps.model.factory import pretrained_model

    ckpt = rde_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "hf"
    assert main(["export", f"ckpt_path={ckpt}", f"out={out}", "format=hf"]) == 0
    source = model_from_checkpoint(ckpt)
    stock = AutoModel.from_pretrained(out).eval()
    tokens = source.tokenize(["a woman in a red coat", "a man in jeans"])
    with torch.no_grad():
        want = source.text_embeddings(**tokens)
        got = stock.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the exact non-square position table comes back for a new run at the same size
    again, _ = pretrained_model(out, "clip", image_size=list(source.image_size))
    pixels = torch.rand(2, 3, *source.image_size)
    with torch.no_grad():
        torch.testing.assert_close(again.image_embeddings(pixels), source.image_embeddings(pixels))
    run = tmp_path / "again"
    args = [
        "train",
        *TINY[:4],
        "backbone=clip_tiny",
        f"backbone.path={out}",
        "backbone.image_size=[128,64]",
    ]
    assert main([*args, f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    assert (run / "metrics.json").is_file()


def test_export_and_eval_refuse_bad_input_before_any_work(tmp_path, capsys):
    ckpt = FIXTURE / "checkpoints" / "best.ckpt"
    assert main(["export", f"ckpt_path={ckpt}", f"out={tmp_path / 'x'}", "format=tflite"]) == 2
    assert "format='tflite': expected one of tbps, hf, onnx" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", f"ckpt_path={ckpt}", f"out={tmp_path / 'full'}"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    not_ckpt = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}}, not_ckpt)
    assert main(["export", f"ckpt_path={not_ckpt}", f"out={tmp_path / 'y'}"]) == 2
    assert "is not a tbps training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["eval", f"ckpt_path={junk}", f"cache_dir={tmp_path / 'c'}"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert main(["eval", f"model={tmp_path}", f"cache_dir={tmp_path / 'c'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", f"ckpt_path={ckpt}", "device=cuda"]) == 2
        assert "device=cuda but this machine has no CUDA GPU" in capsys.readouterr().err
    assert main(["eval", f"ckpt_path={ckpt}", "device=tpu"]) == 2
    assert "device='tpu'; expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["eval", f"ckpt_path={ckpt}", "precision=fp16", "device=cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
