"""Data: root resolution, error paths, real CIFAR-10 Parquet / Fashion-MNIST idx loading, caching, splits, batches."""

import io
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from PIL import Image

from fractal_space.data import (
    BatchLoader,
    DataError,
    DataNotFoundError,
    Normalize,
    augment_batch,
    auto_val_size,
    load_split,
    load_splits,
    resolve_data_root,
)
from fractal_space.data.sources import DEFAULT_ROOT, ENV_CACHE, ENV_DATA, ENV_VERBOSE


@pytest.fixture(scope="module")
def cifar_test(data_root: Path):
    return load_split("cifar10", "test", data_root, download=False)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_DATA)
    assert resolve_data_root(None) == DEFAULT_ROOT.expanduser()


@pytest.mark.parametrize("name, first, later", [
    ("cifar10", "cifar10/train.parquet", "cifar-10-batches-py/data_batch_1"),
    ("fashion-mnist", "fashion-mnist/train.parquet", "FashionMNIST/raw/train-images-idx3-ubyte")])
def test_missing_named_dataset_is_one_short_line_with_every_path_on_request(name, first, later, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VERBOSE, raising=False)
    with pytest.raises(DataNotFoundError) as err:
        load_split(name, "train", tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg and len(msg.replace(str(tmp_path), "")) < 260, msg  # was ~1,000 characters
    assert str(tmp_path / first) in msg and str(tmp_path / later) not in msg
    assert "--data-dir" in msg and ENV_DATA in msg and f"{ENV_VERBOSE}=1" in msg
    assert tmp_path / later in err.value.paths
    monkeypatch.setenv(ENV_VERBOSE, "1")
    with pytest.raises(DataNotFoundError) as err:
        load_split(name, "train", tmp_path, download=False)
    assert str(tmp_path / later) in str(err.value)


def test_failed_download_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)  # torchvision's own code path, no network
    root = tmp_path / "data" / "root"
    with pytest.raises(DataNotFoundError) as err:
        load_split("fashion-mnist", "train", root, download=True)
    msg = str(err.value)
    assert "\n" not in msg and "downloading it failed (RuntimeError: Error downloading" in msg and "Tried" not in msg
    assert not (tmp_path / "data").exists()  # torchvision had created FashionMNIST/raw in it
    (root / "mine").mkdir(parents=True)
    with pytest.raises(DataNotFoundError):
        load_split("fashion-mnist", "train", root, download=True)
    assert [p.name for p in root.rglob("*")] == ["mine"]


