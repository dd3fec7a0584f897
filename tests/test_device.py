import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.device import (
    resolve_amp, resolve_channels_last, resolve_cudnn_benchmark, resolve_fast_path, select_device,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_selects_cpu_without_accelerators():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert select_device("auto").type == expected
    assert select_device("cpu") == CPU


def test_amp_decision():
    assert resolve_amp("auto", CPU) is None
    assert resolve_amp("auto", CUDA, bf16_supported=True) == torch.bfloat16
    assert resolve_amp("auto", CUDA, bf16_supported=False) is None
    assert resolve_amp("off", CUDA, bf16_supported=True) is None
    assert resolve_amp("bf16", CPU) == torch.bfloat16
    assert resolve_amp("fp16", CUDA) == torch.float16


def test_channels_last_only_for_conv_nets_on_cuda_by_default():
    conv_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert resolve_channels_last("auto", CUDA, conv_net)
    assert not resolve_channels_last("auto", CUDA, mlp)
    assert not resolve_channels_last("auto", CPU, conv_net)
    assert resolve_channels_last("on", CPU, mlp)
    assert not resolve_channels_last("off", CUDA, conv_net)


def test_cudnn_benchmark_decision():
    assert resolve_cudnn_benchmark("auto", CUDA)
    assert not resolve_cudnn_benchmark("auto", CPU)
    assert resolve_cudnn_benchmark("on", CPU)


def test_fast_path_is_recorded_as_params():
    fast = resolve_fast_path(TrainConfig(device="cpu", amp="bf16", channels_last="off"), nn.Linear(2, 2))
    params = fast.as_params()
    assert params["fast_path.amp"] == "bfloat16"
    assert params["fast_path.channels_last"] == "False"
    assert params["fast_path.device"] == "cpu"
