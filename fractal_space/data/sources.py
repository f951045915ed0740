"""Finding, decoding and caching image-classification datasets as in-memory uint8 tensors.

Every source is decoded once per machine into an ``ImageSet`` (N x C x H x W uint8 + int64 labels) and cached on
disk keyed by the source files' size and mtime, so a training run never touches JPEG/PNG decoding again: on a
2-core machine decoding per epoch would cost as much as the training itself.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fractal_space.core.files import atomic_path

ENV_DATA = "FRACTAL_SPACE_DATA"
ENV_CACHE = "FRACTAL_SPACE_CACHE"
ENV_VERBOSE = "FRACTAL_SPACE_VERBOSE"  # "1": a missing-data error lists every path looked at
DEFAULT_ROOT = Path("~/.cache/fractal_space/data")
NAMED = ("cifar10", "cifar100", "svhn", "fashion-mnist")
SPLITS = ("train", "test")
PATH_KINDS = ("imagefolder", "parquet")
#: Folders an image-folder tree may hold its held-out (test) split in, in the order they are looked for.
HELD_OUT_FOLDERS = ("test", "validation", "val")
log = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded. The message is one short line (where it looked first and
    how to provide the data); ``paths`` holds every path looked at, which the message lists with
    ``FRACTAL_SPACE_VERBOSE=1``."""

    def __init__(self, message: str, paths: Sequence[Path] = ()) -> None:
        self.paths = list(paths)
        if self.paths and os.environ.get(ENV_VERBOSE) == "1":
            message += f" (looked at: {'; '.join(str(p) for p in self.paths)})"
        super().__init__(message)


class DataError(ValueError):
    """Data is on disk but cannot be used (an image that does not decode, mixed image sizes, a Parquet file without
    image or label columns); the message names the file. A ValueError, so command lines report it as bad input."""


@dataclass
class ImageSet:
    """One decoded split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), class names in label order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str | None = None  # the decode-cache file it came from (a changed source gets another); None: in memory

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
        return ImageSet(blob["images"], blob["labels"], list(blob["classes"]), str(path))
    data = decode()
    try:
        with atomic_path(path) as tmp:
            torch.save({"images": data.images, "labels": data.labels, "classes": data.classes}, tmp)
    except OSError:  # a read-only cache only costs the decode next time
        pass
    return dataclasses.replace(data, source=str(path))


def _open(blob: bytes, name: Callable[[], str]) -> Image.Image:
    """The decoded image, or a one-line DataError naming it (a truncated file, a text file named .png, ...)."""
    try:
        image = Image.open(io.BytesIO(blob))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = (str(err).splitlines() or [""])[0][:80]
        raise DataError(f"{name()} is not a readable image ({type(err).__name__}: {reason}); fix or remove it") \
            from None
    return image


def _decode_all(blobs: Sequence[bytes], mode: str, where: str, name_of: Callable[[int], str]) -> torch.Tensor:
    """Decode encoded images (JPEG, PNG, ...) with PIL into one uint8 (N, C, H, W) tensor; ``name_of(i)`` names
    image i in an error."""
    if not blobs:
        raise DataError(f"no images in {where}")
    arrays = [np.asarray(_open(b, lambda i=i: name_of(i)).convert(mode)) for i, b in enumerate(blobs)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images in {where} have different sizes {sorted(shapes)[:4]}; resize them to one size first")
    images = torch.from_numpy(np.stack(arrays))
    return images[:, None] if mode == "L" else images.permute(0, 3, 1, 2).contiguous()


def _read_mode(channels: int | None, sample: bytes, name: str) -> str:
    """Grayscale sources stay 1-channel (the model gets in_chans=1); everything else is read as RGB."""
    if channels is None:
        channels = 1 if _open(sample, lambda: name).mode in ("1", "L", "I", "I;16", "F") else 3
    return "L" if channels == 1 else "RGB"


def read_parquet(files: Sequence[Path], channels: int | None = None) -> ImageSet:
    """Hugging Face image-classification Parquet: one struct column with ``bytes``, an integer label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables)
    where = ", ".join(str(f) for f in files)
    ends = np.cumsum([len(t) for t in tables])

    def name_of(row: int) -> str:
        shard = int(np.searchsorted(ends, row, side="right"))
        return f"row {row - (ends[shard - 1] if shard else 0)} of {files[shard]}"

    image_cols = [
        f.name for f in table.schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
    ]
    label_cols = [n for n in ("label", "fine_label", "labels") if n in table.column_names]
    if not image_cols or not label_cols:
        raise DataError(f"{where}: expected an image struct column with 'bytes' and a 'label' column, "
                         f"found columns {table.column_names}")
    blobs = table.column(image_cols[0]).combine_chunks().field("bytes").to_pylist()
    # Arrow buffers are read-only; the copy gives torch a tensor it may own and write.
    labels = torch.from_numpy(table.column(label_cols[0]).to_numpy().astype(np.int64, copy=True))
    meta = (pq.read_schema(files[0]).metadata or {}).get(b"classes")
    classes = meta.decode().split(",") if meta else [str(i) for i in range(int(labels.max()) + 1)]
    images = _decode_all(blobs, _read_mode(channels, blobs[0], name_of(0)), where, name_of)
    return ImageSet(images, labels, classes)


