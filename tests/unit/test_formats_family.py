"""ICFG-PEDES, RSTPReid and VN3K parsers on tiny fixtures written in their native formats."""

import json
import logging
import unicodedata

import pytest

from fixtures import VI_CAPTION_NFD, write_family_fixture
from tbps.data.formats import format_options, parse_dataset
from tbps.data.sources import load_dataset
from tbps.errors import ConfigError, DataError

IDS = {"train": [1, 2, 5, 9], "test": [11, 14]}  # 1-based, with gaps


@pytest.mark.parametrize("name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_accepts_both_file_names_and_has_no_val(tmp_path, name):
    records = write_family_fixture(tmp_path / "ICFG-PEDES", "icfg_pedes", IDS)
    if name != "ICFG-PEDES.json":
        (tmp_path / "ICFG-PEDES" / "ICFG-PEDES.json").rename(tmp_path / "ICFG-PEDES" / name)
    ds = parse_dataset("icfg_pedes", tmp_path)  # the parent folder works too
    assert ds.root == str(tmp_path / "ICFG-PEDES")
    assert list(ds.splits) == ["train", "test"]
    assert [img.pid for img in ds.split("train")][::2] == [1, 2, 5, 9]
    first = ds.split("train")[0]
    assert first.image_path == str(tmp_path / "ICFG-PEDES" / "imgs" / records[0]["file_path"])
    assert "/train/0001/" in first.image_path and len(first.captions) == 1


def test_icfg_val_is_carved_from_training_identities(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbps.data.splits")
    write_family_fixture(tmp_path, "icfg_pedes", {"train": list(range(1, 21)), "test": [30]})
    with pytest.raises(DataError, match=r"has no 'val' split .*set data.val_fraction"):
        load_dataset("icfg_pedes", "icfg_pedes", tmp_path)
    ds = load_dataset("icfg_pedes", "icfg_pedes", tmp_path, val_fraction=0.2, split_seed=3)
    val_ids = {img.pid for img in ds.split("val")}
    train_ids = {img.pid for img in ds.split("train")}
    assert len(val_ids) == 4 and len(train_ids) == 16 and not val_ids & train_ids
    assert len(ds.split("val")) == 8  # every image of a held-out person goes with them
    assert "carved 4 of 20 training identities" in caplog.text and ds.notes
    again = load_dataset("icfg_pedes", "icfg_pedes", tmp_path, val_fraction=0.2, split_seed=3)
    assert {img.pid for img in again.split("val")} == val_ids  # seeded
    other = load_dataset("icfg_pedes", "icfg_pedes", tmp_path, val_fraction=0.2, split_seed=4)
    assert {img.pid for img in other.split("val")} != val_ids


def test_rstpreid_uses_img_path(tmp_path):
    records = write_family_fixture(tmp_path, "rstpreid", {"train": [3, 4], "val": [7], "test": [8]})
    ds = parse_dataset("rstpreid", tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert ds.split("val")[0].image_path == str(tmp_path / "imgs" / records[4]["img_path"])
    assert ds.split("train")[0].captions == tuple(records[0]["captions"])
    data = json.loads((tmp_path / "data_captions.json").read_text())
    data[2]["file_path"] = data[2].pop("img_path")  # a CUHK-style record by mistake
    (tmp_path / "data_captions.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"data_captions.json: record 2 has no key 'img_path'"):
        parse_dataset("rstpreid", tmp_path)


@pytest.mark.parametrize(
    "fmt, per_image, first",
    [
        ("vn3k_vi", 2, unicodedata.normalize("NFC", VI_CAPTION_NFD) + " số 1"),
        ("vn3k_en", 2, "A walker number 1 in view 0."),
        ("vn3k_mixed", 4, unicodedata.normalize("NFC", VI_CAPTION_NFD) + " số 1"),
    ],
)
def test_vn3k_languages_validate_split_and_nfc(tmp_path, fmt, per_image, first):
    write_family_fixture(
        tmp_path / "VN3K", "vn3k", {"train": [1, 2, 4], "validate": [6], "test": [7, 9]}
    )
    ds = parse_dataset(fmt, tmp_path)
    assert list(ds.splits) == ["train", "val", "test"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 4}
    img = ds.split("train")[0]
    assert len(img.captions) == per_image and img.captions[0] == first
    assert all(unicodedata.is_normalized("NFC", c) for i in ds.split("test") for c in i.captions)
    if fmt == "vn3k_mixed":
        assert img.captions[2] == "A walker number 1 in view 0."


@pytest.mark.parametrize(
    "fmt, layout, file",
    [("icfg_pedes", "icfg_pedes", "ICFG-PEDES.json"), ("vn3k_en", "vn3k", "data_captions.json")],
)
def test_malformed_json_and_missing_key_name_file_and_place(tmp_path, fmt, layout, file):
    records = write_family_fixture(tmp_path, layout, {"train": [1, 2], "test": [3]})
    text = json.dumps(records, indent=1)
    (tmp_path / file).write_text(text.replace('"id": 2', '"id": 2,,', 1))
    with pytest.raises(DataError, match=rf"{file}: malformed JSON at line \d+, column \d+"):
        parse_dataset(fmt, tmp_path)
    key = "captions" if fmt == "icfg_pedes" else "en_captions"
    del records[3][key]
    (tmp_path / file).write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"{file}: record 3 has no key '{key}'"):
        parse_dataset(fmt, tmp_path)


def test_empty_captions_error_or_counted_skip(tmp_path, caplog):
    records = write_family_fixture(tmp_path, "vn3k", {"train": [1, 2], "test": [3]})
    records[1]["captions"] = ["   ", "ok"]
    records[2]["captions"] = [""]
    (tmp_path / "data_captions.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 1 captions\[0\] is an empty caption"):
        parse_dataset("vn3k_vi", tmp_path)
    ds = parse_dataset("vn3k_vi", tmp_path, on_bad_caption="skip")
    assert len(ds.split("train")) == 3  # record 2 lost its only caption: image skipped
    assert ds.split("train")[1].captions == ("ok",)
    assert [kind for kind, _ in ds.skipped] == ["empty_caption", "empty_caption", "no_caption"]
    assert "skipped 3 annotation entries" in caplog.text
    with pytest.raises(ConfigError, match="on_bad_caption='drop'; valid: error, skip"):
        parse_dataset("vn3k_vi", tmp_path, on_bad_caption="drop")


def test_unknown_format_option_is_rejected(tmp_path):
    write_family_fixture(tmp_path, "vn3k", {"train": [1], "test": [2]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\] for format 'vn3k_vi'"):
        parse_dataset("vn3k_vi", tmp_path, colour="red")
    assert format_options("generic") == ["annotation", "image_dir", "columns"]
