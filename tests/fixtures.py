"""Writers of tiny datasets in native on-disk formats, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (200, 30, 30),
    "blue": (30, 40, 200),
    "green": (30, 160, 50),
    "yellow": (230, 210, 40),
}


def person_image(
    upper: str, lower: str, height: int = 96, width: int = 32, seed: int = 0
) -> Image.Image:
    """A crude pedestrian: upper half one colour, lower half another, on a noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8)
    pixels[height // 8 : height // 2, width // 4 : 3 * width // 4] = COLOURS[upper]
    pixels[height // 2 : 7 * height // 8, width // 4 : 3 * width // 4] = COLOURS[lower]
    return Image.fromarray(pixels)


def write_cuhk_fixture(
    root: Path,
    ids_per_split: dict[str, int] | None = None,
    images_per_id: int = 2,
    first_id: int = 1,
) -> list[dict]:
    """A CUHK-PEDES folder (reid_raw.json + imgs/ with sub-folders); returns the records."""
    ids_per_split = ids_per_split or {"train": 6, "val": 2, "test": 2}
    names = list(COLOURS)
    records, pid = [], first_id
    for split, count in ids_per_split.items():
        for _ in range(count):
            upper, lower = names[pid % 4], names[(pid // 4 + 1 + pid) % 4]
            for k in range(images_per_id):
                rel = f"{split}/p{pid:03d}/{k}.jpg"
                (root / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
                person_image(upper, lower, seed=pid * 10 + k).save(root / "imgs" / rel)
                captions = [
                    f"A person in a {upper} shirt and {lower} pants.",
                    f"{upper} top, {lower} trousers",
                ]
                records.append(
                    {
                        "split": split,
                        "id": pid,
                        "file_path": rel,
                        "captions": captions,
                        "processed_tokens": [],
                    }
                )
            pid += 1
    (root / "reid_raw.json").write_text(json.dumps(records))
    return records