def read_imagefolder(folder: Path) -> ImageSet:
    """A torchvision ImageFolder tree (``<class>/<image>``); all images must have one size."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(p, i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*"))
             if p.suffix.lower() in IMG_EXTENSIONS]
    if not files:
        raise DataError(f"no images found under {folder} (expected <class>/<image> subfolders)")
    blobs = [p.read_bytes() for p, _ in files]
    images = _decode_all(blobs, _read_mode(None, blobs[0], str(files[0][0])), str(folder), lambda i: str(files[i][0]))
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


def parquet_with_test_subset(source: Path, test_images: int, folder: Path) -> str:
    """A ``parquet:`` dataset at ``folder`` whose training split is ``source``'s ``train.parquet`` (linked, so the
    decoded cache of it is shared by every run that uses ``folder``) and whose test split is the first ``test_images``
    rows of ``source``'s ``test.parquet``: a final stage or engine test that costs seconds, not the whole split.

    Reused when present; otherwise made whole in a private folder beside it and renamed into place, so that processes
    making it at the same time never see half of it."""
    import pyarrow.parquet as pq

    if not (folder / "test.parquet").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        (staging / "train.parquet").symlink_to((source / "train.parquet").resolve())
        pq.write_table(pq.read_table(source / "test.parquet").slice(0, test_images), staging / "test.parquet")
        try:
            staging.rename(folder)
        except OSError:
            if (folder / "test.parquet").exists():  # another process made it first
                shutil.rmtree(staging)
            else:  # a half-made folder, not made here (this function only ever renames a whole one into place)
                shutil.rmtree(folder)
                staging.rename(folder)
    return f"parquet:{folder}"


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


def _torchvision_download(name: str, root: Path) -> None:
    """Fetch a named dataset in torchvision's layout into ``root``; raises on any failure (e.g. no network)."""
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


def _download(name: str, root: Path) -> None:
    """Download into a temporary folder under ``root`` and move the files into place only when all arrived, so a
    failed download leaves ``root`` as it was (torchvision itself leaves empty or partial folders behind)."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        _torchvision_download(name, staging)
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            dest = root / src.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            if not any(folder.iterdir()):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _not_found(dataset: str, split: str, root: Path, layouts: Sequence[_Layout], why: str = "") -> DataNotFoundError:
    """A short, actionable error: where the data was looked for first, and the two ways to provide it."""
    paths = [f for layout in layouts for f in layout.files]
    return DataNotFoundError(f"{dataset} ({split} split) not found under {root}: looked first for {paths[0]} "
                             f"(+{len(paths) - 1} more paths, {ENV_VERBOSE}=1 lists them){why}; put it there, "
                             f"or point --data-dir or {ENV_DATA} at a folder that holds it "
                             f"(README: Data)", paths)


def check_dataset_spec(dataset: str) -> None:
    """One-line ValueError unless ``dataset`` is a name in ``NAMED``, ``imagefolder:<path>`` or ``parquet:<path>``
    (whether the data is there is found out when it is loaded)."""
    kind, _, arg = dataset.partition(":")
    if dataset not in NAMED and not (kind in PATH_KINDS and arg):
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(NAMED)}, "
                         f"imagefolder:<path> or parquet:<path>")


def load_split(dataset: str, split: str, data_dir: str | os.PathLike[str] | None = None,
               download: bool = True) -> ImageSet:
    """Load one split (``train``/``test``) of a dataset spec, decoding and caching on first use.

    ``dataset`` is a name in ``NAMED``, ``imagefolder:<path>`` (``<path>/train/<class>/...`` and ``test/`` or ``val/``;
    a tree without a ``train`` folder is all training data) or ``parquet:<path>`` (a folder with ``<split>.parquet`` or
    ``<split>-*.parquet`` shards, or one .parquet file used as the train split).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    check_dataset_spec(dataset)
    root = resolve_data_root(data_dir)
    kind, _, arg = dataset.partition(":")
    if kind in PATH_KINDS:
        return _load_path_dataset(kind, Path(arg).expanduser(), split)
    layouts = _named_layouts(dataset, root, split)
    for layout in layouts:
        if all(f.is_file() for f in layout.files):
            return _pad_to_32(_cached(dataset, split, layout.files, layout.read))
    if download:
        try:
            _download(dataset, root)
        except Exception as err:  # noqa: BLE001 - any download failure becomes the same actionable error
            reason = (str(err).strip().splitlines() or [""])[0][:100].rstrip(": ")
            raise _not_found(dataset, split, root, layouts, f"; downloading it failed ({type(err).__name__}: "
                             f"{reason})") from err
        return load_split(dataset, split, root, download=False)
    raise _not_found(dataset, split, root, layouts)


