"""Attribute vocabulary, identity (``Person``) sampling and per-image ``Shot`` sampling."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tbps.data.synthetic.common import _SALT_IDENTITY, _SALT_IMAGE, RGB, _choice
from tbps.data.synthetic.config import SynthConfig

# ---------------------------------------------------------------------------------------------
# Vocabulary: colours and attribute values with English / Vietnamese names
# ---------------------------------------------------------------------------------------------

# Eleven perceptually distinct garment colours: (sRGB anchor, English names, Vietnamese names).
COLOURS: dict[str, tuple[RGB, tuple[str, ...], tuple[str, ...]]] = {
    "black": ((30, 30, 33), ("black",), ("đen",)),
    "white": ((236, 236, 232), ("white",), ("trắng",)),
    "gray": ((128, 129, 132), ("gray", "gray", "grey"), ("xám", "xám", "ghi")),
    "red": ((200, 32, 38), ("red",), ("đỏ",)),
    "blue": ((38, 78, 196), ("blue",), ("xanh dương", "xanh lam")),
    "green": ((36, 140, 64), ("green",), ("xanh lá", "xanh lá cây")),
    "yellow": ((238, 204, 40), ("yellow",), ("vàng",)),
    "pink": ((242, 150, 192), ("pink",), ("hồng",)),
    "purple": ((118, 52, 152), ("purple",), ("tím",)),
    "orange": ((240, 122, 30), ("orange",), ("cam",)),
    "brown": ((112, 70, 40), ("brown",), ("nâu",)),
}
COLOUR_NAMES = tuple(COLOURS)

HAIR_COLOURS: dict[str, tuple[RGB, tuple[str, ...], tuple[str, ...]]] = {
    "black": ((24, 21, 20), ("black", "dark"), ("đen",)),
    "brown": ((92, 58, 34), ("brown",), ("nâu",)),
    "blonde": ((214, 178, 112), ("blonde", "blond"), ("vàng",)),
    "gray": ((168, 168, 164), ("gray", "grey", "silver"), ("bạc", "hoa râm")),
}

SKIN_TONES: tuple[RGB, ...] = (
    (242, 208, 184),
    (226, 182, 148),
    (200, 148, 108),
    (156, 106, 74),
    (104, 68, 48),
)

UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie", "tank top", "dress")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
SHOE_TYPES = ("sneakers", "shoes", "boots")
BAG_TYPES = ("none", "backpack", "handbag", "shoulder bag")
HAT_TYPES = ("none", "cap", "hat", "beanie")
OCCLUDERS = ("car", "pole", "sign", "bicycle", "railing", "person")

_UPPER_P = {
    "male": (0.25, 0.20, 0.16, 0.07, 0.12, 0.14, 0.06, 0.0),
    "female": (0.18, 0.12, 0.14, 0.09, 0.10, 0.08, 0.08, 0.21),
}
_LOWER_P = {"male": (0.40, 0.36, 0.24, 0.0), "female": (0.25, 0.30, 0.19, 0.26)}


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """Attributes of one synthetic identity (colour fields hold names from ``COLOURS``)."""

    pid: int
    gender: str
    build: str
    height: float
    width: float
    skin: RGB
    hair_style: str
    hair_colour: str
    upper: str
    upper_colour: str
    sleeve: str
    pattern: str
    pattern_colour: str
    lower: str
    lower_colour: str
    skirt_length: str
    shoes: str
    shoes_colour: str
    bag: str
    bag_colour: str
    hat: str
    hat_colour: str
    glasses: str
    accessory: str
    accessory_colour: str
    rgb: dict[str, RGB] = field(compare=False, repr=False)

    def key(self) -> tuple:
        """The describable attributes; two identities never share the same key."""
        d = dataclasses.asdict(self)
        for k in ("pid", "height", "width", "skin", "rgb"):
            d.pop(k)
        return tuple(d.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible attribute dict (without the drawing colours)."""
        d = dataclasses.asdict(self)
        d.pop("rgb")
        d["skin"] = list(self.skin)
        return d


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float = 1.0) -> RGB:
    scale = 1.0 + amount * rng.uniform(-0.09, 0.08)
    return tuple(int(np.clip(c * scale + amount * rng.normal(0, 5), 0, 248)) for c in rgb)  # type: ignore[return-value]


