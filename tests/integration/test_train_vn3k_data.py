"""`tbps train` on VN3K-layout data with the identity sampler, IRRA augmentation, EDA and views."""

import json

from tbps.cli import main
from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset


def test_train_vn3k_vi_identity_sampler_with_views(tmp_path, monkeypatch, capsys):
    root = tmp_path / "vn3k"
    generate_synthetic_dataset(
        root, SynthConfig(num_identities=30, images_per_identity=(2, 3), layout="vn3k"), False
    )
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "data=vn3k_vi",
            f"data.root={root}",
            "debug=tiny",
            f"run_dir={tmp_path / 'run'}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "loader.sampler=identity",
            "loader.num_instances=4",
            "augment=irra",
            "augment.text.enabled=true",
            "augment.text.synonym=0.1",
            "augment.mvs=true",
            "augment.mlm.enabled=true",
        ]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "vn3k_vi" and metrics["steps"] > 0
    assert metrics["test"]["last"]["t2i"]["num_queries"] > 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "training batches carry extra views: mvs, mlm" in log
