"""Vietnamese phrasebook: renders a caption plan as a Vietnamese caption (Unicode NFC)."""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np

from tbps.data.synthetic.attributes import COLOURS, HAIR_COLOURS, Person, Shot
from tbps.data.synthetic.caption_plan import _cap, _Sentence
from tbps.data.synthetic.common import _choice

_VI_UPPER = {
    "t-shirt": ("áo thun", "áo thun", "áo phông", "áo thun ngắn tay"),
    "shirt/long": ("áo sơ mi", "áo sơ mi", "áo sơ mi dài tay"),
    "shirt/short": ("áo sơ mi", "áo sơ mi", "áo sơ mi ngắn tay", "áo sơ mi cộc tay"),
    "jacket": ("áo khoác", "áo khoác", "áo khoác kéo khóa"),
    "coat": ("áo măng tô", "áo khoác dài", "áo choàng dài"),
    "sweater": ("áo len", "áo len", "áo len dài tay"),
    "hoodie": ("áo hoodie", "áo hoodie", "áo nỉ có mũ"),
    "tank top": ("áo ba lỗ", "áo sát nách"),
    "dress/none": ("váy liền", "đầm", "váy liền sát nách", "đầm không tay"),
    "dress/short": ("váy liền", "đầm", "váy liền ngắn tay"),
}
_VI_LOWER = {
    "trousers": ("quần dài", "quần dài", "quần tây", "quần âu"),
    "jeans": ("quần jean", "quần jean", "quần bò"),
    "shorts": ("quần short", "quần short", "quần soóc", "quần đùi"),
    "skirt/short": ("chân váy ngắn", "váy ngắn", "chân váy"),
    "skirt/knee": ("chân váy", "chân váy dài đến gối", "váy dài qua gối"),
}
_VI_SHOES = {
    "sneakers": ("giày thể thao", "giày thể thao", "giày sneaker"),
    "shoes": ("giày", "giày", "giày bệt"),
    "boots": ("bốt", "giày bốt", "giày cao cổ"),
}
_VI_HATS = {
    "cap": ("mũ lưỡi trai", "nón lưỡi trai"),
    "hat": ("mũ rộng vành", "nón rộng vành"),
    "beanie": ("mũ len",),
}
_VI_OCCLUDERS = {
    "car": ("một chiếc ô tô", "một chiếc xe hơi"),
    "pole": ("một cái cột", "một cột đèn"),
    "sign": ("một tấm biển", "một biển báo"),
    "bicycle": ("một chiếc xe đạp",),
    "railing": ("hàng rào", "lan can"),
    "person": ("một người khác", "một người qua đường"),
}
_VI_SUBJECTS = {
    "male": (
        ("một người đàn ông", ("anh ấy", "anh ta", "người đàn ông này")),
        ("một chàng trai", ("anh ấy", "chàng trai này")),
        ("một nam thanh niên", ("anh ấy", "người này")),
        ("người đàn ông", ("anh ấy", "anh ta")),
        ("một người đàn ông trẻ", ("anh ấy",)),
    ),
    "female": (
        ("một người phụ nữ", ("cô ấy", "chị ấy", "người phụ nữ này")),
        ("một cô gái", ("cô ấy", "cô gái này")),
        ("một phụ nữ", ("cô ấy", "chị ấy")),
        ("người phụ nữ", ("cô ấy", "chị ấy")),
        ("một cô gái trẻ", ("cô ấy",)),
    ),
    "neutral": (
        ("một người", ("người này",)),
        ("một người đi đường", ("người này", "người đó")),
        ("một người đi bộ", ("người này",)),
    ),
}

_VI_NEEDS_MAU = ("gối", "tay", "nách", "khóa", "mũ", "ngắn", "dài")
_VI_OLDER = {
    "male": (
        ("một người đàn ông", ("anh ấy", "ông ấy", "người đàn ông này")),
        ("một người đàn ông lớn tuổi", ("ông ấy", "người đàn ông này")),
        ("người đàn ông", ("ông ấy", "người đàn ông này")),
    ),
    "female": (
        ("một người phụ nữ", ("cô ấy", "bà ấy", "người phụ nữ này")),
        ("một người phụ nữ lớn tuổi", ("bà ấy", "người phụ nữ này")),
        ("người phụ nữ", ("bà ấy", "người phụ nữ này")),
    ),
}