@pytest.mark.parametrize("spec", ["imagenet", "parquet:", "folder:/x"])
def test_unknown_dataset_is_a_one_line_value_error(spec, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset") as err:
        load_split(spec, "train", tmp_path, download=False)
    assert "\n" not in str(err.value)


def test_cifar10_parquet_real_files(cifar_test, data_root):
    assert cifar_test.images.shape == (10_000, 3, 32, 32) and cifar_test.images.dtype == torch.uint8
    assert torch.bincount(cifar_test.labels).tolist() == [1000] * 10  # the canonical test split
    assert cifar_test.classes[0] == "airplane" and cifar_test.classes[9] == "truck"
    assert 100 < cifar_test.images.float().mean() < 140  # real photos, not blank decodes
    by_path = load_split(f"parquet:{data_root / 'cifar10'}", "test")
    assert torch.equal(by_path.images, cifar_test.images) and torch.equal(by_path.labels, cifar_test.labels)


def test_fashion_mnist_idx_stays_grayscale_padded_to_32(data_root):
    data = load_split("fashion-mnist", "test", data_root, download=False)
    assert data.images.shape == (10_000, 1, 32, 32)
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    border = torch.cat([data.images[..., :2, :].flatten(), data.images[..., :, :2].flatten()])
    assert int(border.max()) == 0 and int(data.images.max()) == 255


def test_fashion_mnist_torchvision_layout_matches(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(data_root / "fashion-mnist" / name, raw / name)
    ours = load_split("fashion-mnist", "test", tmp_path, download=False)
    shared = load_split("fashion-mnist", "test", data_root, download=False)
    assert torch.equal(ours.images, shared.images) and torch.equal(ours.labels, shared.labels)


def test_decoded_cache_is_keyed_by_size_and_mtime(data_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV_CACHE, str(cache))
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data_root / "fashion-mnist" / name, folder / name)
    first = load_split("fashion-mnist", "test", tmp_path, download=False)
    assert len(list(cache.glob("fashion-mnist-test-*.pt"))) == 1
    again = load_split("fashion-mnist", "test", tmp_path, download=False)
    assert torch.equal(first.images, again.images)
    os.utime(folder / "t10k-labels-idx1-ubyte.gz", ns=(0, 123))
    load_split("fashion-mnist", "test", tmp_path, download=False)
    assert len(list(cache.glob("fashion-mnist-test-*.pt"))) == 2


def test_imagefolder_roundtrips_real_images(cifar_test, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    for split, rows in (("train", range(0, 12)), ("test", range(12, 16))):
        for i in rows:
            label = cifar_test.classes[int(cifar_test.labels[i])]
            (tmp_path / "tree" / split / label).mkdir(parents=True, exist_ok=True)
            pixels = cifar_test.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(tmp_path / "tree" / split / label / f"{i:03d}.png")
    train = load_split(f"imagefolder:{tmp_path / 'tree'}", "train")
    assert train.images.shape == (12, 3, 32, 32)
    for image, label in zip(train.images, train.labels, strict=True):  # lossless PNG: every image is found again
        match = (cifar_test.images[:12] == image).flatten(1).all(1).nonzero().flatten()
        assert len(match) >= 1 and cifar_test.classes[int(cifar_test.labels[match[0]])] == train.classes[label]
    assert len(load_split(f"imagefolder:{tmp_path / 'tree'}", "test")) == 4
    flat = load_splits(f"imagefolder:{tmp_path / 'tree' / 'train'}", val_size=2)  # no split folders: all train
    assert len(flat.train) == 10 and flat.test is None
    with pytest.raises(DataNotFoundError, match="no test split"):
        load_split(f"imagefolder:{tmp_path / 'tree' / 'train'}", "test")
    with pytest.raises(DataNotFoundError, match="looked at"):
        load_split(f"imagefolder:{tmp_path / 'missing'}", "train")


def test_val_split_fixed_disjoint_and_independent_of_subset(data_root):
    full = load_splits("cifar10", data_root, val_size=1000, download=False, with_test=False)
    small = load_splits("cifar10", data_root, val_size=1000, train_subset=300, download=False, with_test=False)
    other = load_splits("cifar10", data_root, val_size=1000, val_seed=1, download=False, with_test=False)
    assert len(full.train) == 49_000 and len(full.val) == 1000 and len(small.train) == 300
    assert torch.equal(full.val.images, small.val.images)  # trials on subsets select on the same images
    assert not torch.equal(full.val.images, other.val.images)
    assert torch.equal(small.train.images, full.train.images[:300])  # first N of what the val split leaves
    train_keys = {bytes(x.numpy()) for x in full.train.images.flatten(1)}
    assert not any(bytes(x.numpy()) in train_keys for x in full.val.images.flatten(1))


@pytest.mark.parametrize("kwargs, match", [({"val_size": 50_000}, "val_size"),
                                           ({"train_subset": 49_001, "val_size": 1000}, "train_subset")])
def test_bad_split_sizes_name_the_value(data_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_splits("cifar10", data_root, download=False, with_test=False, **kwargs)


def _translations(image: torch.Tensor, mode: str) -> torch.Tensor:
    """Every mirror x 9x9 translation of one image, built independently of augment_batch."""
    padded = torch.nn.functional.pad(image[None], (4, 4, 4, 4), mode=mode)[0]
    out = []
    for src in (padded, padded.flip(-1)):
        out += [src[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    return torch.stack(out)


@pytest.mark.parametrize("preset, mode", [("+", "constant"), ("++", "reflect")])
def test_augment_is_a_mirror_and_translation(cifar_test, preset, mode):
    norm = Normalize.fit(cifar_test.images[:500])
    x = norm(cifar_test.images[:16])
    y = augment_batch(x, preset, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.float32
    for original, augmented in zip(x, y, strict=True):
        candidates = _translations(original, mode)
        assert (candidates - augmented).abs().flatten(1).amax(1).min() < 1e-6
    assert not torch.equal(x, y)
    assert torch.equal(y, augment_batch(x, preset, torch.Generator().manual_seed(0)))
    assert not torch.equal(y, augment_batch(x, preset, torch.Generator().manual_seed(1)))
    assert augment_batch(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match=re.escape("'+++'")):
        augment_batch(x, "+++", torch.Generator())


def test_normalize_centres_the_training_data(cifar_test):
    norm = Normalize.fit(cifar_test.images)
    x = norm(cifar_test.images[:2000])
    assert x.mean((0, 2, 3)).abs().max() < 0.05
    assert (x.std((0, 2, 3)) - 1).abs().max() < 0.05


def test_batch_loader_epochs_are_seeded_and_cover_the_data(cifar_test):
    data = load_split("cifar10", "test")
    data.images, data.labels = data.images[:250], data.labels[:250]
    norm = Normalize.fit(data.images)
    loader = BatchLoader(data, norm, batch_size=100, augment="none", shuffle=True, seed=3)
    assert len(loader) == 3
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == sorted(data.labels.tolist())  # every image once, last batch partial
    assert torch.equal(first, torch.cat([y for _, y in loader]))
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))
    dropping = BatchLoader(data, norm, batch_size=100, shuffle=True, drop_last=True, channels_last=True)
    shapes = [x.shape for x, _ in dropping]
    assert shapes == [(100, 3, 32, 32)] * 2
    assert next(iter(dropping))[0].is_contiguous(memory_format=torch.channels_last)


def _tree(root: Path, cifar_test, splits: dict[str, int]) -> Path:
    """An image-folder tree of real CIFAR-10 PNGs: ``splits`` maps folder name to image count."""
    start = 0
    for split, count in splits.items():
        for i in range(start, start + count):
            folder = root / split / cifar_test.classes[int(cifar_test.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(cifar_test.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
        start += count
    return root


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_unreadable_image_is_a_one_line_data_error_naming_the_file(damage, cifar_test, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    tree = _tree(tmp_path / "tree", cifar_test, {"train": 6})
    bad = next((tree / "train").rglob("*.png"))
    bad.write_bytes(b"not an image, just text\n" if damage == "text" else bad.read_bytes()[:60])
    with pytest.raises(DataError) as err:
        load_split(f"imagefolder:{tree}", "train")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value) and str(bad) in str(err.value)


def test_unreadable_parquet_row_names_file_and_row(cifar_test, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    good = io.BytesIO()
    Image.fromarray(cifar_test.images[0].permute(1, 2, 0).numpy()).save(good, format="PNG")
    images = pa.array([{"bytes": good.getvalue()}, {"bytes": b"garbage"}])
    pq.write_table(pa.table({"img": images, "label": [0, 1]}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=f"row 1 of {re.escape(str(tmp_path / 'train.parquet'))} is not a readable"):
        load_split(f"parquet:{tmp_path}", "train")


@pytest.mark.parametrize("folders, used, unused", [(("validation",), "validation", None),
                                                   (("val",), "val", None),
                                                   (("test", "val"), "test", "val")])
def test_imagefolder_held_out_folders_are_used_and_said(folders, used, unused, cifar_test, tmp_path, monkeypatch,
                                                        caplog):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    tree = _tree(tmp_path / "tree", cifar_test, {"train": 8, **{f: 2 + i for i, f in enumerate(folders)}})
    with caplog.at_level(logging.INFO, logger="fractal_space.data.sources"):
        test = load_split(f"imagefolder:{tree}", "test")
    assert len(test) == 2  # the first held-out folder
    (record,) = caplog.records
    assert f"test split from {used}/" in record.getMessage()
    assert (f"{unused}/ not used" in record.getMessage()) == (unused is not None)
    assert record.levelno == (logging.WARNING if unused else logging.INFO)


def test_imagefolder_with_held_out_folder_but_no_train_is_refused(cifar_test, tmp_path):
    tree = _tree(tmp_path / "tree", cifar_test, {"validation": 2})
    with pytest.raises(DataError, match="validation/ but no train/"):
        load_split(f"imagefolder:{tree}", "train")


def test_val_size_none_is_a_tenth_of_small_datasets_and_5000_of_large(cifar_test, tmp_path, monkeypatch):
    assert auto_val_size(50_000) == 5000 and auto_val_size(700) == 70
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    tree = _tree(tmp_path / "tree", cifar_test, {"train": 30})
    splits = load_splits(f"imagefolder:{tree}", val_size=None)
    assert len(splits.val) == 3 and len(splits.train) == 27


def test_parquet_with_test_subset_links_train_cuts_test_and_replaces_a_half_made_folder(data_root, tmp_path):
    import pyarrow.parquet as pq

    from fractal_space.data import parquet_with_test_subset

    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "train.parquet").symlink_to(data_root / "cifar10" / "train.parquet")  # a crash before the test split
    spec = parquet_with_test_subset(data_root / "cifar10", 40, folder)
    assert spec == f"parquet:{folder}" and pq.ParquetFile(folder / "test.parquet").metadata.num_rows == 40
    assert (folder / "train.parquet").resolve() == (data_root / "cifar10" / "train.parquet").resolve()
    stamp = (folder / "test.parquet").stat().st_mtime_ns
    assert parquet_with_test_subset(data_root / "cifar10", 40, folder) == spec  # reused, not written again
    assert (folder / "test.parquet").stat().st_mtime_ns == stamp and [p.name for p in tmp_path.iterdir()] == ["small"]


def test_training_normalization_is_fitted_once_per_source_and_again_for_a_changed_one(cifar_test, tmp_path,
                                                                                        monkeypatch):
    """Every search trial's Trainer loads the same training split; its statistics are fitted once, and a source
    rewritten in place (another decode-cache file) gets its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))

    def write(images: torch.Tensor) -> None:
        blobs = []
        for image in images:
            png = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(png, format="PNG")
            blobs.append({"bytes": png.getvalue()})
        pq.write_table(pa.table({"img": pa.array(blobs), "label": [0] * len(blobs)}), tmp_path / "train.parquet")

    write(cifar_test.images[:20])
    first, again = (load_splits(f"parquet:{tmp_path}", val_size=4, with_test=False).norm for _ in range(2))
    assert again is first
    assert first == Normalize.fit(cifar_test.images[:20])
    write(255 - cifar_test.images[:24])  # inverted pixels: other statistics
    changed = load_splits(f"parquet:{tmp_path}", val_size=4, with_test=False).norm
    assert changed == Normalize.fit(255 - cifar_test.images[:24]) and changed.mean != first.mean
