"""Batched pad-crop-flip: shapes, determinism, real windows of the padded image, flip rate, torchvision parity."""
import torch
import torchvision.transforms.functional as TF

from lottery.data.augment import draw_pad_crop_flip, pad_crop_flip

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


def images(count=16, size=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def test_shape_dtype_and_determinism():
    batch = images()
    first = pad_crop_flip(batch, *draw_pad_crop_flip(16, torch.Generator().manual_seed(4)))
    again = pad_crop_flip(batch, *draw_pad_crop_flip(16, torch.Generator().manual_seed(4)))
    other = pad_crop_flip(batch, *draw_pad_crop_flip(16, torch.Generator().manual_seed(5)))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_outputs_are_windows_of_the_padded_image():
    batch = images(count=64)
    offsets, flips = draw_pad_crop_flip(64, torch.Generator().manual_seed(0))
    out = pad_crop_flip(batch, offsets, flips)
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for index in range(64):
        top, left = offsets[index].tolist()
        window = padded[index, :, top:top + 10, left:left + 10]
        expected = window.flip(-1) if flips[index] else window
        assert torch.equal(out[index], expected)
    assert len({tuple(row) for row in offsets.tolist()}) > 20  # many distinct shifts, not one


def test_zero_offset_centre_is_identity_and_flip_mirrors():
    batch = images(count=2)
    centre = torch.tensor([[4, 4], [4, 4]])
    out = pad_crop_flip(batch, centre, torch.tensor([False, True]))
    assert torch.equal(out[0], batch[0])
    assert torch.equal(out[1], batch[1].flip(-1))


def test_offsets_span_the_padding_and_about_half_flip():
    offsets, flips = draw_pad_crop_flip(4000, torch.Generator().manual_seed(1))
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.45 < flips.float().mean().item() < 0.55


def test_normalised_fill_matches_torchvision_pad_then_normalise():
    batch = images(count=8, size=32)
    offsets, flips = draw_pad_crop_flip(8, torch.Generator().manual_seed(2))
    offsets[0] = torch.tensor([0, 8])  # force a corner so the padding is visible
    normalised = (batch.float() / 255 - MEAN) / STD
    ours = pad_crop_flip(normalised, offsets, flips, fill=(-MEAN / STD).flatten())
    for index in range(8):
        top, left = offsets[index].tolist()
        reference = TF.pad(batch[index], [4], fill=0)
        reference = TF.crop(reference, top, left, 32, 32)
        if flips[index]:
            reference = TF.hflip(reference)
        reference = TF.normalize(reference.float() / 255, MEAN.flatten().tolist(), STD.flatten().tolist())
        assert torch.allclose(ours[index], reference, atol=1e-5)
    raw_then_normalised = (pad_crop_flip(batch, offsets, flips).float() / 255 - MEAN) / STD
    assert torch.allclose(ours, raw_then_normalised, atol=1e-5)
