"""Per-split dataset statistics (`tbps data stats`): identities, images, captions, lengths."""

from __future__ import annotations

from typing import Any

from tbps.data.records import DatasetSplits, ImageRecord


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0}
    return {"mean": round(sum(values) / len(values), 2), "min": min(values), "max": max(values)}


def split_stats(images: list[ImageRecord]) -> dict[str, Any]:
    """``ids``, ``images``, ``captions``, ``captions_per_image`` and ``caption_words``
    (mean/min/max; words are whitespace-separated)."""
    per_image = [len(img.captions) for img in images]
    words = [len(c.split()) for img in images for c in img.captions]
    return {
        "ids": len({img.pid for img in images}),
        "images": len(images),
        "captions": sum(per_image),
        "captions_per_image": _summary(per_image),
        "caption_words": _summary(words),
    }


def dataset_stats(dataset: DatasetSplits) -> dict[str, dict[str, Any]]:
    """:func:`split_stats` of every split, in the dataset's split order."""
    return {name: split_stats(images) for name, images in dataset.splits.items()}


def identity_overlap(dataset: DatasetSplits) -> dict[str, int]:
    """Person ids shared by each pair of splits: ``{"train&test": 3}`` (pairs with any)."""
    ids = {name: {img.pid for img in images} for name, images in dataset.splits.items()}
    names = list(ids)
    overlap = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = len(ids[a] & ids[b])
            if shared:
                overlap[f"{a}&{b}"] = shared
    return overlap


def format_stats_table(
    stats: dict[str, dict[str, Any]], overlap: dict[str, int] | None = None
) -> str:
    """A fixed-width table, one row per split; then the ids shared between splits."""
    header = (
        f"{'split':<10} {'ids':>7} {'images':>8} {'captions':>9} "
        f"{'captions/image':>18} {'words/caption':>18}"
    )
    rows = [header, "-" * len(header)]
    for split, s in stats.items():
        cpi, words = s["captions_per_image"], s["caption_words"]
        per_image = f"{cpi['mean']:.2f} ({cpi['min']}-{cpi['max']})"
        length = f"{words['mean']:.1f} ({words['min']}-{words['max']})"
        rows.append(
            f"{split:<10} {s['ids']:>7,} {s['images']:>8,} {s['captions']:>9,} "
            f"{per_image:>18} {length:>18}"
        )
    rows.append("(mean (min-max); words are whitespace-separated)")
    if overlap is not None:
        shared = ", ".join(f"{pair} {n:,}" for pair, n in overlap.items())
        rows.append(f"ids in more than one split: {shared or 'none'}")
    return "\n".join(rows)