def _pad_to_32(data: ImageSet) -> ImageSet:
    """Zero-pad smaller images (Fashion-MNIST's 28x28) to 32x32 so the CIFAR-style five-pool networks apply."""
    h, w = data.images.shape[-2:]
    if h >= 32 and w >= 32:
        return data
    pad = ((32 - w) // 2, (32 - w + 1) // 2, (32 - h) // 2, (32 - h + 1) // 2)
    return ImageSet(torch.nn.functional.pad(data.images, pad), data.labels, data.classes,
                    data.source and f"{data.source}+pad{pad}")


def _imagefolder_split(path: Path, split: str) -> Path:
    """The folder of ``split`` in an image-folder tree, logged in one line; a held-out folder is never skipped silently.

    ``<path>/train/`` is the training split and the first of ``test/``, ``validation/`` (timm's name), ``val/`` the test
    split (the validation split is always drawn from ``train/``); a tree without ``train/`` is all training data.
    """
    held_out = [path / name for name in HELD_OUT_FOLDERS if (path / name).is_dir()]
    if not (path / "train").is_dir():
        if held_out:
            raise DataError(f"imagefolder:{path} has {held_out[0].name}/ but no train/ folder; add train/, or point at "
                            f"a folder of <class>/<image> subfolders to use it all for training")
        if split == "test":
            raise DataNotFoundError(f"imagefolder:{path} has no test split (no train/ and test/, validation/ or val/ "
                                    f"folders: the whole tree is the training split)", [path / "train"])
        if not path.is_dir():
            raise DataNotFoundError(f"imagefolder:{path} not found (looked at: {path})", [path])
        log.info("imagefolder:%s: no train/ folder, the whole tree is the training split", path)
        return path
    if split == "train":
        return path / "train"
    if not held_out:
        looked = [path / name for name in HELD_OUT_FOLDERS]
        raise DataNotFoundError(f"imagefolder:{path} has no test split (looked at: {'; '.join(map(str, looked))})",
                                looked)
    unused = f" ({', '.join(f.name + '/' for f in held_out[1:])} not used)" if len(held_out) > 1 else ""
    (log.warning if unused else log.info)("imagefolder:%s: test split from %s/%s; validation is drawn from train/",
                                          path, held_out[0].name, unused)
    return held_out[0]


def _load_path_dataset(kind: str, path: Path, split: str) -> ImageSet:
    if kind == "parquet":
        if path.is_file():
            looked, files = f"{path} (a single file is the train split)", [path] if split == "train" else []
        else:
            looked, files = f"{path / split}.parquet; {path / split}-*.parquet", _parquet_shards(path, split)
        if not files:
            raise DataNotFoundError(f"parquet:{path} has no {split} split (looked at: {looked})")
        return _cached(f"parquet:{path}", split, files, lambda: read_parquet(files))
    folder = _imagefolder_split(path, split)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _cached(f"imagefolder:{path}", split, files, lambda: read_imagefolder(folder))
