"""Load a torch checkpoint whose pickle holds a few known non-tensor classes, executing nothing.

``torch.load(weights_only=True)`` refuses TBPS-CLIP's ``checkpoint_best.pth``, whose ``config``
is an ``easydict.EasyDict``, and allow-listing that class does not help (its pickle sets dict
items on a dict subclass, which the weights-only unpickler rejects). Here the pickle is read
with an unpickler that resolves only tensor-rebuilding functions, dtypes and ``OrderedDict``,
and maps the listed dict classes onto a plain stand-in; any other global is refused before it
could run.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from tbps.errors import DataError

#: (module, name) of dict subclasses read as plain dicts
DICT_CLASSES = frozenset({("easydict", "EasyDict")})
_TENSOR_REBUILDERS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("collections", "OrderedDict"),
        ("torch", "Size"),
    }
)


class _PlainDict(dict):
    """Stands in for an allowed dict class; it takes the pickled items and attributes."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DICT_CLASSES:
            return _PlainDict
        if (module, name) in _TENSOR_REBUILDERS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not on the allow-list")


_PICKLE_MODULE = types.ModuleType("tbps_restricted_pickle")
_PICKLE_MODULE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = lambda file, **kw: _RestrictedUnpickler(file, **kw).load()  # type: ignore[attr-defined]
_PICKLE_MODULE.__name__ = "tbps_restricted_pickle"


def plain(value: Any) -> Any:
    """``value`` with every stand-in dict (and OrderedDict) turned into a plain dict."""
    if isinstance(value, (_PlainDict, collections.OrderedDict)):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load_restricted(path: str | os.PathLike, mmap: bool = False) -> Any:
    """The objects of a torch checkpoint, tensors on the CPU, allowed dict classes as plain
    dicts; a DataError naming the refused global for anything else (nothing is executed).
    TorchScript archives are refused too (loading one runs its code)."""
    from tbps.model.convert import is_torchscript

    if is_torchscript(Path(path)):
        raise DataError(f"{path} is a TorchScript archive, not a checkpoint of tensors")
    try:
        loaded = torch.load(
            path, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False, mmap=mmap
        )
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused to unpickle ({e}); nothing was executed") from e
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise DataError(f"cannot read {path} as a checkpoint: {e}") from e
    return plain(loaded)
