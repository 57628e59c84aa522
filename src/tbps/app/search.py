"""`tbps search`: the gallery images of an index closest to a description or an image."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from tbps.errors import ConfigError
from tbps.inference.retriever import Hit, Retriever


def run_search(cfg: DictConfig) -> list[Hit]:
    """Print the ``k`` best images for ``cfg.query`` or ``cfg.image``."""
    if (cfg.query is None) == (cfg.image is None):
        raise ConfigError('give exactly one of query="a description" and image=PATH')
    if cfg.query is not None and not str(cfg.query).strip():
        raise ConfigError(
            'query= is empty; describe the person, e.g. query="a man in a red jacket"'
        )
    retriever = Retriever.from_index(cfg.index, model=cfg.model, device=cfg.device)
    if cfg.query is not None:
        hits = retriever.search(str(cfg.query), cfg.k)
    else:
        hits = retriever.search_image(str(cfg.image), cfg.k)
    if cfg.format == "json":
        print(
            json.dumps([{"rank": h.rank, "path": h.path, "score": round(h.score, 6)} for h in hits])
        )
        return hits
    width = max(len(h.path) for h in hits)
    print(f"{'rank':>4}  {'score':>7}  {'path':<{width}}")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:>7.4f}  {h.path:<{width}}")
    print(f"{len(hits)} of {len(retriever)} images in {retriever.index.root}")
    return hits
