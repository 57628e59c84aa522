"""The images of a gallery folder: walked recursively, each with the size and mtime that tell
an incremental index which files changed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tbps.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageFile:
    """One image of the folder: ``path`` relative to the folder (POSIX separators)."""

    path: str
    size: int
    mtime_ns: int

    @property
    def signature(self) -> tuple[int, int]:
        """What changes when the file does (size, modification time)."""
        return (self.size, self.mtime_ns)


@dataclass
class FolderScan:
    """The images of a folder, sorted by path, and the entries left out (path, reason)."""

    root: Path
    images: list[ImageFile]
    left_out: list[tuple[str, str]]


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Every file under ``root`` whose suffix is an image one (case-insensitive), recursively,
    symbolic links followed only while they stay inside ``root``; hidden folders skipped."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"images={root}: not a folder (give the folder of gallery images)")
    real_root = root.resolve()
    images: list[ImageFile] = []
    left_out: list[tuple[str, str]] = []
    seen = {real_root}
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = (Path(folder) / d).resolve()
            if d.startswith(".") or real in seen:  # hidden, or a link back to a visited folder
                continue
            if not real.is_relative_to(real_root):
                left_out.append(
                    ((Path(folder) / d).relative_to(root).as_posix(), "links outside the folder")
                )
                continue
            seen.add(real)
            kept.append(d)
        dirs[:] = kept
        for name in files:
            if not name.lower().endswith(IMAGE_SUFFIXES) or name.startswith("."):
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            real = path.resolve()
            if not real.is_relative_to(real_root):
                left_out.append((rel, f"links outside the folder ({real})"))
                continue
            try:
                stat = path.stat()
            except OSError as e:
                left_out.append((rel, f"cannot stat ({e.strerror})"))
                continue
            images.append(ImageFile(rel, stat.st_size, stat.st_mtime_ns))
    images.sort(key=lambda f: f.path)
    return FolderScan(root, images, left_out)
