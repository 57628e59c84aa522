"""The gallery index on disk and in memory.

An index folder holds ``manifest.json`` (the model that built it, the image folder, every
image with its size, mtime, shard and row, the backend and its parameters), embedding shards
``shards/*.safetensors`` (one (n, D) tensor each, with the paths of its rows in the metadata)
and, for the faiss backend, ``faiss-*.index``. Writers put shards first and rename the manifest
into place last, so a reader sees the last committed state; :meth:`GalleryIndex.load` checks
the manifest against its shards and names the file that disagrees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tbps import __version__
from tbps.errors import DataError
from tbps.inference.backends import ExactSearch, FaissSearch

MANIFEST = "manifest.json"
SHARDS = "shards"
INDEX_FORMAT = "tbps-index"
INDEX_VERSION = 1
TENSOR = "embeddings"
REPAIR = "; run tbps index again to repair"


class IndexFormatError(DataError):
    """An index folder is missing, truncated or inconsistent (``tbps index`` repairs it)."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, bytes) and architecture: two models
    embed alike exactly when their fingerprints are equal."""
    digest = hashlib.sha256()
    spec = getattr(model, "spec", None)
    if callable(spec):
        digest.update(json.dumps(spec(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One indexed image: path relative to the folder, its signature, where its row is."""

    path: str
    size: int
    mtime_ns: int
    shard: str
    row: int


