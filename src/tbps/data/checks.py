"""Dataset health scan (`tbps data check`): bad images, empty/duplicated captions, odd characters."""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

from PIL import Image

from tbps.data.records import DatasetSplits

#: problem kind -> what it means (counted; any of them makes the check fail)
PROBLEMS: dict[str, str] = {
    "missing_image": "image listed in the annotations but not on disk",
    "unreadable_image": "image file that cannot be opened/decoded",
    "empty_caption": "caption that is empty after whitespace clean-up (skipped while parsing)",
    "no_caption": "image left with no usable caption (skipped while parsing)",
    "duplicate_image_entry": "image path listed more than once (in any split)",
    "duplicate_caption_same_image": "caption repeated on the same image",
    "duplicate_caption_other_person": "caption also used for an image of another person",
    "non_text_characters": "control characters, U+FFFD, literal \\u escapes or mojibake",
    "identity_in_several_splits": "person id in more than one split (identity leakage)",
}
#: informational kind -> what it means (reported, never a failure)
NOTICES: dict[str, str] = {
    "duplicate_caption_same_person": "caption also used for another image of the same person",
    "non_ascii_captions": "captions with non-ASCII characters (expected for Vietnamese)",
}

_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
_ESCAPES = re.compile(r"\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|[ÃÂ][\u00a0-\u00bf]")


def non_text_characters(caption: str) -> list[str]:
    """The offending characters/sequences of a caption (empty when it is clean text)."""
    found = [
        f"U+{ord(ch):04X}"
        for ch in caption
        if ch == "\ufffd" or unicodedata.category(ch) in _BAD_CATEGORIES
    ]
    return found + _ESCAPES.findall(caption)


def image_problem(path: str, decode: bool = False) -> str | None:
    """``missing_image`` / ``unreadable_image`` for a path, or None when it opens.

    ``decode`` decodes every pixel (catches truncated files; slower than PIL's ``verify``).
    """
    if not os.path.isfile(path):
        return "missing_image"
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            else:
                img.verify()
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
        return "unreadable_image"
    return None


@dataclass
class CheckReport:
    """Counts per kind and the first offenders of each."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    max_examples: int = 5

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(example)

    @property
    def ok(self) -> bool:
        return not any(self.counts.get(kind) for kind in PROBLEMS)

    def to_dict(self) -> dict:
        kinds = {**PROBLEMS, **NOTICES}
        return {
            "ok": self.ok,
            "counts": {k: self.counts.get(k, 0) for k in kinds},
            "examples": {k: list(self.examples[k]) for k in kinds if self.examples.get(k)},
        }

    def format(self) -> str:
        lines = []
        for title, kinds in (("problems", PROBLEMS), ("notices", NOTICES)):
            lines.append(f"{title}:")
            for kind, meaning in kinds.items():
                lines.append(f"  {kind:<32} {self.counts.get(kind, 0):>8,}   {meaning}")
        for kind in (*PROBLEMS, *NOTICES):
            if self.examples.get(kind):
                lines.append(f"first {kind}:")
                lines.extend(f"  {example}" for example in self.examples[kind])
        lines.append("result: " + ("OK" if self.ok else "problems found"))
        return "\n".join(lines)


def shared_identities(dataset: DatasetSplits) -> dict[int, dict[str, int]]:
    """Person ids found in more than one split: ``{pid: {split: images}}``, by pid."""
    per_pid: dict[int, dict[str, int]] = defaultdict(dict)
    for split, images in dataset.splits.items():
        for img in images:
            per_pid[img.pid][split] = per_pid[img.pid].get(split, 0) + 1
    return {pid: c for pid, c in sorted(per_pid.items()) if len(c) > 1}


def _caption_key(caption: str) -> str:
    return caption.casefold().rstrip(" .!,;")


def check_dataset(
    dataset: DatasetSplits,
    check_images: bool = True,
    decode: bool = False,
    max_examples: int = 5,
    progress: bool = False,
) -> CheckReport:
    """Scan every split of a parsed dataset (parse it with ``on_bad_caption=skip`` so empty
    captions are counted here rather than stopping the parse)."""
    report = CheckReport(max_examples=max_examples)
    for kind, message in dataset.skipped:
        report.add(kind, message)
    seen_paths: dict[str, str] = {}  # image path -> "split (annotation source)"
    first_use: dict[str, tuple[int, str, str]] = {}  # caption key -> (pid, image path, split)
    for split, images in dataset.splits.items():
        for img in images:
            listed = f" ({img.source})" if img.source else ""
            where = f"{split} id {img.pid} {img.image_path}{listed}"
            if img.image_path in seen_paths:
                report.add(
                    "duplicate_image_entry", f"{where} (also in {seen_paths[img.image_path]})"
                )
            else:
                seen_paths[img.image_path] = f"{split}{listed}"
            keys_here: set[str] = set()
            for caption in img.captions:
                bad = non_text_characters(caption)
                if bad:
                    report.add(
                        "non_text_characters", f"{where}: {' '.join(bad[:5])} in {caption!r:.100}"
                    )
                if not caption.isascii():
                    report.add("non_ascii_captions", f"{where}: {caption!r:.100}")
                key = _caption_key(caption)
                if key in keys_here:
                    report.add("duplicate_caption_same_image", f"{where}: {caption!r:.100}")
                    continue
                keys_here.add(key)
                if key in first_use:
                    pid, path, first_split = first_use[key]
                    if path != img.image_path:
                        kind = (
                            "duplicate_caption_same_person"
                            if pid == img.pid
                            else "duplicate_caption_other_person"
                        )
                        report.add(
                            kind, f"{where}: {caption!r:.80} (also {first_split} id {pid} {path})"
                        )
                else:
                    first_use[key] = (img.pid, img.image_path, split)
    for pid, counts in shared_identities(dataset).items():
        where = ", ".join(f"{split} {n} image{'s' * (n != 1)}" for split, n in counts.items())
        report.add("identity_in_several_splits", f"id {pid}: {where}")
    if check_images:
        from tqdm import tqdm

        for path in tqdm(
            seen_paths, desc="images", unit="img", disable=not progress, file=sys.stderr
        ):
            problem = image_problem(path, decode)
            if problem:
                report.add(problem, f"{path} ({seen_paths[path]})")
    return report