def _distinct_colour(rng: np.random.Generator, base: str) -> str:
    """A second colour (stripes, logos) that contrasts with ``base``."""
    if rng.random() < 0.5:
        return "white" if base != "white" and (base == "black" or rng.random() < 0.6) else "black"
    b = np.asarray(COLOURS[base][0], dtype=float)
    options = [c for c in COLOUR_NAMES if np.abs(np.asarray(COLOURS[c][0]) - b).sum() > 200]
    return _choice(rng, options)


def _sample_person(pid: int, rng: np.random.Generator) -> Person:
    gender = "male" if rng.random() < 0.5 else "female"
    build = _choice(rng, ("slim", "average", "heavy"), (0.18, 0.64, 0.18))
    width = {"slim": 0.88, "average": 1.0, "heavy": 1.16}[build] * rng.uniform(0.97, 1.03)
    height = float(np.clip(rng.normal(1.0 if gender == "male" else 0.96, 0.03), 0.88, 1.06))
    skin = _choice(rng, SKIN_TONES)
    if gender == "male":
        hair_style = _choice(rng, ("short", "long", "ponytail", "bald"), (0.82, 0.07, 0.03, 0.08))
    else:
        hair_style = _choice(rng, ("short", "long", "ponytail", "bald"), (0.2, 0.52, 0.28, 0.0))
    hair_colour = _choice(rng, tuple(HAIR_COLOURS), (0.5, 0.28, 0.12, 0.10))

    upper = _choice(rng, UPPER_TYPES, _UPPER_P[gender])
    upper_colour = _choice(rng, COLOUR_NAMES)
    sleeve = {
        "t-shirt": "short",
        "tank top": "none",
        "shirt": _choice(rng, ("long", "short"), (0.6, 0.4)),
        "dress": _choice(rng, ("none", "short"), (0.5, 0.5)),
    }.get(upper, "long")
    pattern_p = {
        "t-shirt": (0.55, 0.15, 0.0, 0.30),
        "shirt": (0.5, 0.22, 0.28, 0.0),
        "jacket": (0.8, 0.08, 0.0, 0.12),
        "coat": (0.85, 0.0, 0.15, 0.0),
        "sweater": (0.6, 0.25, 0.0, 0.15),
        "hoodie": (0.7, 0.1, 0.0, 0.2),
        "tank top": (0.7, 0.2, 0.0, 0.1),
        "dress": (0.75, 0.15, 0.1, 0.0),
    }[upper]
    pattern = _choice(rng, ("plain", "striped", "checked", "logo"), pattern_p)
    pattern_colour = _distinct_colour(rng, upper_colour) if pattern != "plain" else "none"

    if upper == "dress":
        lower, lower_colour = "none", "none"
    else:
        lower = _choice(rng, LOWER_TYPES, _LOWER_P[gender])
        if lower == "jeans":
            lower_colour = _choice(rng, ("blue", "black", "gray", "white"), (0.6, 0.22, 0.12, 0.06))
        else:
            weights = [
                2.0 if c in ("black", "gray", "blue", "brown") else 1.0 for c in COLOUR_NAMES
            ]
            lower_colour = _choice(rng, COLOUR_NAMES, weights)
    skirt_length = (
        _choice(rng, ("short", "knee")) if upper == "dress" or lower == "skirt" else "none"
    )

    shoes = _choice(rng, SHOE_TYPES, (0.45, 0.4, 0.15))
    shoe_w = [
        {"black": 6.0, "white": 4.5, "brown": 2.5, "gray": 2.0}.get(c, 0.7) for c in COLOUR_NAMES
    ]
    shoes_colour = _choice(rng, COLOUR_NAMES, shoe_w)
    bag = _choice(
        rng, BAG_TYPES, (0.38, 0.27, 0.05, 0.30) if gender == "male" else (0.3, 0.22, 0.26, 0.22)
    )
    bag_colour = _choice(rng, COLOUR_NAMES) if bag != "none" else "none"
    hat = _choice(rng, HAT_TYPES, (0.76, 0.13, 0.05, 0.06))
    hat_colour = _choice(rng, COLOUR_NAMES) if hat != "none" else "none"
    glasses = _choice(rng, ("none", "glasses", "sunglasses"), (0.78, 0.13, 0.09))
    accessory = _choice(rng, ("none", "umbrella", "phone"), (0.84, 0.06, 0.10))
    accessory_colour = _choice(rng, COLOUR_NAMES) if accessory == "umbrella" else "none"

    rgb: dict[str, RGB] = {"skin": _jitter(skin, rng, 0.5)}
    rgb["hair"] = _jitter(HAIR_COLOURS[hair_colour][0], rng, 0.7)
    for part, colour in (
        ("upper", upper_colour),
        ("pattern", pattern_colour),
        ("lower", lower_colour),
        ("shoes", shoes_colour),
        ("bag", bag_colour),
        ("hat", hat_colour),
        ("accessory", accessory_colour),
    ):
        if colour != "none":
            base = COLOURS[colour][0]
            if part == "lower" and lower == "jeans" and colour == "blue":
                base = (52, 84, 150)  # denim
            rgb[part] = _jitter(base, rng)
    return Person(
        pid=pid,
        gender=gender,
        build=build,
        height=height,
        width=width,
        skin=skin,
        hair_style=hair_style,
        hair_colour=hair_colour,
        upper=upper,
        upper_colour=upper_colour,
        sleeve=sleeve,
        pattern=pattern,
        pattern_colour=pattern_colour,
        lower=lower,
        lower_colour=lower_colour,
        skirt_length=skirt_length,
        shoes=shoes,
        shoes_colour=shoes_colour,
        bag=bag,
        bag_colour=bag_colour,
        hat=hat,
        hat_colour=hat_colour,
        glasses=glasses,
        accessory=accessory,
        accessory_colour=accessory_colour,
        rgb=rgb,
    )