class _Vietnamese:
    """Vietnamese phrasebook: renders the same caption plan as ``_English``."""

    def __init__(self, p: Person, shot: Shot, rng: np.random.Generator):
        self.p, self.s, self.r = p, shot, rng

    def ch(self, options: tuple | list, p: tuple | None = None) -> Any:
        return _choice(self.r, options, p)

    def col(self, name: str, bare: bool = False, after: str = "") -> str:
        """Colour word, often as "màu X"; always "màu X" after a multi-word modifier."""
        c = self.ch(COLOURS[name][2])
        if after.endswith(_VI_NEEDS_MAU):
            return f"màu {c}"
        return c if bare or self.r.random() < 0.45 else f"màu {c}"

    def cls(self, word: str, p: float = 0.2) -> str:
        return f"{word} " if self.r.random() < p else ""

    @staticmethod
    def join(items: list[tuple[str, str]]) -> str:
        """Join (verb, noun phrase) pairs, sharing a verb between consecutive items."""
        segments, prev = [], None
        for verb, np_ in items:
            segments.append(np_ if verb == prev else f"{verb} {np_}")
            prev = verb
        if len(segments) == 1:
            return segments[0]
        return ", ".join(segments[:-1]) + " và " + segments[-1]

    # -- noun phrases (with their verb) ------------------------------------------------------
    def upper(self) -> tuple[str, str]:
        p = self.p
        key = f"{p.upper}/{p.sleeve}" if p.upper in ("shirt", "dress") else p.upper
        n = self.ch(_VI_UPPER[key])
        if p.upper == "dress" and self.r.random() < 0.3:
            n = self.ch(("váy liền", "đầm")) + (
                " ngắn" if p.skirt_length == "short" else " dài đến gối"
            )
        pattern = p.pattern
        if pattern == "logo" and not self.s.visible(p)["logo"]:
            pattern = "plain"
        c = self.col(p.upper_colour, after=n)
        if pattern == "plain":
            if self.r.random() < 0.08:
                np_ = f"{n} trơn màu {self.col(p.upper_colour, bare=True)}"
            else:
                np_ = f"{n} {c}"
        else:
            c1 = self.ch(COLOURS[p.upper_colour][2])
            c2 = self.ch(COLOURS[p.pattern_colour][2])
            forms = {
                "striped": ("{n} kẻ sọc {c}", "{n} {c} kẻ sọc {c2}", "{n} sọc {c1} {c2}"),
                "checked": ("{n} kẻ ô {c}", "{n} ca rô {c}", "{n} ca rô {c1} {c2}"),
                "logo": (
                    "{n} {c} có logo {c2}",
                    "{n} {c} có hình in ở ngực",
                    "{n} {c} in logo màu {c2} phía trước",
                ),
            }[pattern]
            np_ = self.ch(forms).format(n=n, c=c, c1=c1, c2=c2)
        return "mặc", self.cls("một chiếc") + np_

    def lower(self) -> tuple[str, str]:
        p = self.p
        key = p.lower if p.lower != "skirt" else f"skirt/{p.skirt_length}"
        n = self.ch(_VI_LOWER[key])
        return "mặc", self.cls("một chiếc", 0.1) + f"{n} {self.col(p.lower_colour, after=n)}"

    def shoes(self) -> tuple[str, str]:
        np_ = f"{self.ch(_VI_SHOES[self.p.shoes])} {self.col(self.p.shoes_colour)}"
        return self.ch(("đi", "mang")), self.cls("đôi") + np_

    def hat(self) -> tuple[str, str]:
        return "đội", self.cls(
            "một chiếc"
        ) + f"{self.ch(_VI_HATS[self.p.hat])} {self.col(self.p.hat_colour)}"

    def glasses(self) -> tuple[str, str]:
        names = (
            ("kính râm", "kính mát")
            if self.p.glasses == "sunglasses"
            else ("kính", "kính mắt", "kính cận")
        )
        return "đeo", self.cls("một cặp", 0.15) + self.ch(names)

    def carried(self, item: str) -> tuple[str, str]:
        p = self.p
        if item == "bag":
            c = self.col(p.bag_colour)
            pre = self.cls("một chiếc", 0.35)
            if p.bag == "backpack":
                return "đeo", f"{pre}ba lô {c}"
            if p.bag == "handbag":
                return self.ch(("xách", "cầm")), f"{pre}túi xách {c}"
            return self.ch(("đeo", "khoác")), f"{pre}{self.ch(('túi đeo vai', 'túi đeo chéo'))} {c}"
        if p.accessory == "umbrella":
            c = self.col(p.accessory_colour)
            return self.ch(
                ("cầm", "che")
            ), f"{self.cls('một chiếc', 0.3)}{self.ch(('ô', 'dù'))} {c}"
        phone = self.ch(("điện thoại", "điện thoại", "điện thoại di động"))
        if self.s.phone_pose == "ear":
            return self.ch((("nghe", phone), ("cầm", f"{phone} áp lên tai")))
        return self.ch(
            (("xem", phone), ("nhìn vào", phone), ("cầm", f"{self.cls('một chiếc', 0.5)}{phone}"))
        )

    def hair_mod(self) -> str:
        p = self.p
        if p.hair_style == "bald":
            return self.ch(("đầu hói", "đầu cạo trọc"))
        c = self.ch(HAIR_COLOURS[p.hair_colour][2])
        if p.hair_style == "ponytail":
            return self.ch(
                (f"tóc {c} buộc đuôi ngựa", f"có mái tóc {c} buộc đuôi ngựa", "buộc tóc đuôi ngựa")
            )
        length = "ngắn" if p.hair_style == "short" else self.ch(("dài", "dài", "dài ngang vai"))
        return self.ch(
            (f"tóc {length} màu {c}", f"có mái tóc {length} màu {c}", f"để tóc {length} màu {c}")
        )

    def wearable(self, item: str) -> tuple[str, str]:
        return getattr(self, item)()

    # -- subject -----------------------------------------------------------------------------
    def setup_subject(self, neutral: bool) -> None:
        group = "neutral" if neutral else self.p.gender
        options = _VI_SUBJECTS[group]
        if self.p.hair_colour == "gray" and not neutral:
            options = _VI_OLDER[group]
        self.noun, self.prons = self.ch(options)

    def subj(self) -> str:
        return self.ch(self.prons)

    def view_phrase(self) -> str:
        return self.ch(
            {
                "front": (
                    "đang đi về phía máy ảnh",
                    "đang đi tới",
                    "đang hướng mặt về phía máy ảnh",
                ),
                "back": (
                    "đang quay lưng về phía máy ảnh",
                    "được chụp từ phía sau",
                    "đang đi ra xa máy ảnh",
                ),
                "side": ("được chụp từ bên cạnh", "đang đi ngang qua", "được chụp nghiêng"),
            }[self.s.view]
        )

    def intro(self, sent: _Sentence) -> str:
        p, o = self.p, sent.opts
        subj = self.noun
        mods = []
        if o["build"]:
            mods.append(
                self.ch(
                    {
                        "slim": ("dáng người mảnh khảnh", "dáng gầy", "người mảnh mai"),
                        "heavy": ("dáng người đậm", "dáng người to con", "hơi mập"),
                    }[p.build]
                )
            )
        if o["hair"]:
            mods.append(self.hair_mod())
        if o["view"]:
            mods.append(self.view_phrase())
        head = subj + (" " + ", ".join(mods) + "," if mods else "")
        listed = self.join([self.wearable(i) for i in sent.items])
        if sent.kind == "intro_wear":
            aspect = "đang " if not mods and self.r.random() < 0.25 else ""
            return _cap(f"{head} {aspect}{listed}.")
        if sent.kind == "intro_in":
            act = self.ch(("đi bộ", "đi bộ trên phố", "đi trên vỉa hè", "đi trên đường", "bước đi"))
            return _cap(f"{head} {listed} đang {act}.")
        prefix = ""
        if subj.startswith("một") and self.r.random() < 0.15:
            prefix = self.ch(("trong ảnh là ", "đây là ", "ảnh chụp "))
        text = f"{prefix}{head} {listed}"
        if o["carry"]:
            text += ", " + self.join([self.carried(i) for i in o["carry"]])
        return _cap(text + ".")

    def render(self, plan: list[_Sentence]) -> str:
        self.setup_subject(plan[0].opts["neutral"])
        out = []
        for sent in plan:
            if sent.kind.startswith("intro"):
                out.append(self.intro(sent))
            elif sent.kind == "wear":
                listed = self.join([self.wearable(i) for i in sent.items])
                form = self.ch(("{S} còn {l}.", "{S} cũng {l}.", "Ngoài ra, {s} {l}.", "{S} {l}."))
                s = self.subj()
                out.append(form.format(S=_cap(s), s=s, l=listed))
            elif sent.kind == "carry":
                aspect = "đang " if self.r.random() < 0.4 else ""
                out.append(
                    _cap(
                        f"{self.subj()} {aspect}{self.join([self.carried(i) for i in sent.items])}."
                    )
                )
            elif sent.kind == "hair":
                out.append(self.hair_sentence(sent))
            elif sent.kind == "view":
                s = self.subj()
                out.append(
                    _cap(
                        self.ch(
                            {
                                "front": (
                                    "Ảnh được chụp từ phía trước.",
                                    f"{s} đang đi về phía máy ảnh.",
                                    f"{s} đang hướng mặt về phía máy ảnh.",
                                ),
                                "back": (
                                    "Ảnh được chụp từ phía sau.",
                                    f"{s} đang quay lưng về phía máy ảnh.",
                                    f"{s} đang đi ra xa máy ảnh.",
                                ),
                                "side": (
                                    "Ảnh được chụp từ bên cạnh.",
                                    f"{s} được chụp nghiêng.",
                                    f"{s} đang đi ngang qua máy ảnh.",
                                ),
                            }[self.s.view]
                        )
                    )
                )
            else:
                o = self.ch(_VI_OCCLUDERS[self.s.occluder])
                s = self.subj()
                of = self.ch(("", "của "))
                form = self.ch(
                    (
                        "Một phần cơ thể {of}{s} bị {o} che khuất.",
                        "{O} che mất một phần cơ thể {of}{s}.",
                        "{S} bị {o} che khuất một phần.",
                    )
                )
                out.append(form.format(of=of, s=s, S=_cap(s), o=o, O=_cap(o)))
        return unicodedata.normalize("NFC", " ".join(out))

    def hair_sentence(self, sent: _Sentence) -> str:
        p = self.p
        s = self.subj()
        glasses = "glasses" in sent.items
        if p.hair_style == "bald":
            text = self.ch((f"{s} bị hói", f"{s} cạo trọc đầu"))
        else:
            c = self.ch(HAIR_COLOURS[p.hair_colour][2])
            length = "ngắn" if p.hair_style == "short" else "dài"
            if p.hair_style == "ponytail":
                text = self.ch(
                    (
                        f"{s} có mái tóc màu {c} buộc đuôi ngựa",
                        f"{s} buộc tóc đuôi ngựa, tóc màu {c}",
                    )
                )
            elif not glasses and self.r.random() < 0.3:
                return _cap(f"tóc của {s} {length} và có màu {c}.")
            else:
                text = self.ch((f"{s} có mái tóc {length} màu {c}", f"{s} để tóc {length} màu {c}"))
        if glasses:
            text += " và " + " ".join(self.glasses())
        return _cap(text + ".")
