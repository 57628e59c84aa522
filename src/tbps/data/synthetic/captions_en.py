"""English phrasebook: renders a caption plan as an English caption."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from tbps.data.synthetic.attributes import COLOURS, HAIR_COLOURS, Person, Shot
from tbps.data.synthetic.caption_plan import _cap, _Sentence
from tbps.data.synthetic.common import _choice


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


_AN_RE = re.compile(r"\b([Aa]) (?=[aeiou])")
_EN_LEMMAS = {
    "carry": ("carries", "carrying"),
    "hold": ("holds", "holding"),
    "wear": ("wears", "wearing"),
    "have": ("has", None),
    "talk_on": ("talks on", "talking on"),
    "look_at": ("looks at", "looking at"),
}

_EN_UPPER = {
    "t-shirt": ("t-shirt", "t-shirt", "tee", "short-sleeved t-shirt", "tee shirt"),
    "shirt/long": ("shirt", "shirt", "long-sleeved shirt", "button-up shirt", "button-down shirt"),
    "shirt/short": ("shirt", "shirt", "short-sleeved shirt", "short-sleeved button-up shirt"),
    "jacket": ("jacket", "jacket", "zip-up jacket", "light jacket"),
    "coat": ("coat", "long coat", "overcoat", "trench coat"),
    "sweater": ("sweater", "sweater", "jumper", "pullover", "knit sweater"),
    "hoodie": ("hoodie", "hoodie", "hooded sweatshirt", "hooded top"),
    "tank top": ("tank top", "tank top", "sleeveless top", "vest top"),
    "dress/none": ("dress", "dress", "sleeveless dress"),
    "dress/short": ("dress", "dress", "short-sleeved dress"),
}
_EN_LOWER = {
    "trousers": (
        "{c} pants",
        "{c} pants",
        "{c} trousers",
        "{c} slacks",
        "{c} long pants",
        "a pair of {c} trousers",
    ),
    "jeans": (
        "{c} jeans",
        "{c} jeans",
        "{c} denim jeans",
        "{c} denim pants",
        "a pair of {c} jeans",
    ),
    "shorts": (
        "{c} shorts",
        "{c} shorts",
        "a pair of {c} shorts",
        "{c} short pants",
        "knee-length {c} shorts",
    ),
    "skirt/short": ("a {c} skirt", "a short {c} skirt", "a {c} mini skirt"),
    "skirt/knee": (
        "a {c} skirt",
        "a {c} knee-length skirt",
        "a {c} midi skirt",
        "a long {c} skirt",
    ),
}
_EN_SHOES = {
    "sneakers": ("sneakers", "sneakers", "trainers", "tennis shoes", "running shoes"),
    "shoes": ("shoes", "shoes", "flat shoes", "loafers"),
    "boots": ("boots", "boots", "ankle boots"),
}
_EN_HATS = {
    "cap": ("cap", "baseball cap", "cap"),
    "hat": ("hat", "wide-brimmed hat", "sun hat"),
    "beanie": ("beanie", "knit hat", "wool hat"),
}
_EN_OCCLUDERS = {
    "car": ("a car", "a parked car"),
    "pole": ("a pole", "a lamp post"),
    "sign": ("a sign", "a street sign"),
    "bicycle": ("a bicycle", "a bike"),
    "railing": ("a railing", "a fence"),
    "person": ("another person", "a passerby"),
}


class _English:
    """English phrasebook: renders a caption plan for one person/shot."""

    def __init__(self, p: Person, shot: Shot, rng: np.random.Generator):
        self.p, self.s, self.r = p, shot, rng

    def ch(self, options: tuple | list, p: tuple | None = None) -> Any:
        return _choice(self.r, options, p)

    def col(self, name: str) -> str:
        return self.ch(COLOURS[name][1])

    def join(self, phrases: list[str]) -> str:
        if len(phrases) == 1:
            return phrases[0]
        if len(phrases) == 2:
            return f"{phrases[0]} and {phrases[1]}"
        sep = ", and " if self.r.random() < 0.3 else " and "
        return ", ".join(phrases[:-1]) + sep + phrases[-1]

    # -- noun phrases ------------------------------------------------------------------------
    def upper(self) -> str:
        p = self.p
        key = p.upper
        if p.upper in ("shirt", "dress"):
            key = f"{p.upper}/{p.sleeve}"
        noun = self.ch(_EN_UPPER[key])
        if p.upper == "dress" and self.r.random() < 0.35:
            noun = ("short " if p.skirt_length == "short" else "knee-length ") + "dress"
        if p.upper in ("t-shirt", "sweater", "tank top") and self.r.random() < 0.08:
            noun = "top"
        c = self.col(p.upper_colour)
        pattern = p.pattern
        if pattern == "logo" and not self.s.visible(p)["logo"]:
            pattern = "plain"
        if pattern == "plain":
            np_ = f"plain {c} {noun}" if self.r.random() < 0.08 else f"{c} {noun}"
        else:
            c2 = self.col(p.pattern_colour)
            forms = {
                "striped": (
                    "{c} striped {n}",
                    "{c} and {c2} striped {n}",
                    "{c} {n} with {c2} stripes",
                    "striped {c} {n}",
                ),
                "checked": (
                    "{c} plaid {n}",
                    "{c} checked {n}",
                    "{c} and {c2} checkered {n}",
                    "{c} {n} with a {c2} checked pattern",
                    "{c} and {c2} plaid {n}",
                ),
                "logo": (
                    "{c} {n} with a {c2} logo",
                    "{c} {n} with a logo on the front",
                    "{c} {n} with a {c2} print on the chest",
                    "{c} {n} with a small {c2} graphic",
                ),
            }[pattern]
            np_ = self.ch(forms).format(c=c, c2=c2, n=noun)
        return _a(np_)

    def lower(self) -> str:
        p = self.p
        key = p.lower if p.lower != "skirt" else f"skirt/{p.skirt_length}"
        form = self.ch(_EN_LOWER[key])
        text = form.format(c=self.col(p.lower_colour))
        if text.startswith("a ") and form.startswith("a {c}"):
            text = _a(text[2:])
        return text

    def shoes(self) -> str:
        np_ = f"{self.col(self.p.shoes_colour)} {self.ch(_EN_SHOES[self.p.shoes])}"
        return f"a pair of {np_}" if self.r.random() < 0.15 else np_

    def hat(self) -> str:
        return _a(f"{self.col(self.p.hat_colour)} {self.ch(_EN_HATS[self.p.hat])}")

    def glasses(self) -> str:
        if self.p.glasses == "sunglasses":
            return self.ch(("sunglasses", "sunglasses", "dark sunglasses", "a pair of sunglasses"))
        return self.ch(("glasses", "glasses", "eyeglasses", "a pair of glasses", "spectacles"))

    def hair(self) -> str:
        p = self.p
        if p.hair_style == "bald":
            return self.ch(("a shaved head", "a bald head"))
        c = self.ch(HAIR_COLOURS[p.hair_colour][1])
        forms = {
            "short": ("short {c} hair", "short {c} hair", "{c} short hair", "cropped {c} hair"),
            "long": (
                "long {c} hair",
                "long {c} hair",
                "shoulder-length {c} hair",
                "long, {c} hair",
            ),
            "ponytail": ("{c} hair in a ponytail", "a {c} ponytail", "{c} hair tied in a ponytail"),
        }[p.hair_style]
        text = self.ch(forms).format(c=c)
        return _a(text[2:]) if text.startswith("a ") else text

    def wearable(self, item: str) -> str:
        return getattr(self, item)()

    def carried(self, item: str) -> tuple[str, str]:
        """(lemma, noun phrase) of a carried item."""
        p, poss = self.p, self.poss
        if item == "bag":
            c = self.col(p.bag_colour)
            if p.bag == "backpack":
                np_ = self.ch(
                    (f"{c} backpack", f"{c} backpack", f"{c} rucksack", f"{c} bag on {poss} back")
                )
                return self.ch(("carry", "wear", "have")), _a(np_)
            if p.bag == "handbag":
                forms = [
                    f"{c} handbag",
                    f"{c} handbag",
                    f"{c} hand bag",
                    f"small {c} bag in {poss} hand",
                ]
                if p.gender == "female":
                    forms.append(f"{c} purse")
                return self.ch(("carry", "hold")), _a(self.ch(forms))
            np_ = self.ch(
                (
                    f"{c} shoulder bag",
                    f"{c} bag over {poss} shoulder",
                    f"{c} messenger bag",
                    f"{c} crossbody bag",
                )
            )
            return self.ch(("carry", "have", "wear")), _a(np_)
        if p.accessory == "umbrella":
            c = self.col(p.accessory_colour)
            return self.ch(("hold", "carry")), _a(self.ch((f"{c} umbrella", f"open {c} umbrella")))
        phone = self.ch(("a phone", "a cell phone", "a smartphone", "a mobile phone"))
        if self.s.phone_pose == "ear":
            return self.ch(
                (("talk_on", "the phone"), ("talk_on", phone), ("hold", f"{phone} to {poss} ear"))
            )
        return self.ch((("look_at", phone), ("look_at", f"{poss} phone"), ("hold", phone)))

    def vp(self, items: list[tuple[str, str]], tense: str) -> str:
        parts = []
        for lemma, np_ in items:
            if tense != "pres" and _EN_LEMMAS[lemma][1] is None:
                lemma = "carry"
            pres, ing = _EN_LEMMAS[lemma]
            parts.append(f"{pres if tense == 'pres' else ing} {np_}")
        text = " and ".join(parts)
        return f"is {text}" if tense == "prog" else text

    # -- subject -----------------------------------------------------------------------------
    def setup_subject(self, neutral: bool) -> None:
        p = self.p
        self.neutral = neutral
        if self.neutral:
            self.noun = self.ch(("person", "person", "pedestrian"))
        elif p.hair_colour == "gray":
            older = ("man", "man", "older man", "male pedestrian")
            self.noun = self.ch(
                older if p.gender == "male" else ("woman", "woman", "older woman", "lady")
            )
        elif p.gender == "male":
            self.noun = self.ch(("man", "man", "man", "young man", "guy", "male pedestrian"))
        else:
            self.noun = self.ch(
                ("woman", "woman", "woman", "young woman", "lady", "girl", "female pedestrian")
            )
        if self.neutral:
            self.pron, self.poss = "the person", "their"
        elif p.gender == "male":
            self.pron, self.poss = "he", "his"
        else:
            self.pron, self.poss = "she", "her"

    def subj(self) -> str:
        """Pronoun for follow-up sentences (sometimes the noun again)."""
        if not self.neutral and self.r.random() < 0.15:
            return f"the {self.noun}"
        return self.pron

    def view_phrase(self) -> str:
        v = self.s.view
        options = {
            "front": (
                "walking towards the camera",
                "facing the camera",
                "walking toward the camera",
            ),
            "back": (
                "seen from behind",
                "walking away from the camera",
                f"with {self.poss} back to the camera",
            ),
            "side": ("seen from the side", "shown in profile", "walking past the camera"),
        }[v]
        return self.ch(options)

    def intro(self, sent: _Sentence) -> str:
        p, o = self.p, sent.opts
        adj = ""
        if o["build"]:
            adj = self.ch(
                {"slim": ("slim", "thin", "slender"), "heavy": ("heavyset", "stocky", "large")}[
                    p.build
                ]
            )
            adj += " "
        art = self.ch(("a", "the", "this"), (0.6, 0.27, 0.13))
        np_ = _a(adj + self.noun) if art == "a" else f"{art} {adj}{self.noun}"
        mods = ""
        if o["hair"]:
            mods += f" with {self.hair()}"
        if o["view"]:
            mods += f" {self.view_phrase()}"
        wear = [self.wearable(i) for i in sent.items]
        if len(wear) == 2 and self.r.random() < 0.15:
            listed = f"{wear[0]} with {wear[1]}"
        else:
            listed = self.join(wear)
        if sent.kind == "intro_wear":
            verbs = ["is wearing", "is wearing", "wears", "has on"]
            if "glasses" not in sent.items:
                verbs += ["is dressed in", "is in"]
            return _cap(f"{np_}{mods} {self.ch(verbs)} {listed}.")
        if sent.kind == "intro_in":
            act = self.ch(
                (
                    "is walking",
                    "is walking down the street",
                    "walks along the sidewalk",
                    "is walking outside",
                    "is walking",
                )
            )
            return _cap(f"{np_}{mods} in {listed} {act}.")
        prefix = ""
        if art == "a" and self.r.random() < 0.15:
            prefix = self.ch(("the image shows ", "this is ", "pictured is ", "the photo shows "))
        ptc = self.ch(("wearing", "wearing", "in", "dressed in"))
        if ptc in ("in", "dressed in") and "glasses" in sent.items:
            ptc = "wearing"
        text = f"{prefix}{np_}{mods} {ptc} {listed}"
        if o["carry"]:
            text += ", " + self.vp([self.carried(i) for i in o["carry"]], "ing")
        return _cap(text + ".")

    def render(self, plan: list[_Sentence]) -> str:
        self.setup_subject(plan[0].opts["neutral"])
        out = []
        for sent in plan:
            if sent.kind.startswith("intro"):
                out.append(self.intro(sent))
            elif sent.kind == "wear":
                verb = self.ch(
                    ("is also wearing", "also wears", "also has on", "is wearing", "wears")
                )
                out.append(
                    _cap(
                        f"{self.subj()} {verb} {self.join([self.wearable(i) for i in sent.items])}."
                    )
                )
            elif sent.kind == "carry":
                tense = self.ch(("prog", "pres"))
                out.append(
                    _cap(f"{self.subj()} {self.vp([self.carried(i) for i in sent.items], tense)}.")
                )
            elif sent.kind == "hair":
                out.append(self.hair_sentence(sent))
            elif sent.kind == "view":
                out.append(self.view_sentence())
            else:
                o = self.ch(_EN_OCCLUDERS[self.s.occluder])
                form = self.ch(
                    (
                        "Part of {poss} body is hidden behind {o}.",
                        "{O} blocks part of the view.",
                        "{s} is partly blocked by {o}.",
                        "{s} is partially occluded by {o}.",
                    )
                )
                out.append(_cap(form.format(poss=self.poss, o=o, O=_cap(o), s=self.subj())))
        return _AN_RE.sub(r"\1n ", " ".join(out))

    def hair_sentence(self, sent: _Sentence) -> str:
        p = self.p
        s = self.subj()
        glasses = "glasses" in sent.items
        if p.hair_style == "bald":
            text = self.ch((f"{s} is bald", f"{s} has a shaved head"))
        elif not glasses and p.hair_style != "ponytail" and self.r.random() < 0.3:
            c = self.ch(HAIR_COLOURS[p.hair_colour][1])
            length = "short" if p.hair_style == "short" else "long"
            return _cap(f"{self.poss} hair is {length} and {c}.")
        else:
            text = f"{s} has {self.hair()}"
        if glasses:
            text += f" and {self.ch(('wears', 'is wearing'))} {self.glasses()}"
        return _cap(text + ".")

    def view_sentence(self) -> str:
        s = self.subj()
        options = {
            "front": (
                f"{s} is walking towards the camera.",
                f"{s} is facing the camera.",
                "The photo is taken from the front.",
            ),
            "back": (
                "The photo is taken from behind.",
                f"{s} is walking away from the camera.",
                f"{self.poss} back is to the camera.",
                "This is a view from the back.",
            ),
            "side": (
                f"{s} is seen from the side.",
                "The photo is taken from the side.",
                f"{s} is walking past the camera.",
            ),
        }[self.s.view]
        return _cap(self.ch(options))
