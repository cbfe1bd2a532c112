import torch

from raysemi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment, normalize


def _pair(h=20, w=30):
    """An image whose red channel encodes the mask, so image and mask must move together."""
    mask = torch.randint(0, 5, (h, w), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    image = torch.stack([mask * 50, torch.zeros_like(mask), torch.zeros_like(mask)])
    return image, mask


def test_same_seed_same_output_other_seed_differs():
    image, mask = _pair()
    augment = TrainAugment((16, 16), (0.8, 1.6), hflip=True, color_jitter=0.3)
    a = augment(image, mask, torch.Generator().manual_seed(7))
    b = augment(image, mask, torch.Generator().manual_seed(7))
    c = augment(image, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 16, 16) and a[1].shape == (16, 16)


def test_crop_flip_keep_image_and_mask_aligned():
    image, mask = _pair()
    augment = TrainAugment((12, 18), (1.0, 1.0), hflip=True, color_jitter=0.0)
    for seed in range(10):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_image[0].long(), out_mask.long() * 50)


def test_padding_fills_mask_with_ignore_and_image_with_zero():
    image, mask = _pair(10, 10)
    out_image, out_mask = TrainAugment((16, 16), (1.0, 1.0), hflip=False, color_jitter=0.0)(
        image, mask, torch.Generator().manual_seed(0)
    )
    assert (out_mask == 255).sum() == 16 * 16 - 100
    assert (out_image[:, out_mask == 255] == 0).all()


def test_unlabeled_images_have_no_mask():
    image, _ = _pair()
    out_image, out_mask = TrainAugment((8, 8))(image, None, torch.Generator().manual_seed(0))
    assert out_mask is None and out_image.shape == (3, 8, 8)


def test_normalize_uses_imagenet_statistics():
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(normalize(white)[:, 0, 0], torch.tensor(expected))
