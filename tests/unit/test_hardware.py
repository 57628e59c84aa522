"""Machine-dependent defaults: auto precision and workers, CUDA matmul precision, refusals."""

import pytest
import torch

from tbps.app import hardware
from tbps.cli import main
from tbps.errors import ConfigError


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA GPU is there; ``gpu(bf16=False)`` makes it a pre-Ampere one."""

    def pretend(bf16=True, count=1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return pretend


def test_auto_precision_is_bf16_mixed_on_a_gpu_with_bf16_and_fp32_on_cpu(gpu):
    assert hardware.resolve_precision({"precision": "auto"}) == "32-true"
    assert hardware.resolve_precision({"precision": "bf16-mixed"}) == "bf16-mixed"
    gpu()
    assert hardware.resolve_precision({"precision": "auto"}) == "bf16-mixed"
    assert hardware.resolve_precision({"precision": "auto", "accelerator": "cpu"}) == "32-true"
    gpu(bf16=False)
    assert hardware.resolve_precision({"precision": "auto"}) == "16-mixed"


def test_auto_workers(gpu, monkeypatch):
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 32)
    assert hardware.resolve_num_workers("auto", on_cuda=False) == 0
    assert hardware.resolve_num_workers(3, on_cuda=False) == 3
    assert hardware.resolve_num_workers("auto", on_cuda=True, devices=1) == 8
    assert hardware.resolve_num_workers("auto", on_cuda=True, devices=8) == 4
    gpu(count=4)
    assert hardware.devices_per_node({"devices": "auto"}) == 4
    assert hardware.devices_per_node({"devices": [0, 2]}) == 2


def test_cuda_defaults_set_tf32_matmuls(gpu):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        hardware.use_cuda_defaults()  # no GPU: nothing changes
        assert torch.get_float32_matmul_precision() == "highest"
        gpu()
        hardware.use_cuda_defaults()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_half_weights_with_adamw_are_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(ConfigError, match="moment estimates in half precision"):
        hardware.check_precision_and_optimizer("bf16-true", "adamw")
    hardware.check_precision_and_optimizer("bf16-true", "sgd")
    hardware.check_precision_and_optimizer("bf16-mixed", "adamw")
    code = main(["train", "debug=tiny", "trainer.precision=bf16-true", f"run_dir={tmp_path / 'r'}"])
    assert code == 2
    assert "use trainer.precision=bf16-mixed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
