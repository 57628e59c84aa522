"""CUHK-PEDES parser, records, bad-input errors and the bad-image policy."""

import json

import pytest

from fixtures import write_cuhk_fixture
from tbps.data.formats import parse_dataset
from tbps.data.images import check_images, load_image
from tbps.data.records import gallery_and_queries, training_records
from tbps.errors import ConfigError, DataError


def test_parses_splits_paths_and_captions(tmp_path):
    records = write_cuhk_fixture(
        tmp_path, {"train": 3, "val": 1, "test": 2}, images_per_id=2, first_id=5
    )
    ds = parse_dataset("cuhk_pedes", tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 4}
    first = ds.split("train")[0]
    assert first.pid == 5 and first.image_path == str(tmp_path / "imgs" / records[0]["file_path"])
    assert first.captions == tuple(records[0]["captions"])


def test_accepts_parent_folder(tmp_path):
    write_cuhk_fixture(tmp_path / "CUHK-PEDES")
    assert parse_dataset("cuhk_pedes", tmp_path).root == str(tmp_path / "CUHK-PEDES")


def test_training_pids_are_remapped_and_eval_keeps_raw_ids(tmp_path):
    write_cuhk_fixture(tmp_path, {"train": 3, "val": 1, "test": 1}, first_id=1)
    ds = parse_dataset("cuhk_pedes", tmp_path)
    # make ids non-contiguous: 1, 2, 3 -> 1, 2, 30
    images = ds.split("train")
    images = [
        img if img.pid != 3 else type(img)(30, img.image_path, img.captions) for img in images
    ]
    records, pid_map = training_records(images)
    assert pid_map == {1: 0, 2: 1, 30: 2}
    assert sorted({r.pid for r in records}) == [0, 1, 2]
    assert len(records) == sum(len(img.captions) for img in images)
    gallery, queries = gallery_and_queries(ds.split("test"))
    assert len(gallery) == 2 and len(queries) == 4 and {p for p, _ in gallery} == {5}


def test_unicode_captions_are_nfc_and_whitespace_collapsed(tmp_path):
    write_cuhk_fixture(tmp_path)
    data = json.loads((tmp_path / "reid_raw.json").read_text())
    data[0]["captions"] = ["Người  mặc a\u0300o đỏ \n", "ok"]
    (tmp_path / "reid_raw.json").write_text(json.dumps(data))
    caption = parse_dataset("cuhk_pedes", tmp_path).split("train")[0].captions[0]
    assert caption == "Người mặc ào đỏ"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[3].pop("file_path"), r"record 3 has no key 'file_path'"),
        (lambda d: d[1].update(id="7"), r"record 1 key 'id' is str"),
        (lambda d: d[2].update(split="dev"), r"record 2 has split 'dev'"),
        (
            lambda d: d[0].update(captions=["fine", "  "]),
            r"record 0 captions\[1\] is an empty caption",
        ),
    ],
)
def test_bad_records_name_file_record_and_key(tmp_path, mutate, message):
    write_cuhk_fixture(tmp_path)
    data = json.loads((tmp_path / "reid_raw.json").read_text())
    mutate(data)
    (tmp_path / "reid_raw.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as info:
        parse_dataset("cuhk_pedes", tmp_path)
    assert "reid_raw.json" in str(info.value)


def test_malformed_json_reports_line_and_column(tmp_path):
    (tmp_path / "reid_raw.json").write_text('[{"split": "train",\n  "id": 1,, }]')
    with pytest.raises(DataError, match=r"reid_raw.json: malformed JSON at line 2, column"):
        parse_dataset("cuhk_pedes", tmp_path)


def test_missing_folder_and_annotation(tmp_path):
    with pytest.raises(DataError, match="does not exist.*tbps data synth"):
        parse_dataset("cuhk_pedes", tmp_path / "nope")
    with pytest.raises(DataError, match="no annotation file reid_raw.json"):
        parse_dataset("cuhk_pedes", tmp_path)
    with pytest.raises(
        ConfigError, match="unknown data.format 'xml'; valid: cuhk10_vn3k, cuhk_pedes"
    ):
        parse_dataset("xml", tmp_path)


def test_bad_image_policy(tmp_path, caplog):
    write_cuhk_fixture(tmp_path)
    images = parse_dataset("cuhk_pedes", tmp_path).split("train")
    missing, corrupt = images[0].image_path, images[1].image_path
    import os

    os.remove(missing)
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(DataError, match=f"train image missing: {missing}"):
        check_images(images, "error", "train")
    kept = check_images(images, "skip", "train")
    assert len(kept) == len(images) - 2
    assert "skipped 2 of 12 images" in caplog.text
    with pytest.raises(DataError, match=f"cannot read image {corrupt}"):
        load_image(corrupt)
    with pytest.raises(ConfigError, match="valid: error, skip"):
        check_images(images, "ignore", "train")
