"""Draws one person (body, garments, hair, bags, hats, accessories); ``_shade``/``_mix`` colours."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from tbps.data.synthetic.attributes import Person, Shot
from tbps.data.synthetic.common import RGB


def _shade(rgb: RGB, f: float) -> RGB:
    return (min(255, int(rgb[0] * f)), min(255, int(rgb[1] * f)), min(255, int(rgb[2] * f)))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


class _Painter:
    """Draws one person in a canvas; coordinates are fractions of the person height ``ph``."""

    def __init__(
        self, img: Image.Image, person: Person, shot: Shot, ph: float, cx: float, y0: float
    ):
        self.img = img
        self.d = ImageDraw.Draw(img)
        self.p = person
        self.s = shot
        self.ph = ph
        self.cx = cx
        self.y0 = y0
        self.wf = person.width
        self.pattern_img: Image.Image | None = None
        self.light = 1 if (person.pid + int(ph)) % 2 else -1

    # -- coordinate helpers -----------------------------------------------------------------
    def pt(self, fx: float, fy: float) -> tuple[float, float]:
        return (self.cx + fx * self.ph, self.y0 + fy * self.ph)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        a, b = self.pt(x0, y0)
        c, d = self.pt(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def poly(self, pts: list[tuple[float, float]], fill: RGB, masks: list | None = None) -> None:
        xy = [self.pt(x, y) for x, y in pts]
        self.d.polygon(xy, fill=fill)
        if masks is not None:
            for m in masks:
                m.polygon(xy, fill=255)

    def ellipse(self, b: tuple[float, float, float, float], fill: RGB) -> None:
        self.d.ellipse(self.box(*b), fill=fill)

    def rrect(self, b: tuple[float, float, float, float], r: float, fill: RGB) -> None:
        x0, y0, x1, y1 = self.box(*b)
        r = min(r * self.ph, (x1 - x0) / 2 - 0.5, (y1 - y0) / 2 - 0.5)
        if r >= 1:
            self.d.rounded_rectangle([x0, y0, x1, y1], radius=r, fill=fill)
        else:
            self.d.rectangle([x0, y0, x1, y1], fill=fill)

    def line(self, pts: list[tuple[float, float]], fill: RGB, w: float) -> None:
        self.d.line([self.pt(x, y) for x, y in pts], fill=fill, width=max(1, round(w * self.ph)))

    def limb(
        self,
        a: tuple[float, float],
        b: tuple[float, float],
        wa: float,
        wb: float,
        fill: RGB,
        masks: list | None = None,
    ) -> None:
        """Tapered segment with round joints between fractional points ``a`` and ``b``."""
        (x1, y1), (x2, y2) = self.pt(*a), self.pt(*b)
        dx, dy = x2 - x1, y2 - y1
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        r1, r2 = wa * self.ph / 2, wb * self.ph / 2
        xy = [
            (x1 + nx * r1, y1 + ny * r1),
            (x2 + nx * r2, y2 + ny * r2),
            (x2 - nx * r2, y2 - ny * r2),
            (x1 - nx * r1, y1 - ny * r1),
        ]
        draws = [(self.d, fill)] + [(m, 255) for m in masks or []]
        for dr, f in draws:
            dr.polygon(xy, fill=f)
            dr.ellipse([x1 - r1, y1 - r1, x1 + r1, y1 + r1], fill=f)
            dr.ellipse([x2 - r2, y2 - r2, x2 + r2, y2 + r2], fill=f)

    def garment(self, parts: list, colour: RGB) -> None:
        """Draw polygons/limbs of the upper garment, then its pattern clipped to them."""
        mask = None
        masks = None
        if self.pattern_img is not None:
            mask = Image.new("L", self.img.size, 0)
            masks = [ImageDraw.Draw(mask)]
        for part in parts:
            if part[0] == "poly":
                self.poly(part[1], colour, masks)
            else:
                self.limb(*part[1:], fill=colour, masks=masks)
        if mask is not None:
            self.img.paste(self.pattern_img, (0, 0), mask)

    # -- pattern texture -------------------------------------------------------------------
    def make_pattern(self, rng: np.random.Generator, base: RGB) -> None:
        p = self.p
        if p.pattern not in ("striped", "checked"):
            return
        w, h = self.img.size
        tex = Image.new("RGB", (w, h), base)
        td = ImageDraw.Draw(tex)
        second = p.rgb["pattern"]
        period = max(3.0, self.ph * rng.uniform(0.028, 0.045))
        thick = max(1, round(period * (0.45 if p.pattern == "striped" else 0.3)))
        y = rng.uniform(0, period)
        while y < h:
            td.line([(0, y), (w, y)], fill=second, width=thick)
            y += period
        if p.pattern == "checked":
            x = rng.uniform(0, period)
            while x < w:
                td.line([(x, 0), (x, h)], fill=second, width=thick)
                x += period
            thin = _mix(base, second, 0.5)
            y = rng.uniform(0, period)
            while y < h:
                td.line([(0, y + period / 2), (w, y + period / 2)], fill=thin, width=1)
                y += period
        self.pattern_img = tex

    # -- body parts --------------------------------------------------------------------------
    def paint(self, rng: np.random.Generator) -> None:
        p, s = self.p, self.s
        female = p.gender == "female"
        wf = self.wf
        skin = p.rgb["skin"]
        up = p.rgb["upper"]
        self.make_pattern(rng, up)
        lo = p.rgb.get("lower", skin)
        shoe = p.rgb["shoes"]
        side = s.view == "side"
        back = s.view == "back"
        self.sw = (0.092 if female else 0.105) * wf  # shoulder half width
        self.hw = (0.092 if female else 0.084) * wf  # hip half width
        self.ww = (0.07 if female else 0.078) * wf  # waist half width
        self.hem = {"coat": 0.74, "jacket": 0.54, "dress": 0.42}.get(p.upper, 0.52)
        legs = self.leg_geometry()
        # whole body bobs so the lowest foot touches the ground line
        low = max(legs[0][2][1], legs[1][2][1])
        self.y0 += (0.955 - low) * self.ph

        # 1. things behind the body
        if p.bag == "backpack" and not back:
            self.backpack_behind()
        if p.hair_style == "long" and s.view == "front":
            self.rrect((-0.058, 0.01, 0.058, 0.27), 0.03, p.rgb["hair"])
        # 2. far arm (side view)
        arms = self.arm_geometry()
        if side:
            self.arm(arms[1], far=True)
        # 3. legs and lower garment, shoes
        self.draw_legs(legs, skin, lo, shoe)
        # 4. torso
        if p.sleeve == "none":
            self.torso_skin()
        self.draw_torso(up)
        if p.upper == "dress":
            self.draw_skirt(up, dress=True)
        # 5. details on the torso
        self.torso_details(up, rng)
        if p.bag == "backpack":
            self.backpack_front_or_back()
        if p.bag == "shoulder bag":
            self.shoulder_bag()
        # 6. arms
        if side:
            self.arm(arms[0], far=False)
        else:
            self.arm(arms[0], far=False)
            self.arm(arms[1], far=False)
        if p.bag == "handbag":
            self.handbag(arms)
        # 7. head
        self.draw_head()
        if p.accessory == "phone":
            self.phone(arms)
        if p.accessory == "umbrella":
            self.umbrella_canopy()

    def leg_geometry(self) -> list[tuple]:
        """Two legs as (hip, knee, ankle) fractional points; element 0 is the near/left leg."""
        s, wf = self.s, self.wf
        if s.view == "side":
            a = s.phase * 0.36
            hip = (0.0, 0.50)
            res = []
            for thigh, shin in ((a, a * 0.25), (-a * 0.8, -a * 1.7)):
                knee = (hip[0] + 0.235 * math.sin(thigh), hip[1] + 0.235 * math.cos(thigh))
                ank = (knee[0] + 0.225 * math.sin(shin), knee[1] + 0.225 * math.cos(shin))
                res.append((hip, knee, ank))
            return res
        spread = 0.012 + 0.01 * abs(s.phase)
        lift = 0.035 * abs(s.phase)
        res = []
        for sign in (-1, 1):
            lifted = (sign < 0) == (s.phase > 0)
            hip = (sign * 0.043 * wf, 0.50)
            knee = (sign * 0.04 * wf, 0.73 - (lift * 0.4 if lifted else 0))
            ank = (sign * (0.036 * wf + spread), 0.955 - (lift if lifted else 0))
            res.append((hip, knee, ank))
        return res

    def draw_legs(self, legs: list, skin: RGB, lo: RGB, shoe: RGB) -> None:
        p, wf = self.p, self.wf
        side = self.s.view == "side"
        order = [1, 0] if side else [0, 1]
        lower = p.lower
        for i in order:
            hip, knee, ank = legs[i]
            f = 0.82 if side and i == 1 else (0.95 if i == 1 else 1.0)
            tw, kw, aw = 0.078 * wf, 0.056 * wf, 0.042 * wf
            if lower in ("trousers", "jeans"):
                c = _shade(lo, f)
                self.limb(hip, knee, tw, kw + 0.004, c)
                self.limb(knee, ank, kw + 0.004, aw + 0.008, c)
            else:
                c = _shade(skin, f)
                self.limb(hip, knee, tw, kw, c)
                self.limb(knee, ank, kw, aw, c)
                if lower == "shorts":
                    t = 0.62
                    mid = (hip[0] + (knee[0] - hip[0]) * t, hip[1] + (knee[1] - hip[1]) * t)
                    self.limb(hip, mid, tw + 0.004, kw + 0.012, _shade(lo, f))
            self.shoe(ank, _shade(shoe, f), i)
        if lower in ("trousers", "jeans", "shorts"):
            hw = self.hw
            if side:
                pts = [
                    (-0.062 * wf, 0.43),
                    (0.052 * wf, 0.43),
                    (0.056 * wf, 0.54),
                    (-0.066 * wf, 0.55),
                ]
            else:
                pts = [(-hw, 0.43), (hw, 0.43), (hw * 0.98, 0.54), (0, 0.57), (-hw * 0.98, 0.54)]
            self.poly(pts, lo)
            if lower == "jeans" and not side:
                self.line([(0, 0.545), (0, 0.56)], _shade(lo, 0.7), 0.004)
        if lower == "skirt":
            self.draw_skirt(lo, dress=False)

    def shoe(self, ank: tuple[float, float], colour: RGB, i: int) -> None:
        p = self.p
        x, y = ank
        if p.shoes == "boots":
            self.limb((x, y - 0.1), (x, y), 0.05 * self.wf, 0.048 * self.wf, colour)
        sole = (200, 200, 196) if sum(colour) < 600 else (120, 120, 120)
        if self.s.view == "side":
            box = (x - 0.028, y - 0.014, x + 0.062, y + 0.04)
            self.rrect(box, 0.015, colour)
            if p.shoes == "sneakers":
                self.line([(x - 0.026, y + 0.037), (x + 0.06, y + 0.037)], sole, 0.008)
        else:
            box = (x - 0.028, y - 0.012, x + 0.028, y + 0.045)
            self.rrect(box, 0.016, colour)
            if p.shoes == "sneakers":
                self.line([(x - 0.025, y + 0.042), (x + 0.025, y + 0.042)], sole, 0.008)

    def draw_skirt(self, colour: RGB, dress: bool) -> None:
        top = 0.38 if dress else 0.41
        bottom = 0.62 if self.p.skirt_length == "short" else 0.71
        flare = 0.03 + 0.02 * abs(self.s.phase)
        if self.s.view == "side":
            wf = self.wf
            pts = [
                (-0.058 * wf, top),
                (0.052 * wf, top),
                (0.07 * wf + flare, bottom),
                (-0.08 * wf - flare, bottom),
            ]
        else:
            hw = self.hw
            pts = [(-self.ww, top), (self.ww, top), (hw + flare, bottom), (-hw - flare, bottom)]
        self.garment([("poly", pts)], colour)

    def torso_pts(self) -> list[tuple[float, float]]:
        sw, ww, hw, wf, hem = self.sw, self.ww, self.hw, self.wf, self.hem
        hem_w = hw * (1.25 if self.p.upper == "coat" else 1.02)
        if self.s.view == "side":
            k = 1.25 if self.p.upper == "coat" else 1.0
            return [
                (-0.05 * wf, 0.165),
                (0.035 * wf, 0.162),
                (0.062 * wf, 0.27),
                (0.052 * wf, 0.40),
                (0.056 * wf * k, hem),
                (-0.066 * wf * k, hem),
                (-0.056 * wf, 0.40),
                (-0.064 * wf, 0.25),
            ]
        return [
            (-sw, 0.17),
            (-sw * 0.55, 0.158),
            (sw * 0.55, 0.158),
            (sw, 0.17),
            (sw * 0.94, 0.25),
            (ww, 0.40),
            (hem_w, hem),
            (-hem_w, hem),
            (-ww, 0.40),
            (-sw * 0.94, 0.25),
        ]

    def torso_skin(self) -> None:
        skin = self.p.rgb["skin"]
        pts = self.torso_pts()
        self.poly([(x, min(y, 0.3)) for x, y in pts], skin)

    def draw_torso(self, up: RGB) -> None:
        pts = self.torso_pts()
        if self.p.sleeve == "none":
            # sleeveless: straps leave the shoulders bare
            sw = self.sw if self.s.view != "side" else 0.05 * self.wf
            if self.s.view == "side":
                pts = [(-0.03, 0.175), (0.02, 0.172)] + pts[2:]
            else:
                pts = (
                    [
                        (-sw * 0.6, 0.16),
                        (-sw * 0.35, 0.165),
                        (-sw * 0.25, 0.2),
                        (sw * 0.25, 0.2),
                        (sw * 0.35, 0.165),
                        (sw * 0.6, 0.16),
                        (sw * 0.85, 0.25),
                    ]
                    + pts[5:-1]
                    + [(-sw * 0.85, 0.25)]
                )
        self.garment([("poly", pts)], up)
        if self.pattern_img is None:
            # side shading gives the torso some volume
            if self.s.view == "side":
                chain = [pts[0], pts[-1], pts[-2], pts[-3]]
            else:
                sg = self.light
                chain = sorted([q for q in pts if q[0] * sg > self.sw * 0.3], key=lambda q: q[1])
            if len(chain) >= 2:
                inner = [
                    (x * 0.62 + (0.012 if self.s.view == "side" else 0.0), y) for x, y in chain
                ]
                self.poly(
                    chain + inner[::-1], _shade(up, 0.84) if sum(up) > 90 else _shade(up, 0.7)
                )

    def torso_details(self, up: RGB, rng: np.random.Generator) -> None:
        p, s = self.p, self.s
        side, back = s.view == "side", s.view == "back"
        dark = _shade(up, 0.72) if sum(up) > 120 else _mix(up, (110, 110, 110), 0.35)
        skin = p.rgb["skin"]
        # neckline
        if not back and not side and p.upper in ("t-shirt", "dress", "tank top"):
            self.ellipse((-0.022, 0.145, 0.022, 0.19), skin)
        if not back and not side and p.upper == "shirt":
            self.poly([(-0.02, 0.155), (0.0, 0.2), (0.02, 0.155)], skin)
            self.poly([(-0.03, 0.155), (-0.004, 0.198), (-0.018, 0.2)], _shade(up, 1.12))
            self.poly([(0.03, 0.155), (0.004, 0.198), (0.018, 0.2)], _shade(up, 1.12))
            for y in (0.25, 0.31, 0.37, 0.43):
                self.ellipse((-0.004, y, 0.004, y + 0.008), dark)
        if p.upper in ("jacket", "coat") and not back:
            x = 0.045 * self.wf if side else 0.0
            self.line([(x, 0.17), (x, self.hem)], dark, 0.006)
            if not side:
                self.poly([(-0.03, 0.156), (0.0, 0.24), (0.03, 0.156)], dark)
            if p.upper == "coat" and not side:
                for y in (0.28, 0.36, 0.44, 0.52):
                    self.ellipse((0.012, y, 0.024, y + 0.012), dark)
        if p.upper == "hoodie":
            if back:
                self.poly([(-0.05, 0.16), (0.05, 0.16), (0.035, 0.26), (-0.035, 0.26)], dark)
            elif not side:
                self.ellipse((-0.04, 0.14, 0.04, 0.185), dark)
                self.line([(-0.012, 0.185), (-0.014, 0.25)], (225, 225, 225), 0.004)
                self.line([(0.012, 0.185), (0.014, 0.25)], (225, 225, 225), 0.004)
            else:
                self.poly([(-0.06, 0.14), (-0.01, 0.15), (-0.03, 0.22), (-0.068, 0.2)], dark)
        if p.upper == "sweater":
            y = self.hem
            box = (-self.hw * 1.02, y - 0.02, self.hw * 1.02, y)
            if side:
                box = (-0.066 * self.wf, y - 0.02, 0.056 * self.wf, y)
            self.rrect(box, 0.004, dark)
        if p.pattern == "logo" and not back:
            c = p.rgb["pattern"]
            lx = 0.02 * self.wf if side else rng.uniform(-0.01, 0.01)
            r = 0.028 if not side else 0.018
            shape = p.pid % 3
            if shape == 0:
                self.ellipse((lx - r, 0.25, lx + r, 0.25 + 2 * r), c)
            elif shape == 1:
                self.rrect((lx - r * 1.2, 0.25, lx + r * 1.2, 0.25 + 1.6 * r), 0.004, c)
            else:
                self.poly(
                    [(lx, 0.245), (lx + r * 1.1, 0.25 + 2 * r), (lx - r * 1.1, 0.25 + 2 * r)], c
                )

    def arm_geometry(self) -> list[list[tuple[float, float]]]:
        """Two arms as [shoulder, elbow, wrist]; element 0 is the near/right arm."""
        s, p, sw = self.s, self.p, self.sw
        if s.view == "side":
            a = s.phase * 0.36
            arms = []
            for ang in (-a * 0.9, a * 0.9):
                sh = (0.0, 0.19)
                el = (sh[0] + 0.16 * math.sin(ang), sh[1] + 0.16 * math.cos(ang))
                fa = ang + 0.25 + max(0.0, ang) * 0.6
                wr = (el[0] + 0.15 * math.sin(fa), el[1] + 0.15 * math.cos(fa))
                arms.append([sh, el, wr])
        else:
            swing = 0.012 * s.phase
            arms = []
            for sign in (1, -1):
                sh = (sign * (sw - 0.018), 0.19)
                el = (sign * (sw + 0.006), 0.35 + sign * swing)
                wr = (sign * (sw - 0.002), 0.5 + sign * swing * 1.5)
                arms.append([sh, el, wr])
        # a hand that holds the umbrella or the phone is raised (near/right arm)
        sh, el, _ = arms[0]
        hand = None
        if p.accessory == "umbrella":
            hand = (0.06, 0.3) if s.view == "side" else (sw * 0.7, 0.3)
        elif p.accessory == "phone" and s.phone_pose == "ear":
            hand = (0.02, 0.085) if s.view == "side" else (0.05, 0.085)
        elif p.accessory == "phone":
            hand = (0.065, 0.3) if s.view == "side" else (0.012, 0.31)
        if hand is not None:
            elbow = (sh[0] + (0.01 if s.view == "side" else 0.012), 0.33)
            arms[0] = [sh, elbow, hand]
        return arms

    def arm(self, arm: list[tuple[float, float]], far: bool) -> None:
        p = self.p
        sh, el, wr = arm
        wf = self.wf
        f = 0.78 if far else 0.9
        skin = _shade(p.rgb["skin"], f)
        up = _shade(p.rgb["upper"], f)
        uw, fw = 0.046 * wf, 0.036 * wf
        self.limb(sh, el, uw, fw + 0.002, skin)
        self.limb(el, wr, fw, fw * 0.85, skin)
        if p.sleeve == "short":
            mid = (sh[0] + (el[0] - sh[0]) * 0.55, sh[1] + (el[1] - sh[1]) * 0.55)
            self.garment([("limb", sh, mid, uw + 0.01, uw + 0.006)], up)
        elif p.sleeve == "long":
            extra = 0.012 if p.upper in ("coat", "jacket", "hoodie") else 0.006
            self.garment(
                [
                    ("limb", sh, el, uw + extra, fw + extra),
                    ("limb", el, wr, fw + extra, fw + extra * 0.6),
                ],
                up,
            )
        hx = wr[0] + (wr[0] - el[0]) * 0.25
        hy = wr[1] + (wr[1] - el[1]) * 0.25
        self.ellipse((hx - 0.017, hy - 0.018, hx + 0.017, hy + 0.02), skin)

    def draw_head(self) -> None:
        p, s = self.p, self.s
        skin = p.rgb["skin"]
        hair = p.rgb["hair"]
        rw, hh = 0.042, 0.125
        side, back = s.view == "side", s.view == "back"
        hx = 0.008 if side else 0.0
        # neck
        self.rrect((hx - 0.018, 0.1, hx + 0.018, 0.18), 0.006, _shade(skin, 0.9))
        self.ellipse((hx - rw, 0.0, hx + rw, hh), skin)
        bald = p.hair_style == "bald"
        if side:
            self.ellipse((hx + rw * 0.8, 0.05, hx + rw * 1.15, 0.08), skin)  # nose
            if not bald:
                self.ellipse((hx - rw * 1.06, -0.007, hx + rw * 1.02, 0.1), hair)
                self.ellipse((hx - rw * 0.15, 0.032, hx + rw, hh), skin)
                self.ellipse((hx - rw * 0.3, 0.052, hx - rw * 0.02, 0.082), _shade(skin, 0.85))
                if p.hair_style == "long":
                    pts = [(-rw * 1.05, 0.04), (-rw * 0.2, 0.06), (-0.04, 0.25), (-0.075, 0.26)]
                    self.poly(pts, hair)
                elif p.hair_style == "ponytail":
                    self.limb((hx - rw * 0.95, 0.045), (hx - rw * 1.45, 0.17), 0.03, 0.016, hair)
            self.ellipse((hx + rw * 0.55, 0.052, hx + rw * 0.72, 0.064), (40, 30, 30))
            if p.glasses != "none":
                lens = (20, 20, 24) if p.glasses == "sunglasses" else _shade(skin, 0.95)
                self.rrect((hx + rw * 0.42, 0.047, hx + rw * 0.92, 0.068), 0.003, (30, 30, 30))
                self.rrect((hx + rw * 0.5, 0.05, hx + rw * 0.86, 0.065), 0.002, lens)
                self.line([(hx + rw * 0.45, 0.055), (hx - rw * 0.3, 0.06)], (30, 30, 30), 0.004)
        elif back:
            self.ellipse((-rw * 1.18, 0.05, -rw * 0.9, 0.085), _shade(skin, 0.9))
            self.ellipse((rw * 0.9, 0.05, rw * 1.18, 0.085), _shade(skin, 0.9))
            if not bald:
                self.ellipse((-rw * 1.05, -0.006, rw * 1.05, 0.108), hair)
                if p.hair_style == "long":
                    self.rrect((-rw * 1.2, 0.03, rw * 1.2, 0.29), 0.025, hair)
                elif p.hair_style == "ponytail":
                    self.limb((0, 0.06), (0.004, 0.2), 0.03, 0.018, hair)
        else:
            self.ellipse((-rw * 1.15, 0.05, -rw * 0.9, 0.085), _shade(skin, 0.92))
            self.ellipse((rw * 0.9, 0.05, rw * 1.15, 0.085), _shade(skin, 0.92))
            if not bald:
                self.d.chord(self.box(-rw * 1.07, -0.008, rw * 1.07, 0.078), 180, 360, fill=hair)
                if p.hair_style == "long":
                    for sg in (-1, 1):
                        pts = [
                            (sg * rw * 1.08, 0.03),
                            (sg * rw * 0.78, 0.03),
                            (sg * rw * 0.9, 0.14),
                            (sg * rw * 1.3, 0.23),
                            (sg * rw * 1.4, 0.2),
                        ]
                        self.poly(pts, hair)
            eye = (36, 28, 26)
            for sg in (-1, 1):
                self.ellipse((sg * 0.016 - 0.005, 0.056, sg * 0.016 + 0.005, 0.066), eye)
            self.line([(-0.008, 0.098), (0.008, 0.098)], _shade(skin, 0.7), 0.004)
            if p.glasses != "none":
                frame = (28, 28, 30)
                lens = (18, 18, 22) if p.glasses == "sunglasses" else None
                for sg in (-1, 1):
                    b = self.box(sg * 0.016 - 0.013, 0.052, sg * 0.016 + 0.013, 0.07)
                    self.d.rectangle(
                        b, fill=lens, outline=frame, width=max(1, round(0.004 * self.ph))
                    )
                self.line([(-0.004, 0.058), (0.004, 0.058)], frame, 0.004)
        self.draw_hat(hx, rw)

    def draw_hat(self, hx: float, rw: float) -> None:
        p, s = self.p, self.s
        if p.hat == "none":
            return
        c = p.rgb["hat"]
        dark = _shade(c, 0.75) if sum(c) > 90 else (70, 70, 72)
        if p.hat == "cap":
            self.d.chord(self.box(hx - rw * 1.1, -0.02, hx + rw * 1.1, 0.09), 180, 360, fill=c)
            if s.view == "side":
                self.rrect((hx + rw * 0.6, 0.028, hx + rw * 1.9, 0.042), 0.006, dark)
            elif s.view == "front":
                self.ellipse((hx - rw * 1.05, 0.024, hx + rw * 1.05, 0.05), dark)
        elif p.hat == "hat":
            self.rrect((hx - rw * 0.95, -0.035, hx + rw * 0.95, 0.035), 0.015, c)
            self.ellipse((hx - rw * 2.0, 0.015, hx + rw * 2.0, 0.045), dark)
            self.rrect((hx - rw * 0.95, 0.012, hx + rw * 0.95, 0.024), 0.0, _shade(c, 0.6))
        else:  # beanie
            self.d.chord(self.box(hx - rw * 1.1, -0.025, hx + rw * 1.1, 0.1), 180, 360, fill=c)
            self.rrect((hx - rw * 1.1, 0.028, hx + rw * 1.1, 0.05), 0.006, dark)

    def backpack_behind(self) -> None:
        c = _shade(self.p.rgb["bag"], 0.85)
        if self.s.view == "side":
            x = -0.06 * self.wf
            self.rrect((x - 0.075, 0.18, x + 0.02, 0.44), 0.02, c)
            self.rrect((x - 0.085, 0.3, x - 0.06, 0.42), 0.01, _shade(c, 0.8))
        else:
            self.rrect((-self.sw * 0.8, 0.145, self.sw * 0.8, 0.4), 0.02, c)

    def backpack_front_or_back(self) -> None:
        c = self.p.rgb["bag"]
        sw = self.sw
        dark = _shade(c, 0.72) if sum(c) > 120 else _mix(c, (120, 120, 120), 0.3)
        if self.s.view == "back":
            self.rrect((-sw * 0.8, 0.18, sw * 0.8, 0.45), 0.028, c)
            self.rrect((-sw * 0.55, 0.33, sw * 0.55, 0.43), 0.015, dark)
            self.line([(-sw * 0.5, 0.25), (sw * 0.5, 0.25)], dark, 0.005)
        elif self.s.view == "front":
            for sg in (-1, 1):
                self.limb((sg * sw * 0.55, 0.16), (sg * sw * 0.62, 0.34), 0.024, 0.02, c)
        else:
            self.limb((0.0, 0.165), (0.015, 0.34), 0.022, 0.018, c)

    def shoulder_bag(self) -> None:
        c = self.p.rgb["bag"]
        sw, hw = self.sw, self.hw
        strap = _shade(c, 0.85)
        if self.s.view == "side":
            self.line([(0.0, 0.165), (-0.03, 0.47)], strap, 0.008)
            self.rrect((-0.075, 0.45, 0.02, 0.55), 0.012, c)
            return
        sg = 1 if self.s.view == "front" else -1
        self.line([(sg * sw * 0.6, 0.162), (-sg * hw * 0.95, 0.47)], strap, 0.009)
        x0, x1 = -sg * hw * 1.3, -sg * hw * 0.45
        self.rrect((min(x0, x1), 0.45, max(x0, x1), 0.56), 0.012, c)

    def handbag(self, arms: list) -> None:
        c = self.p.rgb["bag"]
        idx = 1 if self.p.accessory != "none" else 0
        if self.s.view == "side":
            idx = 0
        _, el, wr = arms[idx]
        hx = wr[0] + (wr[0] - el[0]) * 0.25
        hy = wr[1] + (wr[1] - el[1]) * 0.25
        self.line([(hx - 0.02, hy + 0.05), (hx, hy), (hx + 0.02, hy + 0.05)], _shade(c, 0.7), 0.006)
        self.poly(
            [
                (hx - 0.04, hy + 0.045),
                (hx + 0.04, hy + 0.045),
                (hx + 0.048, hy + 0.13),
                (hx - 0.048, hy + 0.13),
            ],
            c,
        )
        self.ellipse((hx - 0.017, hy - 0.018, hx + 0.017, hy + 0.02), self.p.rgb["skin"])

    def umbrella_canopy(self) -> None:
        c = self.p.rgb["accessory"]
        s = self.s
        hand = (0.06, 0.3) if s.view == "side" else (self.sw * 0.7, 0.3)
        tx, ty = (0.03, -0.025) if s.view == "side" else (hand[0] - 0.01, -0.025)
        self.line([hand, (tx, ty)], (45, 45, 48), 0.008)
        r = 0.2
        self.d.pieslice(self.box(tx - r, ty - r * 0.45, tx + r, ty + r * 0.45), 180, 360, fill=c)
        dark = _shade(c, 0.7) if sum(c) > 120 else (90, 90, 95)
        for k in (-0.6, 0.0, 0.6):
            self.line([(tx, ty - r * 0.42), (tx + k * r, ty)], dark, 0.004)
        self.line([(tx, ty - r * 0.45), (tx, ty - r * 0.55)], (45, 45, 48), 0.008)

    def phone(self, arms: list) -> None:
        _, el, wr = arms[0]
        hx = wr[0] + (wr[0] - el[0]) * 0.25
        hy = wr[1] + (wr[1] - el[1]) * 0.25
        dark = (22, 24, 28)
        if self.s.phone_pose == "ear":
            if self.s.view == "back":
                return
            self.rrect((hx - 0.01, hy - 0.035, hx + 0.01, hy + 0.01), 0.004, dark)
        else:
            if self.s.view == "back":
                return
            self.rrect((hx - 0.016, hy - 0.03, hx + 0.016, hy + 0.012), 0.004, dark)
            self.ellipse((hx - 0.017, hy - 0.004, hx + 0.017, hy + 0.03), self.p.rgb["skin"])
