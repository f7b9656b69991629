"""Bundled network weights (``*.pt``) and the scripts that made them; see ``README.md`` here."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR = Path(__file__).resolve().parent


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or not what the code expects.

    ``str(err)`` is one line, ``"path: problem"``, so the CLI can print it as is.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def read_state(path: str | PathLike[str], expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Load a ``torch.save``'d dict of tensors and check it holds ``expected`` (name -> shape).

    Returns the expected tensors only (dtype as stored, on CPU). Extra entries (metadata) are
    ignored. Raises :class:`WeightsError` if the file is missing, unreadable, lacks a tensor,
    has a wrong shape or non-finite values.
    """
    import torch  # kept local: WeightsError must be importable without torch (the CLI catches it)

    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "weights file not found (see model/weights/README.md to regenerate it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (pickle, zip, EOF, RuntimeError) for a bad file
        detail = f"{type(err).__name__}: {err}".splitlines()[0]
        raise WeightsError(path, f"not a readable torch weights file ({detail})") from err
    if not isinstance(state, dict):
        raise WeightsError(path, f"expected a dict of tensors, found {type(state).__name__}")
    out = {}
    for name, shape in expected.items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(path, f"tensor {name!r} is missing")
        if tuple(tensor.shape) != tuple(shape):
            raise WeightsError(path, f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if not torch.isfinite(tensor).all():
            raise WeightsError(path, f"tensor {name!r} has non-finite values")
        out[name] = tensor
    return out


def save_state(state: dict[str, Any], dest: str | PathLike[str], *, force: bool = True) -> Path:
    """``torch.save`` ``state`` to ``dest`` atomically: written beside it under a temporary name,
    renamed when complete, so a reader never sees half a file. ``force=False``: refuse
    (``FileExistsError``) to replace an existing ``dest``."""
    import torch

    dest = Path(dest)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest}: exists (use --force to replace it)")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
