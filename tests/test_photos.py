"""Natural photos: licences listed, split by photo, fixed and reproducible crops."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from smoothapi import photos
from smoothapi.errors import InvalidInputError

pytest.importorskip("skimage")
pytest.importorskip("sklearn")


def test_every_photo_has_a_licence_and_one_split():
    names = [p.name for p in photos.PHOTOS]
    assert len(names) == len(set(names))
    assert all(p.licence and p.split in ("train", "test") for p in photos.PHOTOS)
    files = {(p.source, p.file) for p in photos.PHOTOS}
    assert len(files) == len(photos.PHOTOS)  # no file listed twice (so never in both splits)


def test_held_out_photos_ship_with_pip_packages():
    found = photos.available_photos("test")
    assert [p.name for p in found] == [p.name for p in photos.PHOTOS if p.split == "test"]
    assert len(found) >= 7


def test_manifest_hashes_the_files():
    photo = photos.available_photos("test")[0]
    [entry] = photos.manifest([photo])
    expected = hashlib.sha256(photos.photo_path(photo).read_bytes()).hexdigest()
    assert entry["sha256"] == expected and entry["split"] == "test" and entry["licence"]


def test_load_photo_is_upright_rgb_and_bounded():
    image = photos.load_photo(next(p for p in photos.PHOTOS if p.name == "astronaut"), max_side=256)
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)


def test_load_photo_applies_exif_orientation(tmp_path, monkeypatch):
    wide = Image.new("RGB", (40, 20), "red")
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "phone.jpg"
    wide.save(path, exif=exif)
    photo = photos.Photo("phone", "test", "phone.jpg", "CC0", "test")
    monkeypatch.setattr(photos, "photo_path", lambda p: path)
    assert photos.load_photo(photo).shape == (40, 20, 3)


def test_missing_debian_photo_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(photos, "_debian_roots", lambda: [])
    photo = next(p for p in photos.PHOTOS if p.split == "train")
    assert photos.photo_path(photo) is None
    assert photo not in photos.available_photos()
    with pytest.raises(InvalidInputError, match="make photos"):
        photos.load_photo(photo)


def test_test_crops_are_fixed_and_inside_the_photo():
    images = [np.zeros((300, 451, 3), np.uint8), np.zeros((512, 400, 3), np.uint8)]
    tiles, where = photos.test_crops(images, 32)
    assert tiles.shape == (36, 3, 32, 32)
    for index, top, left, side in where:
        height, width = images[index].shape[:2]
        assert top >= 0 and top + side <= height and left >= 0 and left + side <= width
    assert where == photos.test_crops(images, 32)[1]


def test_train_crops_are_reproducible_and_vary():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)]
    a = photos.train_crops(images, 20, 24, seed=3)
    b = photos.train_crops(images, 20, 24, seed=3)
    c = photos.train_crops(images, 20, 24, seed=4)
    assert a.shape == (20, 3, 24, 24) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({tile.tobytes() for tile in a}) == 20


def test_exported_photos_are_found_elsewhere_as_load_photo_reads_them(tmp_path, monkeypatch):
    """A machine without the Debian packages reads the exported copies through
    SMOOTHAPI_PHOTOS, upright and at most MAX_SIDE on the shorter side."""
    kleiber = next(p for p in photos.PHOTOS if p.name == "lomiri-kleiber")
    source = tmp_path / "debian"
    (source / kleiber.file).parent.mkdir(parents=True)
    rows, cols = np.mgrid[0:700, 0:1000]
    smooth = [127 + 100 * np.sin(rows / 37 + k) * np.cos(cols / 53 - k) for k in range(3)]
    pixels = np.stack(smooth, axis=-1).astype(np.uint8)  # smooth, as photos are
    Image.fromarray(pixels).save(source / kleiber.file, quality=98)
    monkeypatch.setattr(photos, "_debian_roots", lambda: [source])
    original = photos.load_photo(kleiber)
    [written] = photos.export_photos(tmp_path / "export")
    assert written == tmp_path / "export" / kleiber.file
    monkeypatch.setattr(photos, "_debian_roots", lambda: [tmp_path / "export"])
    copy = photos.load_photo(kleiber)
    assert copy.shape == original.shape == (512, 731, 3)
    assert np.abs(copy.astype(int) - original.astype(int)).mean() < 2  # JPEG at quality 95
