"""Finding, decoding and caching image-classification datasets as in-memory uint8 tensors.

Every source is decoded once per machine into an ``ImageSet`` (N x C x H x W uint8 + int64 labels) and cached on
disk keyed by the source files' size and mtime, so a training run never touches JPEG/PNG decoding again: on a
2-core machine decoding per epoch would cost as much as the training itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fractal_space.io import atomic_path

ENV_DATA = "FRACTAL_SPACE_DATA"
ENV_CACHE = "FRACTAL_SPACE_CACHE"
DEFAULT_ROOT = Path("~/.cache/fractal_space/data")
NAMED = ("cifar10", "cifar100", "svhn", "fashion-mnist")
SPLITS = ("train", "test")


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded; the message lists every path looked at."""


@dataclass
class ImageSet:
    """One decoded split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), class names in label order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$FRACTAL_SPACE_DATA``, else ``~/.cache/fractal_space/data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def cache_dir() -> Path:
    """Where decoded tensors go: ``$FRACTAL_SPACE_CACHE``, else ``$XDG_CACHE_HOME/fractal_space/decoded``.

    A per-user cache, never the data root: shared data folders are often read-only or used by several people.
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fractal_space" / "decoded"


def _cache_key(kind: str, split: str, files: Sequence[Path]) -> str:
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([kind, split, stamp]).encode()).hexdigest()[:20]


def _cached(kind: str, split: str, files: Sequence[Path], decode: Callable[[], ImageSet]) -> ImageSet:
    """Decode ``files`` once and keep the result as a .pt file; a changed source (size/mtime) gets a new key."""
    name = kind.replace(":", "_").replace("/", "_")[-60:]
    path = cache_dir() / f"{name}-{split}-{_cache_key(kind, split, files)}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return ImageSet(blob["images"], blob["labels"], list(blob["classes"]))
    data = decode()
    try:
        with atomic_path(path) as tmp:
            torch.save({"images": data.images, "labels": data.labels, "classes": data.classes}, tmp)
    except OSError:  # a read-only cache only costs the decode next time
        pass
    return data


def _decode_all(blobs: Sequence[bytes], mode: str, where: str) -> torch.Tensor:
    """Decode encoded images (JPEG, PNG, ...) with PIL into one uint8 (N, C, H, W) tensor."""
    if not blobs:
        raise ValueError(f"no images in {where}")
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert(mode)) for b in blobs]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {where} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    images = torch.from_numpy(np.stack(arrays))
    return images[:, None] if mode == "L" else images.permute(0, 3, 1, 2).contiguous()


def _read_mode(channels: int | None, sample: bytes) -> str:
    """Grayscale sources stay 1-channel (the model gets in_chans=1); everything else is read as RGB."""
    if channels is None:
        channels = 1 if Image.open(io.BytesIO(sample)).mode in ("1", "L", "I", "I;16", "F") else 3
    return "L" if channels == 1 else "RGB"


def read_parquet(files: Sequence[Path], channels: int | None = None) -> ImageSet:
    """Hugging Face image-classification Parquet: one struct column with ``bytes``, an integer label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f) for f in files])
    where = ", ".join(str(f) for f in files)
    image_cols = [
        f.name for f in table.schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
    ]
    label_cols = [n for n in ("label", "fine_label", "labels") if n in table.column_names]
    if not image_cols or not label_cols:
        raise ValueError(f"{where}: expected an image struct column with 'bytes' and a 'label' column, "
                         f"found columns {table.column_names}")
    blobs = table.column(image_cols[0]).combine_chunks().field("bytes").to_pylist()
    # Arrow buffers are read-only; the copy gives torch a tensor it may own and write.
    labels = torch.from_numpy(table.column(label_cols[0]).to_numpy().astype(np.int64, copy=True))
    meta = (pq.read_schema(files[0]).metadata or {}).get(b"classes")
    classes = meta.decode().split(",") if meta else [str(i) for i in range(int(labels.max()) + 1)]
    images = _decode_all(blobs, _read_mode(channels, blobs[0]), where)
    return ImageSet(images, labels, classes)


def read_imagefolder(folder: Path) -> ImageSet:
    """A torchvision ImageFolder tree (``<class>/<image>``); all images must have one size."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(p, i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*"))
             if p.suffix.lower() in IMG_EXTENSIONS]
    if not files:
        raise ValueError(f"no images found under {folder} (expected <class>/<image> subfolders)")
    blobs = [p.read_bytes() for p, _ in files]
    images = _decode_all(blobs, _read_mode(None, blobs[0]), str(folder))
    return ImageSet(images, torch.tensor([i for _, i in files], dtype=torch.int64), classes)


