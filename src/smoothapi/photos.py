"""Natural photographs available offline, split by photo, and the crops the study uses.

Two kinds of source, each photo listed once in :data:`PHOTOS` with its licence:

* **held out** (``split="test"``): colour photos that ship inside Python packages the
  ``dev`` extra installs: scikit-image's astronaut, chelsea, coffee and rocket,
  scikit-learn's china and flower, matplotlib's grace_hopper. Test crops, the demo and
  the tests use only these, so they run on any machine.
* **training** (``split="train"``): photographs from Debian's wallpaper packages
  ``mate-backgrounds`` (its ``nature/`` folder), ``plasma-workspace-wallpapers`` and
  ``lomiri-wallpapers-16.04`` / ``-20.04`` (Ubuntu's wallpaper contest photographs, each
  with its own Creative Commons licence; drawings, logos and abstract art left out).
  ``gnome-backgrounds``, ``ukui-wallpapers`` and ``sway-backgrounds`` were checked
  picture by picture (Debian bookworm): they hold drawings, renders and logos only, no
  photograph, so none of theirs is used.
  ``make photos`` unpacks them, without root, into ``~/.cache/smoothapi/photos``; an
  installed package under ``/usr/share`` is found too, and ``SMOOTHAPI_PHOTOS`` names
  another root.

No photo contributes to both splits. Every photo is read upright (EXIF), as RGB, and
scaled so its shorter side is at most :data:`MAX_SIDE` pixels, so crops of the large
wallpapers show scenes rather than texture. :func:`manifest` lists each file used with
its SHA-256, so a study can state exactly what it saw.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageOps

from .errors import InvalidInputError

__all__ = [
    "MAX_SIDE",
    "PHOTOS",
    "VALIDATION_PHOTOS",
    "Photo",
    "available_photos",
    "export_photos",
    "load_photo",
    "manifest",
    "photo_path",
    "split_photos",
    "test_crops",
    "train_crops",
]

MAX_SIDE = 512

_GPL = "GPL-2+ (Debian copyright file of the package)"


@dataclass(frozen=True)
class Photo:
    """One source photograph: where it comes from, its licence, and its split."""

    name: str
    source: str  # "skimage", "sklearn", "matplotlib" or a Debian package name
    file: str  # the file name or path inside the source
    licence: str
    split: str  # "train" or "test"


def _mate(name: str) -> Photo:
    return Photo(
        f"mate-{name.lower()}",
        "mate-backgrounds",
        f"share/backgrounds/mate/nature/{name}.jpg",
        _GPL,
        "train",
    )


def _lomiri(file: str, licence: str, release: str = "16.04") -> Photo:
    name = file.split("_by_")[0].lower().replace("_", "-")
    author = file.split("_by_")[1].removesuffix(".jpg").replace("_", " ")
    return Photo(f"lomiri-{name}", f"lomiri-wallpapers-{release}",
                 f"share/backgrounds/{file}", f"{licence} ({author})", "train")  # fmt: skip


def _plasma(name: str, size: str = "1920x1080.jpg") -> Photo:
    return Photo(
        f"plasma-{name.lower()}",
        "plasma-workspace-wallpapers",
        f"share/wallpapers/{name}/contents/images/{size}",
        _GPL,
        "train",
    )


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "astronaut.png", "public domain (NASA)", "test"),
    Photo("chelsea", "skimage", "chelsea.png", "CC0 (Stefan van der Walt)", "test"),
    Photo("coffee", "skimage", "coffee.png", "CC0 (Rachel Michetti)", "test"),
    Photo("rocket", "skimage", "rocket.jpg", "public domain (SpaceX)", "test"),
    Photo("china", "sklearn", "china.jpg", "CC-BY-2.0 (danielbuechele)", "test"),
    Photo("flower", "sklearn", "flower.jpg", "CC-BY-2.0 (danielbuechele)", "test"),
    Photo(
        "grace-hopper",
        "matplotlib",
        "grace_hopper.jpg",
        "public domain (U.S. Navy photograph)",
        "test",
    ),
    *(
        _mate(n)
        for n in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    ),
    *(
        _plasma(n)
        for n in (
            "BytheWater",
            "ColdRipple",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ),
    _plasma("ColorfulCups", "2560x1600.jpg"),
    _plasma("MilkyWay", "5120x2880.png"),
    _plasma("Volna", "5120x2880.jpg"),
    # Licences from the packages' Debian copyright file, one per picture.
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0"),
    _lomiri("Picture_0B_by_freespace.jpg", "CC-BY-4.0"),
    _lomiri("Picture_1A_by_freespace.jpg", "CC-BY-4.0"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    _lomiri("friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", "CC0-1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "20.04"),
    _lomiri("Infinite-Sea_by_Aury88.jpg", "CC-BY-SA-3.0", "20.04"),
)

#: Training photos held out whole as the validation split of the photo denoisers
#: (:mod:`smoothapi.studies.photo_mse`): epochs, sizes and levers are chosen on these,
#: never on the test photos. Every other "train" photo may be trained on.
VALIDATION_PHOTOS = ("mate-ladybird", "mate-storm", "plasma-kite", "lomiri-bridge",
                     "lomiri-wine")  # fmt: skip


def _debian_roots() -> list[Path]:
    roots = [
        os.environ.get("SMOOTHAPI_PHOTOS"),
        Path.home() / ".cache/smoothapi/photos/usr",
        "/usr",
    ]
    return [Path(r) for r in roots if r]


def photo_path(photo: Photo) -> Path | None:
    """The file of ``photo`` on this machine, or ``None`` when its source is not installed."""
    if photo.source == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent / photo.file
    if photo.source == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / photo.file
    if photo.source == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / photo.file
    for root in _debian_roots():
        if (root / photo.file).is_file():
            return root / photo.file
    return None


def available_photos(split: str | None = None) -> list[Photo]:
    """The photos whose files are on this machine (of ``split`` when given)."""
    found = []
    for photo in PHOTOS:
        if split not in (None, photo.split):
            continue
        try:
            path = photo_path(photo)
        except ImportError:
            continue
        if path is not None and path.is_file():
            found.append(photo)
    return found


def split_photos(
    train: Sequence[str] | None, validation: Sequence[str]
) -> tuple[list[Photo], list[Photo]]:
    """The training and validation photos of a denoiser run, whole photos: ``train`` by
    name (``None``: every available "train" photo), less the ``validation`` ones, which
    must all be here. Raises :class:`InvalidInputError` when either side is missing."""
    held_out = set(validation)
    chosen = [p for p in available_photos("train" if train is None else None)
              if (train is None or p.name in train) and p.name not in held_out]  # fmt: skip
    val = [p for p in available_photos() if p.name in held_out]
    if not chosen or len(val) != len(held_out):
        raise InvalidInputError("training or validation photos missing; run `make photos`")
    return chosen, val


def load_photo(photo: Photo, max_side: int = MAX_SIDE) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, upright, the shorter side scaled down to ``max_side``."""
    path = photo_path(photo)
    if path is None or not path.is_file():
        raise InvalidInputError(
            f"photo {photo.name!r} needs {photo.source}; run `make photos` to unpack it"
        )
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        scale = max_side / min(image.size)
        if scale < 1:
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()


