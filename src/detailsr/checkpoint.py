"""Reading checkpoints safely: `.pth` through `torch.load(weights_only=True)`, or `.safetensors`.

Reading never executes code from the file. Training wrappers are unwrapped (`params_ema` first,
then `params`, `state_dict`, `model`) and a DataParallel `module.` prefix is removed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")


def read_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The network weights in a checkpoint file (or an in-memory dict), unwrapped."""
    if isinstance(source, Mapping):
        return unwrap(source, "the given state dict")
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    # By content, not by name: safetensors starts with its header's length, then the JSON header;
    # torch.save writes a zip archive (PK), or a pickle (protocol 2+: 0x80) in old files. Anything
    # else would reach the pickle machinery and fail with an arbitrary error.
    if head[8:9] == b"{":
        raw = _read_safetensors(path)
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        raw = _read_torch(path)
    elif path.suffix.lower() == ".safetensors":
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file (no header)")
    else:
        raise CheckpointError(f"checkpoint {path} is not a PyTorch (.pth) or safetensors file")
    return unwrap(raw, str(path))


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({_first_line(e)})") from e


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain containers: never fall back.
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors (or is not a checkpoint); "
            "refusing to unpickle it"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from e


def unwrap(raw: object, name: str) -> dict[str, torch.Tensor]:
    """Peel training wrappers and the `module.` prefix; keep only tensors."""
    for _ in range(3):  # wrappers can nest (e.g. {"state_dict": {"params_ema": ...}})
        if not isinstance(raw, Mapping):
            break
        inner = next((raw[k] for k in WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {name} holds a {type(raw).__name__}, not a state dict")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {name} contains no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write weights as safetensors (the format of the project's own models)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
