"""Caption augmentation (EDA): synonym replacement, random insertion, swap and deletion."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tbps.errors import ConfigError

#: Built-in domain lexicon: groups of interchangeable colour, garment and person phrases.
DOMAIN_SYNONYMS: tuple[tuple[str, ...], ...] = (
    # colours
    ("grey", "gray"),
    ("navy", "navy blue", "dark blue"),
    ("purple", "violet"),
    ("maroon", "burgundy", "dark red"),
    ("beige", "tan", "light brown"),
    ("light blue", "sky blue", "pale blue"),
    ("dark green", "olive green"),
    ("multicolored", "multicoloured", "colorful", "colourful"),
    ("striped", "stripy"),
    ("plaid", "checkered", "checked"),
    # garments and accessories
    ("t-shirt", "tee shirt", "tee", "t shirt"),
    ("shirt", "top"),
    ("pants", "trousers", "slacks"),
    ("jeans", "denim pants", "denim trousers"),
    ("shorts", "short pants"),
    ("sneakers", "trainers", "running shoes", "tennis shoes"),
    ("shoes", "footwear"),
    ("sweater", "jumper", "pullover"),
    ("hoodie", "hooded sweatshirt"),
    ("jacket", "coat"),
    ("backpack", "rucksack", "knapsack"),
    ("handbag", "purse"),
    ("cap", "baseball cap"),
    ("glasses", "spectacles", "eyeglasses"),
    ("sleeveless", "without sleeves"),
    ("long-sleeved", "long sleeved"),
    ("short-sleeved", "short sleeved"),
    # people and verbs
    ("man", "male", "guy", "gentleman"),
    ("woman", "female", "lady"),
    ("person", "pedestrian", "individual"),
    ("wearing", "dressed in", "wears"),
    ("carrying", "holding", "toting"),
    ("walking", "strolling"),
)

_PUNCT = ".,;:!?\"')("


def _lexicon(groups: Iterable[Sequence[str]]) -> dict[tuple[str, ...], tuple[str, ...]]:
    """phrase (lower-case word tuple) -> its alternatives."""
    table: dict[tuple[str, ...], tuple[str, ...]] = {}
    for group in groups:
        for phrase in group:
            key = tuple(phrase.lower().split())
            table[key] = tuple(p for p in group if p != phrase)
    return table


@dataclass(frozen=True)
class TextAugmentOptions:
    """EDA settings: ``deletion`` is a per-word probability; ``swap``, ``insertion`` and
    ``synonym`` are fractions alpha of the words (n = max(1, round(alpha * words)) operations
    when alpha > 0). 0 turns an operation off."""

    deletion: float = 0.05
    swap: float = 0.0
    insertion: float = 0.0
    synonym: float = 0.0

    def __post_init__(self) -> None:
        for name in ("deletion", "swap", "insertion", "synonym"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"augment.text.{name} must be in [0, 1), got {value}")


class TextAugmenter:
    """Applies synonym replacement, insertion, swap, then deletion to a caption.

    Choices are random without replacement (distinct spans / positions) and come from this
    object's own generator: :meth:`reseed` it in each DataLoader worker. Deletion never
    returns an empty caption. Captions are split on whitespace, so any language works;
    synonyms (and insertion, which inserts a synonym) need the English lexicon.
    """

    def __init__(
        self,
        options: TextAugmentOptions,
        seed: int = 0,
        lexicon: Iterable[Sequence[str]] = DOMAIN_SYNONYMS,
    ) -> None:
        self.options = options
        self.lexicon = _lexicon(lexicon)
        self.max_phrase = max((len(k) for k in self.lexicon), default=1)
        self.rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self.rng.seed(seed)

    @staticmethod
    def _count(alpha: float, words: int) -> int:
        return max(1, round(alpha * words)) if alpha > 0 else 0

    def _spans(self, words: list[str]) -> list[tuple[int, int, tuple[str, ...]]]:
        """Non-overlapping lexicon phrases in ``words``: (start, end, key), longest match first."""
        spans, i = [], 0
        norm = [w.lower().strip(_PUNCT) for w in words]
        while i < len(words):
            for n in range(min(self.max_phrase, len(words) - i), 0, -1):
                key = tuple(norm[i : i + n])
                if key in self.lexicon:
                    spans.append((i, i + n, key))
                    i += n
                    break
            else:
                i += 1
        return spans

    def _replacement(self, original: list[str], key: tuple[str, ...]) -> list[str]:
        choice = self.rng.choice(self.lexicon[key]).split()
        if original[0][:1].isupper():
            choice[0] = choice[0][:1].upper() + choice[0][1:]
        trailing = original[-1][len(original[-1].rstrip(_PUNCT)) :]
        choice[-1] += trailing
        return choice

    def synonym_replacement(self, words: list[str], n: int) -> list[str]:
        spans = self._spans(words)
        chosen = sorted(self.rng.sample(spans, min(n, len(spans))), reverse=True)
        for start, end, key in chosen:  # right to left keeps earlier indices valid
            words = words[:start] + self._replacement(words[start:end], key) + words[end:]
        return words

    def random_insertion(self, words: list[str], n: int) -> list[str]:
        for _ in range(n):
            spans = self._spans(words)
            if not spans:
                break
            _, _, key = self.rng.choice(spans)
            position = self.rng.randint(0, len(words))
            words = words[:position] + self.rng.choice(self.lexicon[key]).split() + words[position:]
        return words

    def random_swap(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        for _ in range(n if len(words) > 1 else 0):
            i, j = self.rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return words

    def random_deletion(self, words: list[str], p: float) -> list[str]:
        if p <= 0 or len(words) < 2:
            return words
        kept = [w for w in words if self.rng.random() >= p]
        return kept or [self.rng.choice(words)]

    def __call__(self, caption: str) -> str:
        o = self.options
        words = caption.split()
        if not words:
            return caption
        if o.synonym:
            words = self.synonym_replacement(words, self._count(o.synonym, len(words)))
        if o.insertion:
            words = self.random_insertion(words, self._count(o.insertion, len(words)))
        if o.swap:
            words = self.random_swap(words, self._count(o.swap, len(words)))
        words = self.random_deletion(words, o.deletion)
        return " ".join(words)
