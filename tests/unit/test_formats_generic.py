"""The generic custom-data format (JSON or CSV) and the CUHK-10% + VN3K mixture."""

import csv
import json

import pytest

from fixtures import write_cuhk_fixture, write_family_fixture, write_generic_fixture
from tbps.data.formats import parse_dataset
from tbps.data.records import training_records
from tbps.errors import ConfigError, DataError


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_generic_csv_and_json_give_the_same_dataset(tmp_path, kind):
    rows = write_generic_fixture(tmp_path, kind)
    ds = parse_dataset("generic", tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 2, "test": 4}
    first = ds.split("train")[0]
    assert first.pid == 3 and first.image_path == str(tmp_path / "imgs" / rows[0]["image_path"])
    assert first.captions == ("Person 3, shot 0, in a coat", "Ảnh 0 của người 3")  # rows merged
    # the annotation file itself as data.root works too
    again = parse_dataset("generic", tmp_path / f"annotations.{kind}")
    assert again.splits == ds.splits


def test_generic_column_mapping_image_dir_and_split_aliases(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(b"")
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "who", "text", "subset"])
        w.writerow(["a.jpg", "12", "a man, running", "training"])
        w.writerow(["b.jpg", "13", '"quoted", with comma', "Validation"])
        w.writerow(["c.jpg", "14", "someone", "test"])
    ds = parse_dataset(
        "generic",
        tmp_path,
        annotation="mine.csv",
        image_dir="pics",
        columns={"image": "file", "pid": "who", "caption": "text", "split": "subset"},
    )
    assert ds.split("train")[0].image_path == str(tmp_path / "pics" / "a.jpg")
    assert ds.split("val")[0].captions == ('"quoted", with comma',)
    with pytest.raises(DataError, match=r"mine.csv: CSV header lacks column\(s\) \['image_path'"):
        parse_dataset("generic", tmp_path, annotation="mine.csv")
    with pytest.raises(ConfigError, match=r"columns: unknown field\(s\) \['id'\]"):
        parse_dataset("generic", tmp_path, annotation="mine.csv", columns={"id": "who"})


@pytest.mark.parametrize(
    "row, message",
    [
        (
            ["x.jpg", "seven", "text", "train"],
            r"line 3 key 'person_id' is 'seven', expected an integer",
        ),
        (["x.jpg", "7", "text", "dev"], r"line 3 has split 'dev', expected one of train"),
        (["x.jpg", "7", "  ", "train"], r"line 3 caption is an empty caption"),
        (["x.jpg", "", "text", "train"], r"line 3 has no value for 'person_id'"),
        (
            ["a.jpg", "8", "text", "train"],
            r"line 3 lists image 'a.jpg' as person 8 in train, but line 2",
        ),
    ],
)
def test_generic_bad_rows_name_file_line_and_key(tmp_path, row, message):
    with open(tmp_path / "annotations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "person_id", "caption", "split"])
        w.writerow(["a.jpg", "7", "fine", "train"])
        w.writerow(row)
    with pytest.raises(DataError, match=message) as info:
        parse_dataset("generic", tmp_path)
    assert "annotations.csv" in str(info.value)


def test_generic_json_errors(tmp_path):
    (tmp_path / "annotations.json").write_text('[{"image_path": "a.jpg", "person_id": 1,}]')
    with pytest.raises(DataError, match=r"annotations.json: malformed JSON at line 1, column"):
        parse_dataset("generic", tmp_path)
    (tmp_path / "annotations.json").write_text(
        json.dumps([{"image_path": "a.jpg", "split": "test"}])
    )
    with pytest.raises(DataError, match=r"annotations.json: record 0 has no value for 'person_id'"):
        parse_dataset("generic", tmp_path)
    (tmp_path / "annotations.json").unlink()
    with pytest.raises(DataError, match=r"no annotation file annotations.json or annotations.csv"):
        parse_dataset("generic", tmp_path)


def test_cuhk10_vn3k_mixture(tmp_path):
    cuhk = write_cuhk_fixture(tmp_path / "CUHK-PEDES", {"train": 10, "val": 2, "test": 2}, 2)
    write_family_fixture(
        tmp_path / "VN3K", "vn3k", {"train": [1, 2, 3], "validate": [4], "test": [5]}
    )
    max_cuhk = max(r["id"] for r in cuhk)
    ds = parse_dataset("cuhk10_vn3k", tmp_path, cuhk_fraction=0.25, seed=1, vn3k_language="vi")
    assert set(ds.splits) == {"train", "val", "test", "cuhk_val", "cuhk_test"}
    train = ds.split("train")
    from_cuhk = [img for img in train if "CUHK-PEDES" in img.image_path]
    from_vn3k = [img for img in train if "VN3K" in img.image_path]
    assert len(from_cuhk) == 5 and len(from_vn3k) == 6  # round(0.25 * 20) + all VN3K train
    assert {img.pid for img in from_vn3k} == {max_cuhk + 1, max_cuhk + 2, max_cuhk + 3}
    assert {img.pid for img in ds.split("test")} == {max_cuhk + 5}
    records, pid_map = training_records(train)  # contiguous labels over both sources
    assert sorted(pid_map.values()) == list(range(len(pid_map)))
    assert max(r.pid for r in records) == len(pid_map) - 1
    same = parse_dataset("cuhk10_vn3k", tmp_path, cuhk_fraction=0.25, seed=1, vn3k_language="vi")
    assert same.split("train") == train  # seeded
    other = parse_dataset("cuhk10_vn3k", tmp_path, cuhk_fraction=0.25, seed=2, vn3k_language="vi")
    assert other.split("train") != train
    assert "VN3K ids shifted by" in ds.notes[0]
    with pytest.raises(ConfigError, match="cuhk_fraction must be in"):
        parse_dataset("cuhk10_vn3k", tmp_path, cuhk_fraction=0)
