"""`tbps VERB --help` prints that verb's own groups, options and keys with their defaults."""

import pytest

from tbps.cli import main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "--help"],
            [
                "usage: tbps train",
                "backbone    scratch_small  | clip_b16",
                "runs_dir: runs",
                "# zero-shot validation",
            ],
        ),
        (["eval", "-h"], ["usage: tbps eval", "device: auto", "data        synthetic"]),
        (["export", "--help"], ["format: tbps", "out: ???", "opset: 18"]),
        (["clean", "--help"], ["dry_run: true", "min_score: null"]),
        (["data", "--help"], ["tbps data <synth|stats|check>", "data check", "data synth"]),
        (["data", "synth", "--help"], ["num_identities: 1000", "layout: cuhk"]),
        (["data", "check", "--help"], ["usage: tbps data check", "data        synthetic"]),
    ],
)
def test_verb_help(args, expected, capsys):
    assert main(args) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, text
    assert "commands:" not in out  # not the general usage
