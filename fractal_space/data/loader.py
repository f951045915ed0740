"""Splits, normalisation and batch augmentation on in-memory tensors.

Augmentation runs on whole batches (one flip mask, one gather for the translation) instead of per-image PIL
transforms, so no DataLoader worker processes are needed and both CPU cores stay with the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fractal_space.data.sources import NAMED, DataNotFoundError, ImageSet, load_split

AUGMENTS = ("none", "+", "++")
TRANSLATE = 4  # the paper's "+": translation by up to 4 px
#: ``val_size=None`` draws this many validation images, or a tenth of the training split when that is smaller
#: (5,000 for CIFAR, SVHN and Fashion-MNIST; 70 for a 700-image folder).
AUTO_VAL_SIZE, AUTO_VAL_FRACTION = 5000, 0.1


def auto_val_size(num_train: int) -> int:
    """The validation split size ``val_size=None`` means for a training split of ``num_train`` images."""
    return min(AUTO_VAL_SIZE, int(num_train * AUTO_VAL_FRACTION))


@dataclass
class Normalize:
    """Per-channel mean/std on the 0..1 scale, computed from the dataset's full training split."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, images: torch.Tensor, max_images: int = 10_000) -> Normalize:
        """Statistics of an evenly strided sample of at most ``max_images`` (exact to ~1e-3, and cheap)."""
        sample = images[:: max(1, len(images) // max_images)]
        x = sample.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64).div_(255)
        return cls(tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 normalised; zero is the mean, so zero padding afterwards is mean padding."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255
        scale = 1 / (torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255)
        return (images.float() - mean) * scale


def augment_batch(x: torch.Tensor, preset: str, generator: torch.Generator) -> torch.Tensor:
    """Random mirror + translation by up to 4 px of a normalised batch; ``+`` pads with zeros, ``++`` reflects."""
    if preset not in AUGMENTS:
        raise ValueError(f"unknown augment preset {preset!r}; expected one of {AUGMENTS}")
    if preset == "none":
        return x
    b, _, h, w = x.shape
    shift = torch.randint(0, 2 * TRANSLATE + 1, (2, b), generator=generator, device=generator.device)
    flip = torch.rand(b, generator=generator, device=generator.device) < 0.5
    padded = torch.nn.functional.pad(x, (TRANSLATE,) * 4, mode="constant" if preset == "+" else "reflect")
    rows = (shift[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    cols = torch.where(flip.view(b, 1), w - 1 - cols, cols) + shift[1].view(b, 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols.view(b, 1, 1, w)]


class BatchLoader:
    """Iterates (images, labels) batches of an in-memory uint8 split: normalised, augmented, on ``device``.

    The shuffle order and augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run sees the same
    batches as an uninterrupted one. ``max_batches`` makes an epoch the first batches of that epoch's shuffle (a
    random subset of the split, new each epoch) instead of a whole pass.
    """

    def __init__(self, data: ImageSet, norm: Normalize, batch_size: int, augment: str = "none",
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, device: str | torch.device = "cpu",
                 channels_last: bool = False, max_batches: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment preset {augment!r}; expected one of {AUGMENTS}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.norm, self.batch_size, self.augment = norm, batch_size, augment
        self.shuffle, self.seed, self.drop_last, self.channels_last = shuffle, seed, drop_last, channels_last
        self.max_batches = max_batches
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return full if self.max_batches is None else min(full, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle/augmentation stream for ``epoch`` (used by resume)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else None
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size) if order is None else \
                order[i * self.batch_size:(i + 1) * self.batch_size]
            x = augment_batch(self.norm(self.images[idx]), self.augment, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


@dataclass
class DataSplits:
    """Train / validation / test splits of one dataset, with the normalisation fitted on its training split."""

    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    norm: Normalize
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]


_NORMS: dict[str, Normalize] = {}


def training_normalization(full: ImageSet) -> Normalize:
    """``Normalize.fit`` of a training split, once per process and decoded source: each search trial builds its own
    ``Trainer``, and fitting CIFAR-10's statistics again cost each of them about 0.3 s."""
    if full.source is None:
        return Normalize.fit(full.images)
    if full.source not in _NORMS:
        _NORMS[full.source] = Normalize.fit(full.images)
    return _NORMS[full.source]


def _take(data: ImageSet, idx: torch.Tensor) -> ImageSet:
    return ImageSet(data.images[idx], data.labels[idx], data.classes)


def load_splits(dataset: str, data_dir: str | os.PathLike[str] | None = None, val_size: int | None = None,
                train_subset: int | None = None, val_seed: int = 0, download: bool = True,
                with_test: bool = True) -> DataSplits:
    """Carve a fixed-seed validation split from train, then optionally keep the first ``train_subset`` of the rest.

    The validation set depends only on ``val_seed`` and ``val_size`` (None: ``auto_val_size``), never on
    ``train_subset``, so cheap search trials and full runs select on the same images; the test split is never used
    for selection. ``imagefolder:`` and
    ``parquet:`` datasets without a test split get ``test=None``.
    """
    full = load_split(dataset, "train", data_dir, download)
    n = len(full)
    if val_size is None:
        val_size = auto_val_size(n)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {dataset} ({n} training images), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(val_seed))
    val_idx, rest = perm[:val_size].sort().values, perm[val_size:].sort().values
    if train_subset is not None:
        if not 0 < train_subset <= len(rest):
            raise ValueError(f"train_subset must be in [1, {len(rest)}] ({n} training images minus val_size "
                             f"{val_size}), got {train_subset}")
        rest = rest[:train_subset]
    test = None
    if with_test:
        try:
            test = load_split(dataset, "test", data_dir, download)
        except DataNotFoundError:
            if dataset in NAMED:  # named datasets always have a test split: its absence is an error
                raise
    return DataSplits(train=_take(full, rest), val=_take(full, val_idx), test=test, norm=training_normalization(full),
                      num_classes=len(full.classes), in_chans=full.images.shape[1],
                      image_size=tuple(full.images.shape[-2:]))
