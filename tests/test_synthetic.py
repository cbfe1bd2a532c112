import hashlib

import numpy as np

from raysemi.data.formats import GenericFormat, read_png_indices
from raysemi.data.synthetic import CLASSES, ensure_synthetic, render_scene, write_synthetic


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    write_synthetic(tmp_path / "a", 6, 2, 48, 64, seed=3)
    write_synthetic(tmp_path / "b", 6, 2, 48, 64, seed=3)
    write_synthetic(tmp_path / "c", 6, 2, 48, 64, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_layout_is_the_generic_format(synthetic_root):
    reader = GenericFormat(synthetic_root)
    assert reader.classes.names == CLASSES
    train = reader.samples("train")
    assert len(train) == 24 and len(reader.samples("val")) == 8
    mask = read_png_indices(train[0].mask)
    assert mask.shape == (48, 64) and mask.max() < len(CLASSES)


def test_every_class_occurs_with_varied_sizes_and_colours():
    rng = np.random.default_rng(0)
    areas = {c: [] for c in range(1, len(CLASSES))}
    colours = {c: [] for c in range(1, len(CLASSES))}
    for _ in range(40):
        image, mask = render_scene(rng, 96, 128)
        for c in areas:
            if (mask == c).sum() > 20:
                areas[c].append((mask == c).sum())
                colours[c].append(image[mask == c].mean(0))
    for c in areas:
        assert len(areas[c]) >= 10, CLASSES[c]
        assert max(areas[c]) > 4 * min(areas[c])  # sizes vary a lot
        # mean colour per object varies more across objects than a colour-coded class would allow
        assert np.std(np.stack(colours[c]), axis=0).mean() > 20


def test_ensure_synthetic_caches(tmp_path):
    first = ensure_synthetic(3, 2, 32, 32, seed=0, cache=tmp_path)
    stamp = (first / "classes.json").stat().st_mtime_ns
    assert ensure_synthetic(3, 2, 32, 32, seed=0, cache=tmp_path) == first
    assert (first / "classes.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left