def sample_identities(config: SynthConfig) -> list[Person]:
    """Sample ``config.num_identities`` distinct persons (pid 1..N), deterministic in the seed."""
    persons: list[Person] = []
    seen: set[tuple] = set()
    for pid in range(1, config.num_identities + 1):
        for attempt in range(1000):
            rng = np.random.default_rng([config.seed, _SALT_IDENTITY, pid, attempt])
            person = _sample_person(pid, rng)
            if person.key() not in seen:
                break
        seen.add(person.key())
        persons.append(person)
    return persons


# ---------------------------------------------------------------------------------------------
# Per-image shot parameters (shared by the renderer and the captioner)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """Image-specific parameters that also decide what a caption may mention."""

    view: str  # front | back | side
    facing: int  # +1 right, -1 left (side view)
    phase: float  # walking phase in [-1, 1]
    crop: str  # full | knees | head
    occluder: str  # "none" or one of OCCLUDERS
    phone_pose: str  # ear | look (only used when the person has a phone)

    def visible(self, person: Person) -> dict[str, bool]:
        """Which attributes are visible in this shot."""
        feet_hidden = self.crop == "knees" or self.occluder in ("car", "railing", "bicycle")
        return {
            "shoes": not feet_hidden,
            "hat": self.crop != "head",
            "glasses": self.view != "back",
            "logo": self.view != "back",
            "accessory": not (
                (person.accessory == "phone" and self.phone_pose == "look" and self.view == "back")
                or (person.accessory == "umbrella" and self.crop == "head")
            ),
        }


def image_rng(seed: int, pid: int, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of person ``pid`` (independent of other images)."""
    return np.random.default_rng([seed, _SALT_IMAGE, pid, index])


def sample_shot(rng: np.random.Generator) -> Shot:
    """Sample viewpoint, pose, crop and occluder of one image (first draws of ``image_rng``)."""
    view = _choice(rng, ("front", "back", "side"), (0.4, 0.3, 0.3))
    return Shot(
        view=view,
        facing=1 if rng.random() < 0.5 else -1,
        phase=float(rng.uniform(-1, 1)),
        crop=_choice(rng, ("full", "knees", "head"), (0.82, 0.09, 0.09)),
        occluder=_choice(rng, OCCLUDERS) if rng.random() < 0.14 else "none",
        phone_pose=_choice(rng, ("ear", "look")),
    )