def export_photos(dest: str | os.PathLike, split: str | None = "train",
                  max_side: int = MAX_SIDE) -> list[Path]:  # fmt: skip
    """Copy the Debian photos of ``split`` on this machine to ``dest``, each as
    :func:`load_photo` reads it (upright RGB, shorter side at most ``max_side``) saved as a
    JPEG (quality 95) under its own relative path, so ``SMOOTHAPI_PHOTOS=dest`` finds them
    on a machine without the packages (a lent GPU machine, say). Returns the files written."""
    written = []
    for photo in available_photos(split):
        if photo.source in ("skimage", "sklearn", "matplotlib"):
            continue  # shipped by pip packages: present wherever those are installed
        target = Path(dest) / photo.file
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_photo(photo, max_side)).save(target, format="JPEG", quality=95)
        written.append(target)
    return written


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(photos: Sequence[Photo]) -> list[dict[str, str]]:
    """One entry per photo: name, source package, file, licence, split and SHA-256."""
    return [
        {
            "name": p.name,
            "source": p.source,
            "file": p.file,
            "licence": p.licence,
            "split": p.split,
            # manifest() is for available photos, whose file exists (see available_photos)
            "sha256": _sha256(cast(Path, photo_path(p))),
        }
        for p in photos
    ]


def _crop(image: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    tile = Image.fromarray(image[top : top + side, left : left + side])
    if side != size:
        tile = tile.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(tile, dtype=np.uint8).transpose(2, 0, 1)


def train_crops(images: Sequence[np.ndarray], count: int, size: int, seed: int = 0) -> np.ndarray:
    """``(count, 3, size, size)`` uint8 random crops: photos taken in turn, a square side
    drawn log-uniformly between ``size`` and the shorter side, a random place, a random
    horizontal flip. The same arguments give the same crops."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        image = images[i % len(images)]
        short = min(image.shape[:2])
        side = int(round(np.exp(rng.uniform(np.log(min(size, short)), np.log(short)))))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        tile = _crop(image, top, left, side, size)
        out[i] = tile[:, :, ::-1] if rng.random() < 0.5 else tile
    return out


#: Test crops per photo: (square side as a share of the shorter side, grid per axis).
TEST_GRID = ((1.0, 1), (0.7, 2), (0.5, 3), (0.3, 2))
#: Test crops per photo; the first is the largest centred square.
CROPS_PER_PHOTO = sum(grid * grid for _, grid in TEST_GRID)


def test_boxes(shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(top, left, side) of the fixed test crops of a photo of ``shape``: the largest
    centred square, 2x2 grids at 0.7 and 0.3 and a 3x3 grid at 0.5 of the shorter side."""
    height, width = shape[:2]
    boxes = []
    for share, grid in TEST_GRID:
        side = int(min(height, width) * share)
        for row in range(grid):
            for col in range(grid):
                top = (height - side) * (row + 1) // (grid + 1)
                left = (width - side) * (col + 1) // (grid + 1)
                boxes.append((top, left, side))
    return boxes


def test_crops(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, list[tuple]]:
    """Fixed crops of each photo (:func:`test_boxes`, 18 per photo) at ``size`` pixels:
    ``(N, 3, size, size)`` uint8 and ``(photo index, top, left, side)`` per crop."""
    tiles, where = [], []
    for index, image in enumerate(images):
        for top, left, side in test_boxes(image.shape):
            tiles.append(_crop(image, top, left, side, size))
            where.append((index, top, left, side))
    return np.stack(tiles), where


if __name__ == "__main__":  # python -m smoothapi.photos export DEST
    import sys

    if sys.argv[1:2] != ["export"] or len(sys.argv) != 3:
        sys.exit("usage: python -m smoothapi.photos export DEST")
    files = export_photos(sys.argv[2])
    print(f"{len(files)} photos written under {sys.argv[2]}"
          f" ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB)")
