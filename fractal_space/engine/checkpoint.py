"""Verified per-epoch checkpoints: safetensors for every tensor, JSON for the rest, no pickle anywhere.

Epoch N writes ``epoch-NNNN.safetensors`` (model weights) and ``epoch-NNNN.state.safetensors`` (optimizer state
tensors, RNG state), reads each back, and only then writes ``epoch-NNNN.json``: the rest of the trainer state and the
SHA-256 of both files. Every file goes through an atomic rename; ``checkpoint.json`` then names the epoch in force and
epochs before N-1 are deleted. So the previous epoch stays complete until the new one is written and verified, and a
resume takes the newest epoch whose files match their digests, walking back past a damaged one. Loading unpickles
nothing, so a checkpoint folder from someone else cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fractal_space.core.files import atomic_path, write_atomic

POINTER = "checkpoint.json"
KEEP_EPOCHS = 2  # the newest and the one before, so a damaged newest one has a fallback
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.")
_TENSOR, _ITEMS = "__tensor__", "__items__"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder has checkpoints but none that can be loaded; the message names the file and what to do."""


class _Damaged(Exception):
    """One epoch's checkpoint does not verify (missing, truncated or changed file)."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready copy of ``obj`` with each tensor moved into ``tensors`` (a reference left in its place)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, _encode(v, tensors)] for k, v in obj.items()]}  # optimizer state: integer keys
    if isinstance(obj, (list, tuple)):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"trainer state holds a {type(obj).__name__}; checkpoints store tensors, dicts, lists, numbers "
                    f"and strings only")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ITEMS}:
            return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` atomically, read the file back and return its SHA-256 (a write that did not land raises)."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    with safe_open(path, framework="pt") as f:
        if set(f.keys()) != set(tensors):
            raise OSError(f"{path} does not hold what was written")
    return _sha256(path)


def _epoch_of(path: Path) -> int:
    match = _EPOCH_FILE.match(path.name)
    return int(match.group(1)) if match else -1


def save_checkpoint(out_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any]) -> None:
    """Write and verify epoch ``epoch``'s weights and trainer state, point ``checkpoint.json`` at them, then drop
    epochs older than the previous one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = {f"{stem}.safetensors": weights, f"{stem}.state.safetensors": tensors}
    digests = {name: _write_tensors(out_dir / name, content) for name, content in files.items()}
    write_atomic(out_dir / f"{stem}.json", json.dumps({"epoch": epoch, "files": digests, "state": encoded}))
    pointer = {"epoch": epoch, "manifest": f"{stem}.json", "weights": f"{stem}.safetensors",
               "state": f"{stem}.state.safetensors"}
    write_atomic(out_dir / POINTER, json.dumps(pointer))
    for old in out_dir.glob("epoch-*"):
        if 0 <= _epoch_of(old) <= epoch - KEEP_EPOCHS:
            old.unlink(missing_ok=True)


def _load_epoch(manifest: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One epoch's weights and trainer state, after checking every file against the manifest's digests."""
    try:
        info = json.loads(manifest.read_text())
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _Damaged(f"{manifest} is unreadable ({type(err).__name__})") from err
    for name, digest in files.items():
        path = manifest.parent / name
        if not path.is_file():
            raise _Damaged(f"{path} is missing")
        if _sha256(path) != digest:
            raise _Damaged(f"{path} is truncated or changed (its SHA-256 differs from {manifest.name}'s)")
    weights_name, state_name = (f"{manifest.stem}.safetensors", f"{manifest.stem}.state.safetensors")
    if set(files) != {weights_name, state_name}:
        raise _Damaged(f"{manifest} lists {sorted(files)}, expected {weights_name} and {state_name}")
    state = _decode(info["state"], load_file(manifest.parent / state_name))
    state["epoch"] = info["epoch"]
    return load_file(manifest.parent / weights_name), state


def read_checkpoint(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint that verifies: its weights and trainer state (with its ``epoch``); None if there is none.

    A damaged newest epoch is skipped with a one-line warning; if checkpoints exist but none verifies, or only the
    pickle-based format of earlier versions is there, ``CheckpointError`` says which file and what to do.
    """
    manifests = sorted(out_dir.glob("epoch-*.json"), key=_epoch_of, reverse=True)
    problems = []
    for manifest in manifests:
        try:
            weights, state = _load_epoch(manifest)
        except _Damaged as err:
            problems.append(str(err))
            continue
        if problems:
            log.warning("checkpoint %s; resuming from epoch %d instead", problems[0], state["epoch"])
        return weights, state
    start_over = f"delete {out_dir} or pass another --out-dir to start over"
    if problems:
        raise CheckpointError(f"no checkpoint in {out_dir} can be resumed: {problems[0]}; {start_over}")
    pickled = sorted(out_dir.glob("epoch-*.state.pt"))
    if pickled:
        raise CheckpointError(f"{pickled[-1]} is a checkpoint in the earlier pickle format, which is not loaded "
                              f"because unpickling can run code; {start_over}")
    if (out_dir / POINTER).exists():
        raise CheckpointError(f"{out_dir / POINTER} names a checkpoint but no epoch-*.json manifest is there; "
                              f"{start_over}")
    return None
