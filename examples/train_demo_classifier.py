"""Train the bundled demo classifier and write the bundled sample images.

The classifier is ``small_cnn`` trained on real Fashion-MNIST with Gaussian noise
augmentation (Cohen et al., 2019): every training image gets fresh noise
``N(0, 0.25^2 I)`` added in the [0, 1] pixel space, the same space where
``SmoothedClassifier`` adds its noise. A classifier trained this way still
recognises noisy images, so the smoothed classifier built on it certifies
non-trivial l2 radii at ``sigma = 0.25``.

Run from the repository root (3 epochs, about 4 minutes on 2 CPU cores)::

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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from smoothapi import LocalModelAdapter
from smoothapi.training import FASHION_MNIST_CLASSES, create_classifier, load_fashion_mnist

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "smoothapi" / "data"
MODEL_NAME = "fashion_mnist_small_cnn_sigma0.25.safetensors"
SAMPLES_NAME = "fashion-mnist-samples"

SIGMA = 0.25
MEAN, STD = [0.2860], [0.3530]  # Fashion-MNIST training-set pixel mean and std
SEED = 0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 28, 28)`` in [0, 1]."""
    return torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)


def accuracy(adapter: LocalModelAdapter, images: torch.Tensor, labels: torch.Tensor,
             sigma: float = 0.0, seed: int = SEED) -> float:
    """Top-1 accuracy on ``images``, each with one draw of N(0, sigma^2) noise when sigma > 0."""
    adapter.module.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = images[start:start + 1000]
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator)
            correct += (adapter.logits(x).argmax(dim=1) == labels[start:start + 1000]).sum().item()
    return correct / len(images)


def train(epochs: int, batch_size: int, lr: float) -> tuple[LocalModelAdapter, float, float]:
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    x_train, y_train = to_tensor(train_images), torch.from_numpy(train_labels)
    x_test, y_test = to_tensor(test_images), torch.from_numpy(test_labels)

    model = create_classifier("small_cnn", in_channels=1, num_classes=10)
    adapter = LocalModelAdapter(model, mean=MEAN, std=STD, class_names=list(FASHION_MNIST_CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(SEED)

    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()  # the adapter put it in eval mode; BatchNorm must learn its statistics
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            x, y = x_train[batch], y_train[batch]
            noise = SIGMA * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(adapter.logits(x + noise), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
        clean = accuracy(adapter, x_test, y_test)
        print(f"epoch {epoch}/{epochs}: train loss {total_loss / seen:.4f}, "
              f"test accuracy {clean:.4f} clean, {time.perf_counter() - started:.1f} s", flush=True)

    adapter.module.eval()
    clean = accuracy(adapter, x_test, y_test)
    noisy = accuracy(adapter, x_test, y_test, sigma=SIGMA)
    return adapter, clean, noisy


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
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--samples-only", action="store_true",
                        help="only write the sample images, do not train")
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    samples = write_samples(args.out_dir / SAMPLES_NAME)
    print(f"wrote {len(samples)} sample images to {args.out_dir / SAMPLES_NAME}")
    if args.samples_only:
        return

    adapter, clean, noisy = train(args.epochs, args.batch_size, args.lr)
    print(f"test accuracy: {clean:.4f} clean, {noisy:.4f} with N(0, {SIGMA}^2) noise")
    path = args.out_dir / MODEL_NAME
    adapter.save(
        path,
        dataset="fashion-mnist",
        epochs=args.epochs,
        sigma_train=SIGMA,
        noise_augmentation=True,
        test_accuracy=round(clean, 4),
        test_accuracy_noisy=round(noisy, 4),
        seed=SEED,
    )
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
