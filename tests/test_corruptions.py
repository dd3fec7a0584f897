"""CIFAR-10-C-style corruptions: each one against an independent implementation, severity 0 is the identity,
distortion grows with severity, the images are seeded and deterministic, uint8 data stays uint8."""
import numpy as np
import pytest
import torch

from lottery.config import DataConfig
from lottery.data import load_dataset
from lottery.data.corruptions import (CORRUPTIONS, PARAMETERS, CorruptedTestSets, brightness, contrast, corrupt,
                                      gaussian_blur)
from lottery.data.dataset import DataError, Dataset


def _images(count=6, channels=3, side=12, seed=0):
    return torch.rand(count, channels, side, side, generator=torch.Generator().manual_seed(seed))


def test_blur_is_scipys_gaussian_filter_over_height_and_width():
    from scipy.ndimage import gaussian_filter

    images = _images(side=8)
    for sigma in PARAMETERS["blur"]:
        expected = gaussian_filter(images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        assert np.allclose(gaussian_blur(images, sigma).numpy(), expected, atol=1e-6)


def test_brightness_is_the_hsv_value_shift():
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    images = _images()
    images[0, :, 0, 0] = 0.0  # a black pixel has no hue: it turns grey
    for shift in PARAMETERS["brightness"]:
        hsv = rgb_to_hsv(images.permute(0, 2, 3, 1).double().numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        expected = hsv_to_rgb(hsv).transpose(0, 3, 1, 2)
        assert np.allclose(brightness(images, shift).numpy(), expected, atol=1e-6)


def test_contrast_pulls_each_channel_to_its_mean():
    images = _images()
    out = contrast(images, 0.3)
    means = images.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, means + 0.3 * (images - means))
    assert torch.allclose(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_severity_zero_is_the_identity_and_distortion_grows_with_severity(channels):
    images = _images(channels=channels, side=16)
    for name in CORRUPTIONS:
        assert corrupt(images, name, 0) is images
        errors = []
        for severity in range(1, 6):
            out = corrupt(images.clone(), name, severity, torch.Generator().manual_seed(1))
            assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
            errors.append((out - images).pow(2).mean().sqrt().item())
        assert errors == sorted(errors) and errors[0] > 0, (name, errors)
    with pytest.raises(ValueError):
        corrupt(images, "fog", 1)
    with pytest.raises(ValueError):
        corrupt(images, "noise", 6, torch.Generator())


def _digits():
    return load_dataset(DataConfig(name="digits", root="unused"), 0, "cpu")


def _all(sets, name, severity):
    chunks = list(sets.batches(name, severity))
    return torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])


def test_corrupted_sets_are_deterministic_and_only_noise_depends_on_the_seed():
    digits = _digits()
    first, again, other = CorruptedTestSets(digits, 0), CorruptedTestSets(digits, 0), CorruptedTestSets(digits, 1)
    for name in CORRUPTIONS:
        x, y = _all(first, name, 3)
        assert torch.equal(x, _all(again, name, 3)[0]) and torch.equal(x, _all(first, name, 3)[0])  # cached too
        assert torch.equal(y, digits.labels("test"))
        assert torch.equal(x, _all(other, name, 3)[0]) is (name != "noise"), name
    clean = torch.cat([x for x, _ in digits.eval_batches("test", 100)])
    assert torch.equal(torch.cat([x for x, _ in first.clean()]), clean)
    assert torch.equal(_all(first, "blur", 0)[0], clean)


def test_one_noise_draw_serves_every_severity():
    digits = _digits()
    sets = CorruptedTestSets(digits, 0, budget_bytes=0)  # nothing cached: generated again each time
    raw = digits.raw("test", slice(0, 256))[0]
    low, high = (sets._corrupted(raw, "noise", severity, 0) for severity in (1, 5))
    unclipped = (high > 0) & (high < 1) & ((low - raw).abs() > 1e-3)  # not clipped at 0 or 1, not tiny
    assert unclipped.float().mean() > 0.1
    ratio = (high - raw)[unclipped] / (low - raw)[unclipped]
    assert torch.allclose(ratio, torch.full_like(ratio, 0.10 / 0.04), atol=1e-3)


def test_uint8_images_stay_uint8_and_non_images_are_refused():
    images = (_images(count=8, side=10) * 255).round().to(torch.uint8)
    labels = torch.arange(8) % 2
    dataset = Dataset("u8", {"train": (images, labels), "test": (images, labels)}, 2, [0.5] * 3, [0.25] * 3,
                      scale=1 / 255)
    sets = CorruptedTestSets(dataset, 0)
    for name in CORRUPTIONS:
        raw = sets._corrupted(images, name, 5, 0)
        assert raw.dtype == torch.uint8 and not torch.equal(raw, images), name
    flat = Dataset("flat", {"train": (torch.rand(4, 5), labels[:4]), "test": (torch.rand(4, 5), labels[:4])}, 2,
                   [0.0] * 5, [1.0] * 5)
    with pytest.raises(DataError, match="images"):
        CorruptedTestSets(flat)
