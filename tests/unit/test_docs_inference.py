"""The Python example of docs/inference.md runs as written on a model folder."""

import re
from pathlib import Path

from PIL import Image
from test_model_folder import CAPTIONS, tiny_model

from tbps.data.tokenization import train_caption_tokenizer

DOC = Path(__file__).parents[2] / "docs" / "inference.md"


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=200, min_frequency=1)
    tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    Image.new("RGB", (40, 90), (200, 20, 20)).save(tmp_path / "a.jpg")
    Image.new("RGB", (50, 100), (20, 20, 200)).save(tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    example = re.search(r"## Python\n\n```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["similarity"].shape == (2, 2)
    assert "tensor" in capsys.readouterr().out


def test_the_gallery_search_example_runs(tmp_path, monkeypatch, capsys):
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=200, min_frequency=1)
    tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    for i, colour in enumerate([(200, 20, 20), (20, 20, 200), (20, 200, 20)]):
        (tmp_path / "crops" / "cam1").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 90), colour).save(tmp_path / "crops" / "cam1" / f"000{i + 1}.jpg")
    monkeypatch.chdir(tmp_path)
    text = DOC.read_text()
    section = text[text.index("## Searching a gallery") :]
    example = re.search(r"### Python\n\n```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "{'images': 3, 'added': 3, 'changed': 0, 'removed': 0, 'skipped': 0}" in out
    assert len(namespace["same_person"]) == 2
    assert namespace["same_person"][0].path == "cam1/0001.jpg"
    assert out.count("cam1/") == 2  # two hits printed
