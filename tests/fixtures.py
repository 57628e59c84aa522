"""Writers of tiny datasets in native on-disk formats, for tests."""

from __future__ import annotations

import csv
import json
import unicodedata
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


#: a Vietnamese caption in decomposed form (NFD), as some annotation files store it
VI_CAPTION_NFD = unicodedata.normalize("NFD", "Người phụ nữ mặc áo đỏ và quần xanh")


def _save_image(path: Path, pid: int, k: int) -> None:
    names = list(COLOURS)
    path.parent.mkdir(parents=True, exist_ok=True)
    person_image(names[pid % 4], names[(pid // 4 + 1 + pid) % 4], seed=pid * 10 + k).save(path)


def write_family_fixture(
    root: Path,
    fmt: str,
    ids_per_split: dict[str, list[int]],
    images_per_id: int = 2,
) -> list[dict]:
    """A dataset folder in the native layout of ``fmt`` (icfg_pedes, rstpreid or vn3k).

    ``ids_per_split`` maps the file's split names to raw person ids (gaps allowed). ICFG-PEDES:
    ``ICFG-PEDES.json``, one caption per image, nested folders. RSTPReid: ``data_captions.json``
    with flat ``img_path`` names, two captions. VN3K: ``data_captions.json`` with Vietnamese
    ``captions`` (one decomposed, NFD) and English ``en_captions``. Returns the records.
    """
    records = []
    for split, pids in ids_per_split.items():
        for pid in pids:
            for k in range(images_per_id):
                en = [f"A walker number {pid} in view {k}.", f"Pedestrian {pid}, photo {k}"]
                if fmt == "rstpreid":
                    rel = f"{pid:04d}_c{k}_{split}.jpg"
                    rec = {"id": pid, "img_path": rel, "captions": en, "split": split}
                elif fmt == "icfg_pedes":
                    rel = f"{split}/{pid:04d}/{pid:04d}_{k}.jpg"
                    rec = {"split": split, "id": pid, "file_path": rel, "captions": en[:1]}
                    rec["processed_tokens"] = [en[0].lower().split()]
                elif fmt == "vn3k":
                    rel = f"{split}/{pid}/{k}.jpg"
                    vi = [VI_CAPTION_NFD + f" số {pid}", f"Người đi bộ {pid} ảnh {k}"]
                    rec = {"split": split, "id": pid, "file_path": rel, "captions": vi}
                    rec["en_captions"] = en
                else:
                    raise ValueError(fmt)
                _save_image(root / "imgs" / rel, pid, k)
                records.append(rec)
    name = {"icfg_pedes": "ICFG-PEDES.json"}.get(fmt, "data_captions.json")
    (root / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return records


def write_generic_fixture(
    root: Path, kind: str = "csv", ids_per_split: dict[str, list[int]] | None = None
) -> list[dict]:
    """Custom data in the generic format: ``annotations.csv`` (one caption per row) or
    ``annotations.json`` (records with a ``captions`` list); images under nested ``imgs/``."""
    ids_per_split = ids_per_split or {"train": [3, 7, 8, 12], "val": [20], "test": [31, 40]}
    rows = []
    for split, pids in ids_per_split.items():
        for pid in pids:
            for k in range(2):
                rel = f"cam{k}/person_{pid}/{k}.png"
                _save_image(root / "imgs" / rel, pid, k)
                captions = [f"Person {pid}, shot {k}, in a coat", f"Ảnh {k} của người {pid}"]
                rows.append(
                    {"image_path": rel, "person_id": pid, "split": split, "captions": captions}
                )
    if kind == "csv":
        with open(root / "annotations.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image_path", "person_id", "caption", "split"])
            for r in rows:
                for caption in r["captions"]:
                    writer.writerow([r["image_path"], r["person_id"], caption, r["split"]])
    else:
        (root / "annotations.json").write_text(json.dumps(rows, ensure_ascii=False), "utf-8")
    return rows
