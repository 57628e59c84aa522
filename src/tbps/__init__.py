"""tbps: train, evaluate and deploy Text-Based Person Search models.

``from tbps import TBPSModel`` is the whole inference surface (see docs/inference.md); it is
imported on first use, so ``import tbps`` alone loads neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TBPSModel", "__version__"]

if TYPE_CHECKING:
    from tbps.model.tbps import TBPSModel


def __getattr__(name: str) -> Any:
    if name == "TBPSModel":
        from tbps.model.tbps import TBPSModel

        return TBPSModel
    raise AttributeError(f"module 'tbps' has no attribute {name!r}")
