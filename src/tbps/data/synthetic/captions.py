"""``make_captions`` (attributes -> language-neutral plan -> EN/VI phrasebooks) and ``tokenize``."""

from __future__ import annotations

import re

import numpy as np

from tbps.data.synthetic.attributes import Person, Shot
from tbps.data.synthetic.caption_plan import _plan_caption, _Sentence
from tbps.data.synthetic.captions_en import _English
from tbps.data.synthetic.captions_vi import _Vietnamese
from tbps.data.synthetic.common import _SALT_CAPTION, _SALT_EN, _SALT_VI

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens (the ``processed_tokens`` of CUHK-PEDES)."""
    return _TOKEN_RE.findall(caption.lower())


def make_captions(
    person: Person, shot: Shot, n: int, seed: int, index: int, vietnamese: bool = False
) -> tuple[list[str], list[str]]:
    """``n`` distinct English captions (and parallel Vietnamese ones if asked) for one image."""
    planned = planned_captions(person, shot, n, seed, index, vietnamese)
    return [en for _, en, _ in planned], [vi for _, _, vi in planned]


def planned_captions(
    person: Person, shot: Shot, n: int, seed: int, index: int, vietnamese: bool = False
) -> list[tuple[list[_Sentence], str, str]]:
    """``n`` distinct ``(plan, English, Vietnamese or "")`` captions of one image: the plan
    says which attributes the caption mentions (see :mod:`.oracle`)."""
    key = (seed, person.pid, index)
    plan_rng = np.random.default_rng([key[0], _SALT_CAPTION, key[1], key[2]])
    en_rng = np.random.default_rng([key[0], _SALT_EN, key[1], key[2]])
    vi_rng = np.random.default_rng([key[0], _SALT_VI, key[1], key[2]])
    out: list[tuple[list[_Sentence], str, str]] = []
    for _ in range(60 * n):
        plan = _plan_caption(person, shot, plan_rng)
        e = _English(person, shot, en_rng).render(plan)
        v = _Vietnamese(person, shot, vi_rng).render(plan) if vietnamese else ""
        if any(e == x or (vietnamese and v == y) for _, x, y in out):
            continue
        out.append((plan, e, v))
        if len(out) == n:
            break
    while len(out) < n:  # practically unreachable: the phrasebooks give far more variants
        out.append(out[len(out) % max(1, len(out))])
    return out
