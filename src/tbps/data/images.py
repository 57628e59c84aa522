"""Image reading with clear errors, and the missing/unreadable-image policy (error or skip)."""

from __future__ import annotations

import logging
import os

from PIL import Image, UnidentifiedImageError

from tbps.data.records import ImageRecord
from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file raises DataError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _problem(path: str, verify: bool) -> str | None:
    if not os.path.isfile(path):
        return "missing"
    if verify:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            return f"unreadable ({e})"
    return None


def check_images(images: list[ImageRecord], policy: str, split: str) -> list[ImageRecord]:
    """Apply the bad-image policy to a split.

    ``error``: every listed image must exist (checked now, cheaply); an unreadable file raises
    when it is loaded. ``skip``: missing or unreadable images are dropped, counted and logged.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"data.on_bad_image={policy!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}")
    verify = policy == "skip"
    kept: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    for record in images:
        problem = _problem(record.image_path, verify)
        if problem is None:
            kept.append(record)
        elif policy == "error":
            raise DataError(
                f"{split} image {problem}: {record.image_path} (set data.on_bad_image=skip to "
                f"skip such images, counted and logged)"
            )
        else:
            skipped.append((record.image_path, problem))
    if skipped:
        log.warning(
            "%s: skipped %d of %d images (data.on_bad_image=skip); first: %s",
            split,
            len(skipped),
            len(images),
            "; ".join(f"{p} {why}" for p, why in skipped[:5]),
        )
    return kept
