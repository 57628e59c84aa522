"""`tbps data stats` and `tbps data check`: counts per split, and the dirty-data scan."""

import json
import os

from fixtures import write_cuhk_fixture, write_family_fixture
from tbps.cli import main
from tbps.data.checks import check_dataset, non_text_characters
from tbps.data.formats import parse_dataset


def test_stats_table_and_json(tmp_path, capsys):
    write_family_fixture(tmp_path, "rstpreid", {"train": [1, 2, 3], "val": [5], "test": [6, 8]})
    assert main(["data", "stats", "data=rstpreid", f"data.root={tmp_path}", "format=json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == ["train", "val", "test"]
    assert {k: stats["train"][k] for k in ("ids", "images", "captions")} == {
        "ids": 3,
        "images": 6,
        "captions": 12,
    }
    assert stats["test"]["captions_per_image"] == {"mean": 2.0, "min": 2, "max": 2}
    assert stats["val"]["caption_words"]["min"] == 4  # "Pedestrian 5, photo 0"
    assert main(["data", "stats", "data=rstpreid", f"data.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "captions/image" in out and out.splitlines()[3].split()[:4] == ["train", "3", "6", "12"]


def test_stats_of_icfg_show_the_carved_val_split(tmp_path, capsys):
    write_family_fixture(tmp_path, "icfg_pedes", {"train": list(range(1, 21)), "test": [40]})
    assert main(["data", "stats", "data=icfg_pedes", f"data.root={tmp_path}", "format=json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["val"]["ids"] == 1 and stats["train"]["ids"] == 19  # val_fraction 0.05
    assert main(["data", "stats", "data=icfg_pedes", f"data.root={tmp_path}", "format=xml"]) == 2
    assert "format='xml'; valid: table, json" in capsys.readouterr().err


def _dirty(tmp_path):
    records = write_cuhk_fixture(tmp_path, {"train": 4, "val": 1, "test": 1}, images_per_id=2)
    os.remove(tmp_path / "imgs" / records[0]["file_path"])
    (tmp_path / "imgs" / records[1]["file_path"]).write_bytes(b"\xff\xd8 not a jpeg")
    records[2]["captions"] = ["  ", "a person walking"]
    records[3]["captions"] = ["A red coat.", "a red coat"]  # same image, same text
    records[4]["captions"] = ["text with a bell \x07 and \\u00e9 escape", "ok"]
    records[5]["captions"] = ["A red coat"]  # person 3 (records 4-5), also on person 1's image
    records[6]["captions"] = ["Người đàn ông", "a person walking"]  # also on person 2's image
    records.append(dict(records[7]))  # the same image listed twice
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    return records


def test_check_counts_and_first_offenders(tmp_path):
    records = _dirty(tmp_path)
    report = check_dataset(parse_dataset("cuhk_pedes", tmp_path, on_bad_caption="skip"))
    counts = report.to_dict()["counts"]
    assert counts == {
        "missing_image": 1,
        "unreadable_image": 1,
        "empty_caption": 1,
        "no_caption": 0,
        "duplicate_image_entry": 1,
        "duplicate_caption_same_image": 1,
        "duplicate_caption_other_person": 2,
        "non_text_characters": 1,
        "identity_in_several_splits": 0,
        "duplicate_caption_same_person": 6,  # the fixture repeats captions per person
        "non_ascii_captions": 1,
    }
    assert not report.ok
    assert records[0]["file_path"] in report.examples["missing_image"][0]
    assert "U+0007" in report.examples["non_text_characters"][0]
    assert "\\u00e9" in report.examples["non_text_characters"][0]
    assert "record 2 captions[0] is an empty caption" in report.examples["empty_caption"][0]
    # every kind names where the annotation file lists the image
    assert "reid_raw.json record 0" in report.examples["missing_image"][0]
    assert "reid_raw.json record 1" in report.examples["unreadable_image"][0]
    assert "reid_raw.json record 4" in report.examples["non_text_characters"][0]
    assert "reid_raw.json record 3" in report.examples["duplicate_caption_same_image"][0]
    duplicate = report.examples["duplicate_image_entry"][0]
    assert (
        "reid_raw.json record 12" in duplicate
        and "(also in train (reid_raw.json record 7))" in duplicate
    )


def test_check_cli_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean"
    write_cuhk_fixture(clean, {"train": 3, "val": 1, "test": 1})
    assert main(["data", "check", "data=cuhk_pedes", f"data.root={clean}"]) == 0
    assert "result: OK" in capsys.readouterr().out
    _dirty(tmp_path / "dirty")
    args = ["data", "check", "data=cuhk_pedes", f"data.root={tmp_path / 'dirty'}"]
    assert main([*args, "format=json", "max_examples=1"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["counts"]["missing_image"] == 1
    assert all(len(v) == 1 for v in report["examples"].values())
    assert main([*args, "images=false"]) == 1
    out = capsys.readouterr().out
    assert "problems found" in out and "missing_image                           0" in out


def test_non_text_characters():
    assert non_text_characters("Người mặc áo đỏ, 100% cotton!") == []
    assert non_text_characters("zero\u200bwidth \ufffd") == ["U+200B", "U+FFFD"]
    assert non_text_characters("cafÃ© latte") == ["Ã©"]


def test_identity_leakage_between_splits_is_a_problem(tmp_path, capsys):
    write_family_fixture(tmp_path, "rstpreid", {"train": [1, 2, 3], "val": [5], "test": [3, 6]})
    args = ["data=rstpreid", f"data.root={tmp_path}"]
    assert main(["data", "check", *args]) == 1
    out = capsys.readouterr().out
    assert "identity_in_several_splits" in out and "problems found" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("id "))
    assert "train 2 images" in line and "test 2 images" in line  # the ids and their counts
    assert main(["data", "stats", *args]) == 0
    assert "ids in more than one split: train&test 1" in capsys.readouterr().out
    assert main(["data", "stats", *args, "format=json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["shared_ids"] == {"test": 1} and "shared_ids" not in stats["val"]
