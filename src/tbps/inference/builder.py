"""Build or update a gallery index: encode the new and changed images of a folder, drop the
deleted ones, in shards committed one by one, so that an interrupted run loses nothing and the
next one completes the index."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tbps.data.images import load_image
from tbps.errors import ConfigError, DataError
from tbps.evaluation.encode import check_precision, encode_images_batch, eval_mode, resolve_device
from tbps.inference.backends import BACKENDS, STORAGE_DTYPES, FaissSearch, require_faiss
from tbps.inference.index import (
    MANIFEST,
    SHARDS,
    Entry,
    IndexFormatError,
    Manifest,
    load_vectors,
    model_fingerprint,
    read_manifest,
    shard_paths,
    write_manifest,
    write_shard,
)
from tbps.inference.scan import IMAGE_SUFFIXES, ImageFile, scan_folder

log = logging.getLogger(__name__)

LOCK = ".lock"
SHARD_ROWS = 4096


@dataclass
class IndexReport:
    """What a ``tbps index`` run did: images in the index, newly encoded (``added``, changed
    files included), re-encoded because they changed, removed, and skipped (path, reason)."""

    images: int
    added: int
    changed: int
    removed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {
            "images": self.images,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "skipped": len(self.skipped),
        }


class _GalleryFiles(Dataset):
    """Decoded images resized to uint8 (3, H, W); an unreadable one yields its error instead."""

    def __init__(self, root: Path, files: list[ImageFile], transform) -> None:
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(load_image(self.root / self.files[i].path)), None
        except DataError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - one bad image never aborts the index
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, why) for i, x, why in items if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer per index folder (an advisory lock; released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(directory / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise ConfigError(f"{directory} is being written by another tbps index run") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_index_file(name: str) -> bool:
    return name in (MANIFEST, SHARDS, LOCK) or name.startswith(
        ("faiss-", ".faiss-", f".{MANIFEST}")
    )


def _previous(
    out: Path, fingerprint: str, root: Path, dtype: str, overwrite: bool
) -> Manifest | None:
    """The committed manifest to update, or None to start afresh (none, unreadable, or
    ``overwrite``); refuses to mix models or folders."""
    if not (out / MANIFEST).exists():
        return None
    try:
        previous = read_manifest(out)
    except IndexFormatError as e:
        log.warning("%s; rebuilding the index", e)
        return None
    if overwrite:
        return None
    if previous.model.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"out={out} was built by another model ({previous.model.get('path')}, fingerprint "
            f"{str(previous.model.get('fingerprint'))[:12]}); choose another out, or "
            "overwrite=true to rebuild it with this model"
        )
    if Path(previous.images_root) != root:
        raise ConfigError(
            f"out={out} indexes images={previous.images_root}, not {root}; choose another out, "
            "or overwrite=true to rebuild it"
        )
    if previous.dtype != dtype:
        log.info("dtype changed (%s -> %s): every image is encoded again", previous.dtype, dtype)
        return None
    return previous


def _valid_shards(out: Path, previous: Manifest | None) -> dict[str, int]:
    """The previous manifest's shards whose header and row paths read back as it says (the
    vectors are not read); bad ones are logged."""
    if previous is None:
        return {}
    owned: dict[str, list[Entry]] = {}
    for entry in previous.entries:
        owned.setdefault(entry.shard, []).append(entry)
    valid = {}
    for name, rows in previous.shards.items():
        try:
            paths = shard_paths(out, name, rows, previous.dim)
        except IndexFormatError as e:
            log.warning("%s: its images are encoded again", e)
            continue
        if all(e.row < len(paths) and paths[e.row] == e.path for e in owned.get(name, [])):
            valid[name] = rows
        else:
            log.warning(
                "%s/%s disagrees with %s: its images are encoded again", SHARDS, name, MANIFEST
            )
    return valid


@dataclass
class _Update:
    """What a run does: entries kept, files to encode, files skipped, how many were removed."""

    keep: list[Entry]
    todo: list[ImageFile]
    skipped: list[tuple[str, str]]
    removed: int


def _plan_update(previous: Manifest | None, shards: Mapping[str, int], scan) -> _Update:
    """Keep the entries of valid shards whose file is unchanged; encode the rest, except files
    that failed before and have not changed since (skipped again, not retried)."""
    current = {f.path: f for f in scan.images}
    known = {e.path: e for e in previous.entries} if previous else {}
    keep = [
        e
        for e in known.values()
        if e.shard in shards
        and e.path in current
        and current[e.path].signature == (e.size, e.mtime_ns)
    ]
    kept = {e.path for e in keep}
    failed = {s["path"]: s for s in (previous.skipped if previous else []) if "size" in s}
    skipped = list(scan.left_out)
    todo = []
    for f in scan.images:
        if f.path in kept:
            continue
        before = failed.get(f.path)
        if before and (before["size"], before["mtime_ns"]) == f.signature:
            skipped.append((f.path, before["reason"]))
        else:
            todo.append(f)
    return _Update(keep, todo, skipped, sum(1 for p in known if p not in current))


def _signature(file: ImageFile | None) -> dict[str, int]:
    return {} if file is None else {"size": file.size, "mtime_ns": file.mtime_ns}


def _remove_unlisted(out: Path, shards: Mapping[str, int], faiss_file: str | None) -> None:
    """Delete shards and faiss files no manifest refers to (left by an interrupted run)."""
    folder = out / SHARDS
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name not in shards:
            path.unlink(missing_ok=True)
    for path in [*out.glob("faiss-*"), *out.glob(".faiss-*")]:
        if path.name != faiss_file:
            path.unlink(missing_ok=True)


def build_index(
    model,
    images: str | os.PathLike,
    out: str | os.PathLike,
    backend: str = "exact",
    dtype: str = "fp16",
    device: str | torch.device | None = "auto",
    precision: str = "32",
    batch_size: int = 64,
    num_workers: int = 2,
    model_source: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard_rows: int = SHARD_ROWS,
) -> IndexReport:
    """Index the images under ``images`` into the folder ``out`` with ``model`` (a
    :class:`tbps.model.tbps.TBPSModel`); a second run encodes only new or changed files (path,
    size, mtime) and drops deleted ones. ``model_source`` (e.g. ``{"model": DIR}``) is recorded
    so that ``tbps search`` can load the model by itself."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}; valid: {', '.join(BACKENDS)}")
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; valid: {', '.join(STORAGE_DTYPES)}")
    if backend == "faiss":
        require_faiss()
    root = Path(images).expanduser().resolve()
    scan = scan_folder(root)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} exists and is not a folder")
    if out.is_dir() and not (out / MANIFEST).exists():
        foreign = [p.name for p in out.iterdir() if not _is_index_file(p.name)]
        if foreign:
            raise ConfigError(
                f"out={out} is not empty and is not a tbps index (holds {', '.join(sorted(foreign)[:3])}); "
                "choose a new or empty folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    autocast_dtype = check_precision(precision, torch_device)
    fingerprint = model_fingerprint(model)
    with _locked(out):
        previous = _previous(out, fingerprint, root, dtype, overwrite)
        shards = _valid_shards(out, previous)
        _remove_unlisted(out, shards, previous.backend.get("file") if previous else None)
        update = _plan_update(previous, shards, scan)
        signatures = {f.path: f for f in scan.images}
        todo, skipped, removed = update.todo, update.skipped, update.removed
        record = {
            **(model_source or {}),
            "fingerprint": fingerprint,
            "embed_dim": int(model.retrieval_dim),
        }
        manifest = Manifest(
            record,
            str(root),
            dtype,
            {"name": backend},
            list(update.keep),
            dict(shards),
            complete=False,
        )
        if todo:
            log.info(
                "indexing %d of %d images (%d unchanged, %d removed) on %s",
                len(todo),
                len(scan.images),
                len(update.keep),
                removed,
                torch_device,
            )
            write_manifest(out, manifest)  # removals committed before any work
            skipped += _encode(
                model,
                root,
                todo,
                out,
                manifest,
                STORAGE_DTYPES[dtype],
                torch_device,
                autocast_dtype,
                batch_size,
                num_workers,
                shard_rows,
                progress,
            )
        if not manifest.entries:
            raise DataError(
                f"images={root}: no readable image ({', '.join(IMAGE_SUFFIXES)})"
                + (
                    f"; skipped {len(skipped)}, first: {skipped[0][0]}: {skipped[0][1]}"
                    if skipped
                    else ""
                )
            )
        manifest.entries.sort(key=lambda e: e.path)
        _compact(out, manifest, STORAGE_DTYPES[dtype], shard_rows)
        unchanged = previous is not None and not todo and not removed
        manifest.backend = _backend(out, manifest, backend, previous if unchanged else None)
        manifest.skipped = [
            {"path": p, "reason": why, **_signature(signatures.get(p))} for p, why in skipped
        ]
        manifest.complete = True
        write_manifest(out, manifest)
        _remove_unlisted(out, manifest.shards, manifest.backend.get("file"))
    for path, why in skipped[:20]:
        log.warning("skipped %s: %s", path, why)
    if len(skipped) > 20:
        log.warning(
            "... and %d more skipped images (listed in %s)", len(skipped) - 20, out / MANIFEST
        )
    encoded = {e.path for e in manifest.entries} - {e.path for e in update.keep}
    changed = len(encoded & {e.path for e in previous.entries} if previous else set())
    return IndexReport(
        len(manifest.entries), len(encoded) - changed, changed, removed, skipped, manifest.backend
    )


@torch.no_grad()
def _encode(
    model,
    root,
    todo,
    out,
    manifest,
    store_dtype,
    device,
    autocast_dtype,
    batch_size,
    num_workers,
    shard_rows,
    progress,
) -> list[tuple[str, str]]:
    """Encode ``todo`` and commit a shard every ``shard_rows`` images; returns the skipped."""
    resize, normalise = model.image_stages  # uint8 from the workers, normalised per batch
    loader = DataLoader(
        _GalleryFiles(root, todo, resize),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    model.to(device)
    skipped: list[tuple[str, str]] = []
    rows: list[torch.Tensor] = []
    files: list[ImageFile] = []

    def commit() -> None:
        """Write the first ``shard_rows`` pending rows as a shard, then list it."""
        name = f"{uuid.uuid4().hex[:16]}.safetensors"
        pending = torch.cat(rows)
        part, rest = files[:shard_rows], files[shard_rows:]
        write_shard(out, name, pending[: len(part)].to(store_dtype), [f.path for f in part])
        manifest.shards[name] = len(part)
        manifest.entries.extend(
            Entry(f.path, f.size, f.mtime_ns, name, r) for r, f in enumerate(part)
        )
        write_manifest(out, manifest)
        rows[:] = [pending[len(part) :]] if rest else []
        files[:] = rest

    with (
        eval_mode(model),
        tqdm(total=len(todo), desc="index", unit="img", disable=not progress) as bar,
    ):
        for ids, images, bad in loader:
            skipped += [(todo[i].path, why) for i, why in bad]
            if images is not None:
                batch = {"images": normalise(images.to(device, non_blocking=True))}
                rows.append(encode_images_batch(model, batch, device, autocast_dtype).cpu())
                files.extend(todo[i] for i in ids)
            while len(files) >= shard_rows:
                commit()
            bar.update(len(ids) + len(bad))
    while files:
        commit()
    return skipped


def _compact(out: Path, manifest: Manifest, store_dtype: torch.dtype, shard_rows: int) -> None:
    """Rewrite the live rows into fresh shards when the shards hold more dead rows than live
    ones (after many removals), so the index does not grow without bound."""
    stored = sum(manifest.shards.values())
    if stored <= 2 * len(manifest.entries):
        return
    vectors = load_vectors(out, manifest)
    entries, shards = [], {}
    for start in range(0, len(manifest.entries), shard_rows):
        part = manifest.entries[start : start + shard_rows]
        name = f"{uuid.uuid4().hex[:16]}.safetensors"
        write_shard(
            out, name, vectors[start : start + len(part)].to(store_dtype), [e.path for e in part]
        )
        shards[name] = len(part)
        entries += [Entry(e.path, e.size, e.mtime_ns, name, r) for r, e in enumerate(part)]
    log.info("compacted the index: %d stored rows -> %d", stored, len(entries))
    manifest.entries, manifest.shards = entries, shards


def _backend(
    out: Path, manifest: Manifest, backend: str, unchanged: Manifest | None
) -> dict[str, Any]:
    """The backend section of the manifest; a faiss index is built (or kept when nothing changed)."""
    if backend == "exact":
        return {"name": "exact"}
    if unchanged is not None and unchanged.backend.get("name") == "faiss":
        file = out / str(unchanged.backend.get("file"))
        if file.is_file():
            return dict(unchanged.backend)
    search = FaissSearch.build(load_vectors(out, manifest))
    name = f"faiss-{uuid.uuid4().hex[:12]}.index"
    tmp = out / f".{name}.tmp"
    search.save(tmp)
    os.replace(tmp, out / name)
    return {"name": "faiss", "file": name, **search.plan}