def _read_idx(images: Path, labels: Path) -> ImageSet:
    """MNIST-style idx files, gzip-compressed or not."""
    def raw(path: Path) -> bytes:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()

    img, lab = raw(images), raw(labels)
    n, h, w = (int.from_bytes(img[i:i + 4], "big") for i in (4, 8, 12))
    pixels = torch.from_numpy(np.frombuffer(img, dtype=np.uint8, offset=16).reshape(n, 1, h, w).copy())
    targets = torch.from_numpy(np.frombuffer(lab, dtype=np.uint8, offset=8).astype(np.int64))
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    return ImageSet(pixels, targets, classes)


def _read_cifar_pickles(files: Sequence[Path], meta: Path, fine: bool) -> ImageSet:
    batches = [pickle.loads(f.read_bytes(), encoding="latin1") for f in files]
    key = "fine_labels" if fine else "labels"
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[key] for b in batches]).astype(np.int64)
    names = pickle.loads(meta.read_bytes(), encoding="latin1")
    classes = names["fine_label_names" if fine else "label_names"]
    return ImageSet(torch.from_numpy(images.copy()), torch.from_numpy(labels), list(classes))


def _read_svhn_mat(path: Path) -> ImageSet:
    from scipy.io import loadmat  # torchvision's SVHN format needs scipy as well

    mat = loadmat(str(path))
    images = torch.from_numpy(np.transpose(mat["X"], (3, 2, 0, 1)).copy())
    labels = torch.from_numpy(mat["y"].astype(np.int64).squeeze(1) % 10)  # SVHN stores digit 0 as label 10
    return ImageSet(images, labels, [str(i) for i in range(10)])


@dataclass
class _Layout:
    """One way a named dataset can sit on disk: the files it needs and how to read them."""

    files: list[Path]
    read: Callable[[], ImageSet]


def _parquet_shards(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}.parquet")) or sorted(folder.glob(f"{split}-*.parquet"))


def _named_layouts(name: str, root: Path, split: str) -> list[_Layout]:
    """The layouts looked for, in order: Parquet shards under ``<root>/<name>/``, then the torchvision layout."""
    train = split == "train"
    shards = _parquet_shards(root / name, split)
    channels = 1 if name == "fashion-mnist" else 3
    layouts = [_Layout(shards or [root / name / f"{split}.parquet"], lambda: read_parquet(shards, channels))]
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        files = [d / f"data_batch_{i}" for i in range(1, 6)] if train else [d / "test_batch"]
        layouts.append(_Layout([*files, d / "batches.meta"],
                               lambda: _read_cifar_pickles(files, d / "batches.meta", fine=False)))
    elif name == "cifar100":
        d = root / "cifar-100-python"
        layouts.append(_Layout([d / split, d / "meta"], lambda: _read_cifar_pickles([d / split], d / "meta", True)))
    elif name == "svhn":
        mat = root / f"{split}_32x32.mat"
        layouts.append(_Layout([mat], lambda: _read_svhn_mat(mat)))
    elif name == "fashion-mnist":
        prefix = "train" if train else "t10k"
        for d in (root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            for ext in (".gz", ""):
                img, lab = d / f"{prefix}-images-idx3-ubyte{ext}", d / f"{prefix}-labels-idx1-ubyte{ext}"
                layouts.append(_Layout([img, lab], lambda img=img, lab=lab: _read_idx(img, lab)))
    return layouts


def _download(name: str, root: Path) -> None:
    """Fetch a named dataset in torchvision's layout; raises on any failure (e.g. no network)."""
    import torchvision.datasets as tvd

    for train in (True, False):
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=train, download=True)
        elif name == "cifar100":
            tvd.CIFAR100(str(root), train=train, download=True)
        elif name == "svhn":
            tvd.SVHN(str(root), split="train" if train else "test", download=True)
        else:
            tvd.FashionMNIST(str(root), train=train, download=True)


