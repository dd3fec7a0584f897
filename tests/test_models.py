"""Architectures: every registered model builds for several data shapes, with the right sizes."""
import pytest
import torch
from torch import nn

from lottery.config import ModelConfig
from lottery.models import CifarResNet, CifarVGG, ConvNet, LeNet, build_model, is_model_name, model_names
from lottery.pruning.mask import prunable_parameters

OWN_MODELS = ["lenet_300_100", "lenet_10", "conv2", "conv4", "conv6", "resnet20", "resnet32", "vgg11", "vgg13",
              "vgg16", "vgg19"]
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


def build(name, shape=(3, 32, 32), classes=10, seed=0, **options):
    return build_model(ModelConfig(name=name, **options), shape, classes, seed)


def count(model):
    return sum(p.numel() for p in model.parameters())


def conv_params(c_in, c_out, k=3, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", OWN_MODELS)
def test_every_model_builds_and_maps_a_batch_to_class_scores(name, shape):
    model = build(name, shape, classes=10).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, *shape))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_deep_resnets_build_for_small_inputs():
    for name in ("resnet44", "resnet56"):
        model = build(name, (1, 8, 8), classes=4)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_model_classes_have_descriptive_names():
    expected = {"lenet_300_100": LeNet, "conv4": ConvNet, "resnet20": CifarResNet, "vgg11": CifarVGG}
    for name, cls in expected.items():
        assert type(build(name)) is cls


def test_lenet_300_100_has_the_lth_parameter_count_and_readable_names():
    model = build("lenet_300_100", (1, 28, 28))
    assert count(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert [name for name, _ in model.named_parameters()] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    assert list(prunable_parameters(model, ignore=["output"])) == ["fc1.weight", "fc2.weight"]


def test_lenet_input_size_follows_the_data():
    model = build("lenet_50", (2, 5, 5), classes=3)
    assert model.fc1.in_features == 50 and model.out.out_features == 3


def test_conv_nets_match_the_lth_paper_sizes_on_cifar():
    conv2, conv4, conv6 = (count(build(name)) for name in ("conv2", "conv4", "conv6"))
    fc = lambda inputs: inputs * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # noqa: E731
    assert conv2 == conv_params(3, 64) + conv_params(64, 64) + fc(16 * 16 * 64)
    assert conv4 == conv2 - fc(16 * 16 * 64) + conv_params(64, 128) + conv_params(128, 128) + fc(8 * 8 * 128)
    assert conv6 == conv4 - fc(8 * 8 * 128) + conv_params(128, 256) + conv_params(256, 256) + fc(4 * 4 * 256)
    # LTH paper, figure 2: Conv-2 4.3M, Conv-4 2.4M weights.
    assert round(conv2 / 1e6, 1) == 4.3 and round(conv4 / 1e6, 1) == 2.4


def test_conv_net_rejects_inputs_too_small_for_its_pools():
    with pytest.raises(ValueError, match="too small"):
        build("conv6", (1, 4, 4))


def resnet_param_count(depth, width=16, classes=10, in_channels=3):
    """Independent count: stem conv+BN, 3 stages of basic blocks, 1x1 projection shortcuts, linear."""
    n = (depth - 2) // 6
    total = conv_params(in_channels, width, bias=False) + 2 * width
    channels = width
    for out in (width, 2 * width, 4 * width):
        for block in range(n):
            total += conv_params(channels, out, bias=False) + conv_params(out, out, bias=False) + 4 * out
            if channels != out:
                total += conv_params(channels, out, k=1, bias=False) + 2 * out
            channels = out
    return total + channels * classes + classes


def test_resnet20_parameter_count_matches_the_openlth_formula():
    model = build("resnet20")
    assert count(model) == resnet_param_count(20) == 272_474
    assert count(build("resnet32", (1, 28, 28), classes=7)) == resnet_param_count(32, classes=7, in_channels=1)


def test_resnet_width_option_scales_every_stage():
    model = build("resnet20", width=32)
    assert count(model) == resnet_param_count(20, width=32)
    assert model.conv.out_channels == 32 and model.out.in_features == 128


def test_resnet110_has_110_weighted_layers_plus_two_shortcuts():
    model = build("resnet110")
    names = list(prunable_parameters(model))
    main_path = [name for name in names if ".shortcut." not in name]
    assert len(main_path) == 110 and len(names) == 112
    assert count(model) == resnet_param_count(110)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_convs_have_no_bias_and_shortcuts_project_only_on_shape_change():
    model = build("resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.bias is None for conv in convs)
    assert isinstance(model.stage1[0].shortcut, nn.Identity)
    assert model.stage2[0].shortcut.conv.stride == (2, 2) and model.stage2[0].shortcut.conv.kernel_size == (1, 1)
    assert isinstance(model.stage2[1].shortcut, nn.Identity)


def test_resnet_without_batchnorm_has_conv_biases_and_no_norm_layers():
    model = build("resnet20", batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name,convs", [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_has_the_configured_conv_layers_bias_free_with_batchnorm(name, convs):
    model = build(name)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(layers) == convs and all(conv.bias is None for conv in layers)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == convs
    assert isinstance(model.out, nn.Linear) and model.out.in_features == 512
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_vgg16_parameter_count():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    inputs = [3] + widths[:-1]
    convs = sum(conv_params(i, o, bias=False) for i, o in zip(inputs, widths))
    assert count(build("vgg16")) == convs + 2 * sum(widths) + 512 * 10 + 10
    plain = build("vgg16", batchnorm=False)
    assert count(plain) == convs + sum(widths) + 512 * 10 + 10
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_vgg_width_option_scales_channels():
    model = build("vgg11", width=16)
    assert model.features.conv1.out_channels == 16 and model.out.in_features == 128


def test_torchvision_models_build_without_weights_for_the_class_count():
    model = build("tv.resnet18", classes=7)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 7
    assert list(prunable_parameters(model))[-1] == "fc.weight"  # "output" is the last prunable weight
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_torchvision_models_refuse_grayscale_input_clearly():
    with pytest.raises(ValueError, match="3-channel"):
        build("tv.resnet18", (1, 28, 28))


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet_5", "lenet_300_100_50", "conv2", "conv6", "resnet20",
                                  "resnet110", "vgg11", "vgg19", "tv.resnet18", "tv.vit_b_16"])
def test_is_model_name_accepts_registered_names(name):
    assert is_model_name(name)


@pytest.mark.parametrize("name", ["lenet", "lenet_", "lenet_0", "lenet_300_", "conv3", "resnet18", "resnet50",
                                  "vgg15", "tv.nonexistent", "tv.", "resnet20x", "", "mlp"])
def test_is_model_name_rejects_unknown_names(name):
    assert not is_model_name(name)


def test_unknown_model_names_raise_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="resnet20") as error:
        build("resnet18")
    assert model_names() in str(error.value)
    for part in ("lenet_300_100", "conv2", "conv6", "resnet110", "vgg19", "tv."):
        assert part in model_names()


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="model.init"):
        build("conv2", init="he")
    with pytest.raises(ValueError, match="model.width"):
        build("lenet_300_100", width=8)
    with pytest.raises(ValueError, match="image inputs"):
        build("resnet20", (784,))
