"""EDA caption augmentation: deletion, swap, insertion, synonyms from the domain lexicon."""

from collections import Counter

import pytest

from tbps.data.text_augment import DOMAIN_SYNONYMS, TextAugmenter, TextAugmentOptions
from tbps.errors import ConfigError

CAPTION = "A man wearing a grey t-shirt, dark blue jeans and white sneakers carries a backpack."


def _aug(seed=0, **options) -> TextAugmenter:
    base = {"deletion": 0.0}
    return TextAugmenter(TextAugmentOptions(**{**base, **options}), seed=seed)


def test_deletion_rate_and_never_empty():
    aug = _aug(deletion=0.3)
    words = " ".join(f"w{i}" for i in range(200))
    kept = [len(aug(words).split()) for _ in range(50)]
    assert 0.62 < sum(kept) / (50 * 200) < 0.78
    harsh = _aug(deletion=0.99)
    for _ in range(200):
        out = harsh("red coat")
        assert out in ("red", "coat", "red coat")
    assert harsh("single") == "single"


def test_swap_permutes_words():
    aug = _aug(swap=0.2)
    out = aug(CAPTION)
    assert out != CAPTION and Counter(out.split()) == Counter(CAPTION.split())


def test_synonym_replacement_uses_the_lexicon_and_keeps_case_and_punctuation():
    lexicon = {p for group in DOMAIN_SYNONYMS for p in group}
    aug = _aug(synonym=0.99)  # replace every lexicon phrase
    for seed in range(20):
        aug.reseed(seed)
        out = aug(CAPTION)
        assert out.endswith(".") and out[0].isupper()
        assert "grey" not in out.split() and "backpack." not in out
        assert "jeans" not in out.split() and "dark blue" not in out
        assert any(out.endswith(f"{p}.") for p in ("rucksack", "knapsack"))
    one = _aug(synonym=0.01)(CAPTION)  # at least one replacement
    changed = [w for w in one.split() if w not in CAPTION.split()]
    assert changed and all(any(w.strip(",.") in p.split() for p in lexicon) for w in changed)


def test_insertion_adds_synonyms_and_skips_text_without_lexicon_words():
    aug = _aug(insertion=0.1)
    out = aug(CAPTION).split()
    assert len(out) > len(CAPTION.split())
    vietnamese = "Người phụ nữ mặc áo đỏ và quần xanh"
    assert aug(vietnamese) == vietnamese


def test_vietnamese_deletion_and_swap_work_on_words():
    caption = "Người phụ nữ mặc áo đỏ và quần xanh"
    out = _aug(swap=0.2, deletion=0.1)(caption)
    assert out and set(out.split()) <= set(caption.split())


def test_reproducible_with_seed_and_reseed():
    options = {"deletion": 0.1, "swap": 0.1, "insertion": 0.1, "synonym": 0.2}
    a, b = _aug(seed=5, **options), _aug(seed=5, **options)
    first = [a(CAPTION) for _ in range(10)]
    assert first == [b(CAPTION) for _ in range(10)]
    a.reseed(5)
    assert [a(CAPTION) for _ in range(10)] == first
    assert len(set(first)) > 1


def test_options_are_validated():
    with pytest.raises(ConfigError, match=r"augment.text.deletion must be in \[0, 1\)"):
        TextAugmentOptions(deletion=1.0)