@dataclass
class Manifest:
    """What ``manifest.json`` holds (see the module docstring)."""

    model: dict[str, Any]
    images_root: str
    dtype: str
    backend: dict[str, Any]
    entries: list[Entry]
    shards: dict[str, int]  # file name (under shards/) -> rows it holds
    skipped: list[dict[str, str]] = field(default_factory=list)
    complete: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "tbps_version": __version__,
            "complete": self.complete,
            "model": self.model,
            "images_root": self.images_root,
            "dtype": self.dtype,
            "backend": self.backend,
            "shards": self.shards,
            "skipped": self.skipped,
            "columns": ["path", "size", "mtime_ns", "shard", "row"],
            "images": [[e.path, e.size, e.mtime_ns, e.shard, e.row] for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path) -> Manifest:
        if not isinstance(data, Mapping) or data.get("format") != INDEX_FORMAT:
            raise IndexFormatError(
                f"{where} is not a tbps index manifest (no format {INDEX_FORMAT!r})"
            )
        if data.get("format_version") != INDEX_VERSION:
            raise IndexFormatError(
                f"{where}: index format version {data.get('format_version')}, this tbps reads "
                f"{INDEX_VERSION}; rebuild it with tbps index"
            )
        try:
            shards = {str(k): int(v) for k, v in data["shards"].items()}
            entries = [
                Entry(str(p), int(s), int(m), str(f), int(r)) for p, s, m, f, r in data["images"]
            ]
            return cls(
                model=dict(data["model"]),
                images_root=str(data["images_root"]),
                dtype=str(data["dtype"]),
                backend=dict(data["backend"]),
                entries=entries,
                shards=shards,
                skipped=list(data.get("skipped", [])),
                complete=bool(data.get("complete", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexFormatError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from e

    @property
    def dim(self) -> int:
        return int(self.model["embed_dim"])


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an index folder; IndexFormatError naming the file when unreadable."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(f"index={directory}: no such folder (build it with tbps index)")
    if not path.is_file():
        raise IndexFormatError(
            f"{directory} has no {MANIFEST}: not a tbps index, or its first tbps index run was "
            "interrupted (run it again)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise IndexFormatError(f"{path}: unreadable or truncated ({e}){REPAIR}") from e
    return Manifest.from_json(data, path)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Commit ``manifest`` atomically (temporary file, fsync, rename)."""
    tmp = directory / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_shard(directory: Path, name: str, vectors: torch.Tensor, paths: list[str]) -> None:
    """Write one shard (rows of ``vectors`` for ``paths``) atomically under ``shards/``."""
    folder = directory / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    save_file({TENSOR: vectors.contiguous()}, str(tmp), metadata={"paths": json.dumps(paths)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    _fsync_dir(folder)


def read_shard(directory: Path, name: str, rows: int, dim: int) -> tuple[torch.Tensor, list[str]]:
    """A shard's vectors and row paths, checked against what the manifest says."""
    paths = shard_paths(directory, name, rows, dim)
    try:
        with safe_open(str(directory / SHARDS / name), framework="pt") as f:
            return f.get_tensor(TENSOR), paths
    except (SafetensorError, OSError) as e:
        raise IndexFormatError(
            f"{directory / SHARDS / name}: unreadable shard ({e}){REPAIR}"
        ) from e


def shard_paths(directory: Path, name: str, rows: int, dim: int) -> list[str]:
    """A shard's row paths, its header checked against the manifest (the vectors not read)."""
    path = directory / SHARDS / name
    if not path.is_file():
        raise IndexFormatError(f"{path}: shard listed in {MANIFEST} is missing{REPAIR}")
    try:
        with safe_open(str(path), framework="pt") as f:
            paths = json.loads((f.metadata() or {}).get("paths", "null"))
            shape = tuple(f.get_slice(TENSOR).get_shape())
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise IndexFormatError(f"{path}: unreadable or truncated shard ({e}){REPAIR}") from e
    if shape != (rows, dim) or not isinstance(paths, list) or len(paths) != rows:
        raise IndexFormatError(
            f"{path}: holds {shape} embeddings, {MANIFEST} says ({rows}, {dim}){REPAIR}"
        )
    return paths


class GalleryIndex:
    """A loaded index: the image paths (row ``i`` = image id ``i``), the search backend and the
    model fingerprint it was built with. ``GalleryIndex.load(DIR)`` reads what ``tbps index``
    (:func:`tbps.inference.build_index`) wrote."""

    def __init__(
        self, directory: Path, manifest: Manifest, search: ExactSearch | FaissSearch
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.search_backend = search
        self.paths = [e.path for e in manifest.entries]
        self.root = Path(manifest.images_root)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> GalleryIndex:
        """Read and check an index folder; exact vectors go to ``device``."""
        directory = Path(directory).expanduser()
        manifest = read_manifest(directory)
        if not manifest.complete:
            raise IndexFormatError(
                f"{directory / MANIFEST}: the index is incomplete (tbps index was interrupted); "
                "run the same tbps index command again to finish it"
            )
        if not manifest.entries:
            raise IndexFormatError(f"{directory}: the index holds no image")
        backend = manifest.backend.get("name")
        if backend == "faiss":
            search: ExactSearch | FaissSearch = _load_faiss(directory, manifest)
        elif backend == "exact":
            search = ExactSearch(load_vectors(directory, manifest).to(device))
        else:
            raise IndexFormatError(f"{directory / MANIFEST}: unknown backend {backend!r}")
        return cls(directory, manifest, search)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.model.get("fingerprint"))

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def backend(self) -> str:
        return self.search_backend.name

    def image_file(self, image_id: int) -> Path:
        """The file of image ``image_id`` (IndexError for an unknown id)."""
        if not 0 <= image_id < len(self.paths):
            raise IndexError(f"image id {image_id} not in 0..{len(self.paths) - 1}")
        return self.root / self.paths[image_id]

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        """(Q, D) unit-norm queries -> per query, up to ``k`` (image id, score), best first."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}), got {tuple(queries.shape)}")
        scores, ids = self.search_backend.search(queries, k)
        return [
            [(int(i), float(s)) for s, i in zip(row_s.tolist(), row_i.tolist()) if i >= 0]
            for row_s, row_i in zip(scores, ids)
        ]

    def vector(self, image_id: int) -> torch.Tensor:
        """The stored embedding of image ``image_id`` (float32)."""
        self.image_file(image_id)  # range check
        return self.search_backend.vector(image_id)


def load_vectors(directory: Path, manifest: Manifest) -> torch.Tensor:
    """The (N, D) stored embeddings in image-id order, each shard checked."""
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for image_id, entry in enumerate(manifest.entries):
        by_shard.setdefault(entry.shard, []).append((image_id, entry.row))
    dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(manifest.dtype)
    if dtype is None:
        raise IndexFormatError(f"{directory / MANIFEST}: unknown dtype {manifest.dtype!r}")
    out = torch.empty(len(manifest.entries), manifest.dim, dtype=dtype)
    for name, rows in by_shard.items():
        if name not in manifest.shards:
            raise IndexFormatError(
                f"{directory / MANIFEST}: images refer to shard {name!r}, which it does not list"
            )
        vectors, paths = read_shard(directory, name, manifest.shards[name], manifest.dim)
        ids = torch.tensor([i for i, _ in rows])
        where = torch.tensor([r for _, r in rows])
        if int(where.max()) >= len(paths):
            raise IndexFormatError(
                f"{directory / SHARDS / name}: row {int(where.max())} out of range"
            )
        for image_id, row in rows:
            if paths[row] != manifest.entries[image_id].path:
                raise IndexFormatError(
                    f"{directory / SHARDS / name}: row {row} is {paths[row]!r}, {MANIFEST} says "
                    f"{manifest.entries[image_id].path!r}{REPAIR}"
                )
        out[ids] = vectors[where].to(dtype)
    return out


def _load_faiss(directory: Path, manifest: Manifest) -> FaissSearch:
    plan = manifest.backend
    path = directory / str(plan.get("file"))
    if not path.is_file():
        raise IndexFormatError(f"{path}: faiss index listed in {MANIFEST} is missing{REPAIR}")
    try:
        search = FaissSearch.load(path, plan)
    except RuntimeError as e:
        raise IndexFormatError(f"{path}: unreadable faiss index ({e}){REPAIR}") from e
    if len(search) != len(manifest.entries) or search.dim != manifest.dim:
        raise IndexFormatError(
            f"{path}: {len(search)} vectors of {search.dim} dims, {MANIFEST} lists "
            f"{len(manifest.entries)} of {manifest.dim}{REPAIR}"
        )
    return search