def _how_to_provide(name: str, root: Path) -> str:
    return (f"provide the data by placing Parquet shards at {root / name}/train.parquet and test.parquet "
            f"(Hugging Face export), or the torchvision files under {root}; point --data-dir or ${ENV_DATA} at "
            f"another root, or allow network access so torchvision can download it")


def load_split(dataset: str, split: str, data_dir: str | os.PathLike[str] | None = None,
               download: bool = True) -> ImageSet:
    """Load one split (``train``/``test``) of a dataset spec, decoding and caching on first use.

    ``dataset`` is a name in ``NAMED``, ``imagefolder:<path>`` (``<path>/train/<class>/...`` and ``test/`` or ``val/``;
    a tree without a ``train`` folder is all training data) or ``parquet:<path>`` (a folder with ``<split>.parquet`` or
    ``<split>-*.parquet`` shards, or one .parquet file used as the train split).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = resolve_data_root(data_dir)
    kind, _, arg = dataset.partition(":")
    if kind in ("imagefolder", "parquet") and arg:
        return _load_path_dataset(kind, Path(arg).expanduser(), split)
    if dataset not in NAMED:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(NAMED)}, "
                         f"imagefolder:<path> or parquet:<path>")
    layouts = _named_layouts(dataset, root, split)
    for layout in layouts:
        if all(f.is_file() for f in layout.files):
            return _pad_to_32(_cached(dataset, split, layout.files, layout.read))
    looked = "; ".join(" + ".join(str(f) for f in layout.files) for layout in layouts)
    if download:
        try:
            _download(dataset, root)
        except Exception as err:  # noqa: BLE001 - any download failure becomes the same actionable error
            raise DataNotFoundError(f"{dataset} {split} split not found (looked at: {looked}); download into {root} "
                                    f"failed ({type(err).__name__}: {err}); {_how_to_provide(dataset, root)}") from err
        return load_split(dataset, split, root, download=False)
    raise DataNotFoundError(f"{dataset} {split} split not found (looked at: {looked}); "
                            f"{_how_to_provide(dataset, root)}")


def _pad_to_32(data: ImageSet) -> ImageSet:
    """Zero-pad smaller images (Fashion-MNIST's 28x28) to 32x32 so the CIFAR-style five-pool networks apply."""
    h, w = data.images.shape[-2:]
    if h >= 32 and w >= 32:
        return data
    pad = ((32 - w) // 2, (32 - w + 1) // 2, (32 - h) // 2, (32 - h + 1) // 2)
    return ImageSet(torch.nn.functional.pad(data.images, pad), data.labels, data.classes)


def _load_path_dataset(kind: str, path: Path, split: str) -> ImageSet:
    if kind == "parquet":
        if path.is_file():
            looked, files = f"{path} (a single file is the train split)", [path] if split == "train" else []
        else:
            looked, files = f"{path / split}.parquet; {path / split}-*.parquet", _parquet_shards(path, split)
        if not files:
            raise DataNotFoundError(f"parquet:{path} has no {split} split (looked at: {looked})")
        return _cached(f"parquet:{path}", split, files, lambda: read_parquet(files))
    if (path / "train").is_dir():
        candidates = [path / "train"] if split == "train" else [path / "test", path / "val"]
    else:  # a tree without split folders is all training data
        candidates = [path] if split == "train" else []
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        looked = "; ".join(str(c) for c in candidates) or f"{path / 'train'} (needed for a test/val split)"
        raise DataNotFoundError(f"imagefolder:{path} has no {split} split (looked at: {looked})")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _cached(f"imagefolder:{path}", split, files, lambda: read_imagefolder(folder))
