"""Language-neutral caption plans: which attributes a caption mentions, grouped into sentences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tbps.data.synthetic.attributes import Person, Shot
from tbps.data.synthetic.common import _choice


@dataclass
class _Sentence:
    kind: str  # intro_wear | intro_in | intro_frag | wear | carry | hair | view | occl
    items: list[str]
    opts: dict[str, Any] = field(default_factory=dict)


def _plan_caption(p: Person, shot: Shot, rng: np.random.Generator) -> list[_Sentence]:
    """Choose which attributes a caption mentions, grouped into sentences (language-neutral)."""
    vis = shot.visible(p)
    wear = ["upper"]
    if p.lower != "none" and rng.random() < 0.88:
        if rng.random() < 0.18:
            wear.insert(0, "lower")
        else:
            wear.append("lower")
    extra = []
    if vis["shoes"] and rng.random() < 0.5:
        extra.append("shoes")
    if p.hat != "none" and vis["hat"] and rng.random() < 0.7:
        extra.append("hat")
    if p.glasses != "none" and vis["glasses"] and rng.random() < 0.55:
        extra.append("glasses")
    rng.shuffle(extra)
    carry = []
    if p.bag != "none" and rng.random() < 0.8:
        carry.append("bag")
    if p.accessory != "none" and vis["accessory"] and rng.random() < 0.75:
        carry.append("accessory")
    if len(carry) == 2 and rng.random() < 0.5:
        carry.reverse()
    hair = rng.random() < 0.45
    view = rng.random() < 0.2
    occl = shot.occluder != "none" and rng.random() < 0.3
    k = int(rng.integers(0, len(extra) + 1))
    intro_items, rest = wear + extra[:k], extra[k:]
    kind = _choice(rng, ("intro_wear", "intro_in", "intro_frag"), (0.42, 0.23, 0.35))
    opts: dict[str, Any] = {
        "build": p.build != "average" and rng.random() < 0.15,
        "neutral": rng.random() < 0.12,
        "hair": False,
        "view": False,
        "carry": [],
    }
    if hair and rng.random() < 0.5:
        opts["hair"], hair = True, False
    if view and kind != "intro_in" and rng.random() < 0.5:
        opts["view"], view = True, False
    if kind == "intro_frag" and carry and rng.random() < 0.6:
        opts["carry"], carry = carry, []
    sentences = [_Sentence(kind, intro_items, opts)]
    follow = []
    if hair:
        items = ["hair"]
        if "glasses" in rest and rng.random() < 0.5:
            rest.remove("glasses")
            items.append("glasses")
        follow.append(_Sentence("hair", items))
    if rest:
        follow.append(_Sentence("wear", rest))
    if len(carry) == 2 and rng.random() < 0.35:
        follow += [_Sentence("carry", [carry[0]]), _Sentence("carry", [carry[1]])]
    elif carry:
        follow.append(_Sentence("carry", carry))
    rng.shuffle(follow)
    sentences += follow
    if view:
        sentences.append(_Sentence("view", []))
    if occl:
        sentences.append(_Sentence("occl", []))
    return sentences


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
