import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.models.flops import forward_flops
from lottery.training.device import (
    SMALL_STEP_FLOPS, cpu_threads, resolve_amp, resolve_channels_last, resolve_cpu_threads, resolve_cudnn_benchmark,
    resolve_fast_path, select_device,
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


def test_forward_flops_counts_one_batch_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 3))
    model.train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert forward_flops(model, (10,), batch_size=4) == 4 * 2 * (10 * 5 + 5 * 3)
    assert model.training
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_cpu_threads_one_for_small_steps_all_for_large_and_none_when_the_user_chose():
    everything = torch.get_num_threads()
    assert resolve_cpu_threads(CPU, SMALL_STEP_FLOPS / 10, environment={}) == 1
    assert resolve_cpu_threads(CPU, SMALL_STEP_FLOPS * 10, environment={}) == everything
    assert resolve_cpu_threads(CPU, 1.0, environment={"OMP_NUM_THREADS": "2"}) is None
    assert resolve_cpu_threads(CPU, 1.0, environment={"OMP_NUM_THREADS": ""}) == 1  # empty means unset
    assert resolve_cpu_threads(CUDA, 1.0, environment={}) is None
    assert resolve_cpu_threads(CPU, None, environment={}) is None


def test_cpu_threads_context_sets_and_restores():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_fast_path_records_the_thread_decision(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small = resolve_fast_path(TrainConfig(device="cpu", batch_size=8), nn.Linear(4, 2), sample_shape=(4,))
    assert small.cpu_threads == 1 and small.as_params()["fast_path.cpu_threads"] == "1"
    unknown = resolve_fast_path(TrainConfig(device="cpu"), nn.Linear(4, 2))
    assert unknown.as_params()["fast_path.cpu_threads"] == "unchanged"
