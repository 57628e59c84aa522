"""Tests of the procedurally drawn synthetic dataset (tbps.data.synthetic)."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tbps.data.synthetic import (
    COLOURS,
    SYNTH_MARKER,
    SynthConfig,
    generate_synthetic_dataset,
    tokenize,
)

TINY = SynthConfig(num_identities=12, images_per_identity=(2, 3), seed=7)
UPPER_NOUNS = {
    "shirt", "t-shirt", "tee", "top", "jacket", "coat", "overcoat", "sweater", "jumper",
    "pullover", "hoodie", "sweatshirt", "dress",
}  # fmt: skip
LOWER_NOUNS = {"pants", "trousers", "slacks", "jeans", "shorts", "skirt"}
VI_DIACRITICS = set("ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ")


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != SYNTH_MARKER
    }


@pytest.fixture(scope="module")
def cuhk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "cuhk"
    summary = generate_synthetic_dataset(out, TINY, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def vn3k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "vn3k"
    cfg = SynthConfig(num_identities=12, images_per_identity=(2, 3), layout="vn3k", seed=3)
    generate_synthetic_dataset(out, cfg, progress=False)
    return out


def test_format_and_summary(cuhk: tuple[Path, dict]) -> None:
    out, summary = cuhk
    records = json.loads((out / "reid_raw.json").read_text(encoding="utf-8"))
    assert isinstance(records, list) and records
    ids: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for rec in records:
        assert set(rec) == {"split", "id", "file_path", "captions", "processed_tokens"}
        assert rec["split"] in ids
        assert isinstance(rec["id"], int) and 1 <= rec["id"] <= TINY.num_identities
        ids[rec["split"]].add(rec["id"])
        assert "/" in rec["file_path"] and rec["file_path"].endswith(".jpg")
        caps = rec["captions"]
        assert len(caps) == TINY.captions_per_image and len(set(caps)) == len(caps) >= 2
        assert all(isinstance(c, str) and len(c.split()) >= 5 for c in caps)
        assert rec["processed_tokens"] == [tokenize(c) for c in caps]
        assert all(t == t.lower() and t for toks in rec["processed_tokens"] for t in toks)
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert set().union(*ids.values()) == set(range(1, TINY.num_identities + 1))
    assert all(ids.values())
    for split in ids:
        assert summary[split]["ids"] == len(ids[split])
        n = sum(r["split"] == split for r in records)
        assert summary[split]["images"] == n
        assert summary[split]["captions"] == n * TINY.captions_per_image
    assert summary["out_dir"] == str(out.absolute()) and summary["seconds"] >= 0
    per_id: dict[int, int] = {}
    for rec in records:
        per_id[rec["id"]] = per_id.get(rec["id"], 0) + 1
    assert all(2 <= n <= 3 for n in per_id.values())


def test_images_are_rgb_jpeg_of_config_size(cuhk: tuple[Path, dict]) -> None:
    out, _ = cuhk
    records = json.loads((out / "reid_raw.json").read_text(encoding="utf-8"))
    for rec in records:
        path = out / "imgs" / rec["file_path"]
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == (TINY.image_width, TINY.image_height)
    a, b = (out / "imgs" / r["file_path"] for r in records[:2])
    assert a.read_bytes() != b.read_bytes()  # images of one identity differ


def test_marker_written_and_reused(cuhk: tuple[Path, dict]) -> None:
    out, summary = cuhk
    marker = json.loads((out / SYNTH_MARKER).read_text(encoding="utf-8"))
    assert marker["version"] == 1 and marker["config"] == TINY.to_dict()
    assert marker["summary"]["train"] == summary["train"]
    before = (out / "reid_raw.json").stat().st_mtime_ns
    again = generate_synthetic_dataset(out, TINY, progress=False)
    assert again == summary
    assert (out / "reid_raw.json").stat().st_mtime_ns == before  # not regenerated
    with pytest.raises(FileExistsError, match="different config"):
        generate_synthetic_dataset(out, SynthConfig(num_identities=12, seed=8), progress=False)


def test_refuses_foreign_nonempty_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        generate_synthetic_dataset(tmp_path, TINY, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path / "mine.txt", TINY, progress=False)


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    cfg = SynthConfig(num_identities=3, images_per_identity=(1, 1))
    generate_synthetic_dataset(out, cfg, progress=False)
    assert (out / SYNTH_MARKER).is_file() and (out / "reid_raw.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging leftovers


def test_interrupted_run_leaves_no_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tbps.data.synthetic import writer as synthetic  # the module that calls render_image

    calls = {"n": 0}
    real = synthetic.render_image

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "ds", TINY, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging folder remains


def test_deterministic_and_seed_dependent(cuhk: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = cuhk
    again = tmp_path / "again"
    generate_synthetic_dataset(again, TINY, progress=False)
    assert _tree_digest(again) == _tree_digest(out)
    other = tmp_path / "other"
    generate_synthetic_dataset(
        other, SynthConfig(num_identities=12, images_per_identity=(2, 3), seed=8), progress=False
    )
    assert (other / "reid_raw.json").read_bytes() != (out / "reid_raw.json").read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_identities": 2}, "num_identities"),
        ({"num_identities": 10.5}, "num_identities"),
        ({"split_fractions": (0.5, 0.2, 0.2)}, "split_fractions"),
        ({"split_fractions": (1.0, 0.0, 0.0)}, "split_fractions"),
        ({"split_fractions": (0.8, 0.2)}, "split_fractions"),
        ({"captions_per_image": 0}, "captions_per_image"),
        ({"layout": "market"}, "layout"),
        ({"images_per_identity": (4, 2)}, "images_per_identity"),
        ({"images_per_identity": 3}, "images_per_identity"),
        ({"image_height": 8}, "image_height"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_config_accepts_lists_and_round_trips() -> None:
    cfg = SynthConfig(images_per_identity=[2, 4], split_fractions=[0.6, 0.2, 0.2])
    assert cfg.images_per_identity == (2, 4) and cfg.split_fractions == (0.6, 0.2, 0.2)
    assert SynthConfig.from_dict({**cfg.to_dict(), "version": 1}) == cfg
    hash(cfg)


def _upper_colour_words(attrs: dict, words: list[str]) -> bool:
    """True if an upper-garment noun is preceded (within 5 words) by the identity's colour."""
    names = set(COLOURS[attrs["upper_colour"]][1])
    for i, w in enumerate(words):
        if w in UPPER_NOUNS and names & set(words[max(0, i - 5) : i]):
            return True
    return False


