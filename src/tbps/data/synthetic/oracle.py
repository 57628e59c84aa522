"""The ceiling of the synthetic captions: R1 of an oracle that ranks by what a caption says.

A caption mentions some identity attributes (its plan: gender unless neutral, the garments,
accessories, hair, build it names). The oracle scores a gallery image by how many of those
attributes its person has; the true person has them all, so its top-scored set is every image
whose person agrees on all of them, and with ties broken at random its expected R1 is the
true person's share of that set. No model can beat it on average: what the caption does not
say cannot tell two persons apart. The oracle is generous (it knows each identity's full
attributes, even those an image hides), so it is an upper bound, not an estimate.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from tbps.data.synthetic.attributes import Person
from tbps.data.synthetic.caption_plan import _Sentence

#: the identity attributes each plan item can put into words
ITEM_ATTRIBUTES = {
    "upper": ("upper", "upper_colour", "sleeve", "pattern", "pattern_colour", "skirt_length"),
    "lower": ("lower", "lower_colour", "skirt_length"),
    "shoes": ("shoes", "shoes_colour"),
    "hat": ("hat", "hat_colour"),
    "glasses": ("glasses",),
    "bag": ("bag", "bag_colour"),
    "accessory": ("accessory", "accessory_colour"),
    "hair": ("hair_style", "hair_colour"),
}


def caption_facts(person: Person, plan: Sequence[_Sentence]) -> dict[str, str]:
    """The attributes (name -> value of ``person``) a caption with ``plan`` may express."""
    intro = plan[0].opts
    items = [item for sentence in plan for item in sentence.items]
    items += list(intro.get("carry", []))
    if intro.get("hair"):
        items.append("hair")
    names = {"gender"} if not intro.get("neutral") else set()
    if intro.get("build"):
        names.add("build")
    if person.hair_colour == "gray":  # "older man/woman" says it even without a hair sentence
        names.add("hair_colour")
    for item in items:
        names.update(ITEM_ATTRIBUTES[item])
    return {name: getattr(person, name) for name in sorted(names)}


def oracle_r1(
    queries: Iterable[tuple[int, dict[str, str]]],
    gallery_pids: Sequence[int],
    persons: dict[int, Person],
) -> float:
    """Expected text-to-image R1 (percent) of the oracle on one split: ``queries`` are
    ``(pid, caption facts)``, ``gallery_pids`` the person of each gallery image."""
    images = Counter(gallery_pids)
    by_value: dict[tuple[str, str], set[int]] = defaultdict(set)
    for pid in images:
        for name, value in _attributes(persons[pid]).items():
            by_value[(name, value)].add(pid)
    total, count = 0.0, 0
    for pid, facts in queries:
        candidates = set(images)
        for fact in facts.items():
            candidates &= by_value.get(fact, set())
        top = sum(images[c] for c in candidates)
        total += images[pid] / top
        count += 1
    return 100.0 * total / max(count, 1)


def _attributes(person: Person) -> dict[str, str]:
    names = {"gender", "build"} | {n for names in ITEM_ATTRIBUTES.values() for n in names}
    return {name: getattr(person, name) for name in names}
