"""Train the bundled demo classifier and write the bundled sample images.

The classifier is ``small_cnn`` trained on real Fashion-MNIST with Gaussian noise
augmentation (Cohen et al., 2019): every training image gets fresh noise
``N(0, 0.25^2 I)`` added in the [0, 1] pixel space, the same space where
``SmoothedClassifier`` adds its noise. A classifier trained this way still
recognises noisy images, so the smoothed classifier built on it certifies
non-trivial l2 radii at ``sigma = 0.25``.

Run from the repository root (5 epochs, about 6 minutes on 2 CPU cores)::

    .venv/bin/python examples/train_demo_classifier.py

It writes, under ``src/smoothapi/data/``:

* ``fashion_mnist_small_cnn_sigma0.25.safetensors``: the weights plus the metadata
  that rebuilds the model (``LocalModelAdapter.from_checkpoint``);
* ``fashion-mnist-samples/<class-name>/<test-index>.png``: the first two test images
  of each class (20 images, 28x28 grayscale), in ImageFolder layout.

``--samples-only`` writes just the images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from smoothapi.training import (
    FASHION_MNIST_CLASSES,
    create_classifier,
    load_dataset,
    load_fashion_mnist,
)
from smoothapi.training.loop import TrainConfig
from smoothapi.training.train import train_classifier

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "smoothapi" / "data"
MODEL_NAME = "fashion_mnist_small_cnn_sigma0.25.safetensors"
SAMPLES_NAME = "fashion-mnist-samples"

SIGMA = 0.25
MEAN, STD = [0.2860], [0.3530]  # Fashion-MNIST training-set pixel mean and std
SEED = 0


def train(out_dir: Path, config: TrainConfig) -> Path:
    """Noise-augmented training with the library's own recipe; returns the checkpoint."""
    train_set = load_dataset("fashion-mnist", "train")
    test_set = load_dataset("fashion-mnist", "test")
    torch.manual_seed(SEED)
    model = create_classifier("small_cnn", in_channels=1, num_classes=10)
    history = train_classifier(
        model, train_set, out_dir=out_dir, mean=MEAN, std=STD,
        class_names=list(FASHION_MNIST_CLASSES), noise_sigma=SIGMA, test_set=test_set,
        eval_sigma=SIGMA, eval_size=len(test_set), config=config,
        metadata={"dataset": "fashion-mnist", "seed": SEED},
    )
    for record in history:
        print(json.dumps(record))
    return out_dir / "classifier.safetensors"


def write_samples(out_dir: Path, per_class: int = 2) -> list[Path]:
    """The first ``per_class`` test images of each class as ``<class>/<test-index>.png``."""
    images, labels = load_fashion_mnist("test")
    written = []
    for class_index, class_name in enumerate(FASHION_MNIST_CLASSES):
        folder = out_dir / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for test_index in np.flatnonzero(labels == class_index)[:per_class]:
            path = folder / f"{test_index}.png"
            Image.fromarray(images[test_index], mode="L").save(path, optimize=True)
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--samples-only", action="store_true",
                        help="only write the sample images, do not train")
    args = parser.parse_args()

    torch.set_num_threads(2)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    samples = write_samples(args.out_dir / SAMPLES_NAME)
    print(f"wrote {len(samples)} sample images to {args.out_dir / SAMPLES_NAME}")
    if args.samples_only:
        return

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam",
                         lr=args.lr, lr_step=2, lr_gamma=0.3, seed=SEED)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = train(Path(work), config)
        path = args.out_dir / MODEL_NAME
        shutil.copyfile(checkpoint, path)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB)")

if __name__ == "__main__":
    main()
