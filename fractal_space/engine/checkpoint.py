"""Atomic checkpoints: safetensors weights + a torch file with optimizer/scheduler/epoch, behind one pointer file.

Each epoch writes ``epoch-NNNN.safetensors`` and ``epoch-NNNN.state.pt`` first and only then replaces
``checkpoint.json`` (an atomic rename); an interrupt at any moment leaves the previous complete checkpoint in force.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fractal_space.io import atomic_path, write_atomic

POINTER = "checkpoint.json"


def save_checkpoint(out_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any]) -> None:
    """Write epoch ``epoch``'s weights and trainer state, switch the pointer to them, then drop older epochs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, extra = f"epoch-{epoch:04d}.safetensors", f"epoch-{epoch:04d}.state.pt"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / weights) as tmp:
        save_file(tensors, tmp, metadata={"epoch": str(epoch)})
    with atomic_path(out_dir / extra) as tmp:
        torch.save(state, tmp)
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

