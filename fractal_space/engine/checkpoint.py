"""Atomic checkpoints: safetensors weights + a torch file with optimizer/scheduler/epoch, behind one pointer file.

Each epoch writes ``epoch-NNNN.safetensors`` and ``epoch-NNNN.state.pt`` first and only then replaces
``checkpoint.json`` (an atomic rename); an interrupt at any moment leaves the previous complete checkpoint in force.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

POINTER = "checkpoint.json"


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(out_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any]) -> None:
    """Write epoch ``epoch``'s weights and trainer state, switch the pointer to them, then drop older epochs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, extra = f"epoch-{epoch:04d}.safetensors", f"epoch-{epoch:04d}.state.pt"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(out_dir / weights, lambda p: save_file(tensors, p, metadata={"epoch": str(epoch)}))
    _atomic(out_dir / extra, lambda p: torch.save(state, p))
    pointer = json.dumps({"epoch": epoch, "weights": weights, "state": extra})
    write_atomic(out_dir / POINTER, pointer)
    for old in out_dir.glob("epoch-*"):
        if old.name not in (weights, extra):
            old.unlink(missing_ok=True)


def read_checkpoint(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The latest checkpoint's weights and trainer state (with its ``epoch``), or None if there is none."""
    pointer = out_dir / POINTER
    if not pointer.exists():
        return None
    info = json.loads(pointer.read_text())
    state = torch.load(out_dir / info["state"], weights_only=False)
    state["epoch"] = info["epoch"]
    return load_file(out_dir / info["weights"]), state


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a part."""
    _atomic(path, lambda p: Path(p).write_text(text))