def test_captions_bind_colours_to_garments(cuhk: tuple[Path, dict]) -> None:
    out, _ = cuhk
    attrs = json.loads((out / "attributes.json").read_text(encoding="utf-8"))
    records = json.loads((out / "reid_raw.json").read_text(encoding="utf-8"))
    lower_hits = lower_total = 0
    for rec in records:
        person = attrs[str(rec["id"])]
        for tokens in rec["processed_tokens"]:
            words = [w for t in tokens for w in t.split("-")] + tokens
            assert _upper_colour_words(person, tokens) or _upper_colour_words(person, words), (
                person["upper"],
                person["upper_colour"],
                tokens,
            )
            if person["lower"] != "none":
                lower_total += 1
                names = set(COLOURS[person["lower_colour"]][1])
                for i, w in enumerate(tokens):
                    if w in LOWER_NOUNS and names & set(tokens[max(0, i - 4) : i]):
                        lower_hits += 1
                        break
    assert lower_hits >= 0.7 * lower_total  # the lower garment colour is usually mentioned


def test_identities_are_distinct(cuhk: tuple[Path, dict]) -> None:
    out, _ = cuhk
    attrs = json.loads((out / "attributes.json").read_text(encoding="utf-8"))
    keys = {
        json.dumps({k: v for k, v in a.items() if k not in ("pid", "skin", "height", "width")})
        for a in attrs.values()
    }
    assert len(keys) == len(attrs) == TINY.num_identities


def test_vn3k_layout(vn3k: Path) -> None:
    assert not (vn3k / "reid_raw.json").exists()
    records = json.loads((vn3k / "data_captions.json").read_text(encoding="utf-8"))
    assert {r["split"] for r in records} == {"train", "validate", "test"}
    for rec in records:
        assert set(rec) == {"split", "id", "file_path", "captions", "en_captions"}
        assert (vn3k / "imgs" / rec["file_path"]).is_file()
        vi, en = rec["captions"], rec["en_captions"]
        assert len(vi) == len(en) == 2 and len(set(vi)) == 2
        for cap in vi:
            assert unicodedata.normalize("NFC", cap) == cap
            assert set(cap.lower()) & VI_DIACRITICS
            assert cap[0].isupper() and cap.endswith(".")
        assert all(e.isascii() for e in en)
    text = " ".join(c for r in records for c in r["captions"])
    assert "mặc" in text and "áo" in text


def test_caption_ceiling_is_the_oracle_r1_by_mentioned_attributes(
    cuhk: tuple[Path, dict],
) -> None:
    """The summary's ceiling equals a brute-force oracle: score every gallery image by the
    caption's attributes its person has, expected R1 over random tie-breaking."""
    from tbps.data.synthetic.attributes import image_rng, sample_identities, sample_shot
    from tbps.data.synthetic.captions import planned_captions
    from tbps.data.synthetic.oracle import caption_facts
    from tbps.data.synthetic.writer import _images_per_identity, assign_splits

    out, summary = cuhk
    persons = {p.pid: p for p in sample_identities(TINY)}
    for split in ("train", "test"):
        pids = assign_splits(TINY)[split]
        images = {pid: _images_per_identity(TINY, pid) for pid in pids}
        gallery = [pid for pid in pids for _ in range(images[pid])]
        expected, count = 0.0, 0
        for pid in pids:
            for k in range(images[pid]):
                shot = sample_shot(image_rng(TINY.seed, pid, k))
                planned = planned_captions(
                    persons[pid], shot, TINY.captions_per_image, TINY.seed, k
                )
                for plan, caption, _ in planned:
                    facts = caption_facts(persons[pid], plan)
                    assert facts.get("gender") in (None, persons[pid].gender)
                    words = COLOURS[facts["upper_colour"]][1]  # always mentioned
                    assert any(w in caption.lower() for w in words)
                    scores = [
                        sum(getattr(persons[g], n) == v for n, v in facts.items()) for g in gallery
                    ]
                    best = max(scores)
                    top = [g for g, s in zip(gallery, scores) if s == best]
                    expected += top.count(pid) / len(top)
                    count += 1
        assert summary[split]["caption_ceiling_r1"] == pytest.approx(
            100 * expected / count, abs=0.01
        )
    assert 0 < summary["test"]["caption_ceiling_r1"] <= 100
