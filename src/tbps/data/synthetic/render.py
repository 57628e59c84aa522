"""Renders one image: background, the painted person, occluders, lighting and capture effects."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from tbps.data.synthetic.attributes import Person, Shot
from tbps.data.synthetic.common import RGB, _choice
from tbps.data.synthetic.painter import _mix, _Painter, _shade


def _muted(rng: np.random.Generator, sat: float = 0.3, lo: float = 0.3, hi: float = 0.9) -> RGB:
    """A random desaturated colour (backgrounds must not compete with garment colours)."""
    grey = rng.uniform(lo, hi) * 255
    tint = rng.normal(0, 1, 3)
    tint = tint / (np.abs(tint).max() + 1e-6) * rng.uniform(0, sat) * 90
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def _draw_background(img: Image.Image, rng: np.random.Generator, ground_y: float) -> RGB:
    """Gradient + ground + clutter (walls, windows, poles, trees, bystanders). Returns ground colour."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    style = _choice(rng, ("street", "indoor", "park"), (0.5, 0.25, 0.25))
    top = _muted(rng, 0.35, 0.35, 0.92)
    mid = _mix(top, _muted(rng, 0.3, 0.3, 0.85), rng.uniform(0.3, 1.0))
    if style == "park":
        mid = _mix(mid, (90, 120, 80), 0.4)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = np.asarray(top, np.float32) * (1 - t) + np.asarray(mid, np.float32) * t
    img.paste(Image.fromarray(np.broadcast_to(grad, (h, w, 3)).astype(np.uint8)))
    gy = int(ground_y)
    if style == "street":
        x = -rng.uniform(0, w * 0.5)
        while x < w:
            bw = rng.uniform(0.35, 1.2) * w
            wall = _muted(rng, 0.3, 0.25, 0.85)
            wt = rng.uniform(0, 0.35) * gy
            d.rectangle([x, wt, x + bw, gy], fill=wall)
            if rng.random() < 0.7:
                win = _shade(wall, rng.uniform(0.5, 1.3))
                ww, wh = rng.uniform(0.12, 0.3) * w, rng.uniform(0.06, 0.14) * h
                yy = wt + rng.uniform(0.02, 0.08) * h
                while yy + wh < gy - 0.05 * h:
                    xx = x + rng.uniform(0.05, 0.15) * w
                    while xx + ww < x + bw:
                        d.rectangle([xx, yy, xx + ww, yy + wh], fill=win)
                        xx += ww * rng.uniform(1.4, 2.0)
                    yy += wh * rng.uniform(1.5, 2.2)
            x += bw
    elif style == "indoor":
        wall = _muted(rng, 0.25, 0.5, 0.92)
        d.rectangle([0, 0, w, gy], fill=wall)
        for _ in range(int(rng.integers(0, 3))):
            x0 = rng.uniform(-0.2, 0.9) * w
            y0 = rng.uniform(0.05, 0.4) * h
            d.rectangle(
                [x0, y0, x0 + rng.uniform(0.2, 0.6) * w, y0 + rng.uniform(0.1, 0.3) * h],
                fill=_muted(rng, 0.4, 0.2, 0.95),
            )
        d.rectangle([0, gy - 0.02 * h, w, gy], fill=_shade(wall, 0.7))
    else:
        for _ in range(int(rng.integers(1, 4))):
            tx = rng.uniform(-0.2, 1.2) * w
            tw = rng.uniform(0.04, 0.1) * w
            d.rectangle(
                [tx - tw, gy * rng.uniform(0.3, 0.6), tx + tw, gy], fill=_muted(rng, 0.3, 0.15, 0.4)
            )
            fr = rng.uniform(0.3, 0.7) * w
            fy = gy * rng.uniform(0.15, 0.45)
            leaf = _mix(_muted(rng, 0.2, 0.25, 0.6), (70, 110, 60), rng.uniform(0.2, 0.6))
            d.ellipse([tx - fr, fy - fr * 1.2, tx + fr, fy + fr * 1.2], fill=leaf)
    ground = _muted(rng, 0.2, 0.3, 0.75)
    if style == "park" and rng.random() < 0.4:
        ground = _mix(ground, (110, 130, 90), 0.5)
    t2 = np.linspace(0.0, 1.0, h - gy, dtype=np.float32)[:, None, None]
    g0, g1 = (
        np.asarray(ground, np.float32),
        np.asarray(_shade(ground, rng.uniform(0.8, 1.2)), np.float32),
    )
    if h - gy > 0:
        gg = np.broadcast_to(g0 * (1 - t2) + g1 * t2, (h - gy, w, 3)).astype(np.uint8)
        img.paste(Image.fromarray(gg), (0, gy))
    line = _shade(ground, rng.uniform(0.7, 1.25))
    if rng.random() < 0.6:  # tiles or road markings with perspective spacing
        yy, step = gy + 3.0, rng.uniform(0.015, 0.03) * h
        while yy < h:
            d.line([(0, yy), (w, yy)], fill=line, width=1)
            step *= 1.35
            yy += step
    if rng.random() < 0.5:
        vx = rng.uniform(0, w)
        for k in range(-3, 4):
            d.line([(vx + k * w * 0.08, gy), (vx + k * w * 0.6, h)], fill=line, width=1)
    # poles and street furniture
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        px = rng.uniform(0, w)
        pw = rng.uniform(0.02, 0.07) * w
        d.rectangle(
            [px, 0, px + pw, gy + rng.uniform(0, 0.04) * h], fill=_muted(rng, 0.1, 0.15, 0.6)
        )
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        ox = rng.uniform(-0.1, 1.0) * w
        oh = rng.uniform(0.04, 0.16) * h
        ow = rng.uniform(0.1, 0.4) * w
        oy = gy + rng.uniform(-0.01, 0.05) * h
        colour = _muted(rng, 0.5, 0.2, 0.85)
        if rng.random() < 0.5:
            d.rectangle([ox, oy - oh, ox + ow, oy], fill=colour)
        else:
            d.rounded_rectangle([ox, oy - oh, ox + ow, oy], radius=ow * 0.2, fill=colour)
    # distant bystanders (small, muted)
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        bh = rng.uniform(0.25, 0.5) * h
        bx = rng.uniform(-0.1, 1.1) * w
        by = gy + rng.uniform(0.0, 0.08) * h
        body = _muted(rng, 0.35, 0.15, 0.75)
        legs = _muted(rng, 0.2, 0.1, 0.5)
        bw = bh * 0.11
        d.rectangle([bx - bw * 0.4, by - bh * 0.48, bx + bw * 0.4, by], fill=legs)
        d.rounded_rectangle(
            [bx - bw, by - bh * 0.85, bx + bw, by - bh * 0.45], radius=bw * 0.4, fill=body
        )
        d.ellipse(
            [bx - bw * 0.5, by - bh, bx + bw * 0.5, by - bh * 0.86], fill=_muted(rng, 0.2, 0.3, 0.8)
        )
    return ground


def _draw_occluder(
    img: Image.Image, kind: str, rng: np.random.Generator, ph: float, cx: float, y0: float
) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    if kind == "car":
        top = y0 + ph * rng.uniform(0.62, 0.78)
        colour = _muted(rng, 0.6, 0.15, 0.9)
        x0 = rng.uniform(-0.6, -0.1) * w
        x1 = x0 + rng.uniform(1.0, 1.6) * w
        d.rounded_rectangle([x0, top, x1, h + 20], radius=0.08 * w, fill=colour)
        d.rectangle(
            [x0 + 0.1 * w, top + 0.04 * h, x1 - 0.1 * w, top + 0.07 * h], fill=_shade(colour, 0.6)
        )
        r = 0.12 * w
        for wx in (x0 + 0.3 * w, x1 - 0.3 * w):
            d.ellipse([wx - r, h - r * 0.9, wx + r, h + r * 1.1], fill=(25, 25, 25))
    elif kind == "pole":
        px = cx + rng.uniform(-0.12, 0.12) * ph
        pw = rng.uniform(0.03, 0.06) * ph
        d.rectangle([px - pw / 2, 0, px + pw / 2, h], fill=_muted(rng, 0.1, 0.2, 0.55))
        d.rectangle([px - pw / 2, 0, px - pw / 6, h], fill=_muted(rng, 0.05, 0.5, 0.7))
    elif kind == "sign":
        sx = cx + rng.choice([-1, 1]) * rng.uniform(0.1, 0.16) * ph
        sy = y0 + ph * rng.uniform(0.25, 0.5)
        sw, sh = rng.uniform(0.1, 0.16) * ph, rng.uniform(0.08, 0.14) * ph
        d.rectangle([sx - 0.008 * ph, sy, sx + 0.008 * ph, h], fill=(90, 90, 95))
        board = _choice(rng, [(230, 230, 225), (40, 80, 170), (60, 60, 60), (200, 170, 60)])
        d.rectangle([sx - sw / 2, sy - sh / 2, sx + sw / 2, sy + sh / 2], fill=board)
        d.rectangle([sx - sw / 3, sy - sh / 8, sx + sw / 3, sy + sh / 8], fill=_shade(board, 0.5))
    elif kind == "bicycle":
        by = y0 + ph * rng.uniform(0.8, 0.95)
        r = 0.12 * ph
        fx = cx + rng.uniform(-0.1, 0.1) * ph
        col = _muted(rng, 0.6, 0.15, 0.7)
        lw = max(2, round(0.012 * ph))
        for wx in (fx - 0.17 * ph, fx + 0.17 * ph):
            d.ellipse([wx - r, by - r, wx + r, by + r], outline=(30, 30, 30), width=lw)
        d.line(
            [
                (fx - 0.17 * ph, by),
                (fx, by - 0.14 * ph),
                (fx + 0.17 * ph, by),
                (fx - 0.02 * ph, by),
            ],
            fill=col,
            width=lw,
        )
    elif kind == "railing":
        ry = y0 + ph * rng.uniform(0.6, 0.75)
        col = _muted(rng, 0.3, 0.15, 0.8)
        lw = max(2, round(0.015 * ph))
        for k in range(3):
            d.line([(0, ry + k * 0.08 * ph), (w, ry + k * 0.08 * ph)], fill=col, width=lw)
        x = rng.uniform(0, 0.1 * ph)
        while x < w:
            d.line([(x, ry), (x, h)], fill=col, width=lw)
            x += 0.12 * ph
    else:  # another person passing in front, cut by the frame
        sg = rng.choice([-1, 1])
        ex = (0 if sg < 0 else w) + sg * rng.uniform(-0.05, 0.15) * w
        body = _muted(rng, 0.5, 0.1, 0.7)
        ew = rng.uniform(0.25, 0.4) * w
        d.rounded_rectangle([ex - ew, y0 + 0.2 * ph, ex + ew, h + 10], radius=ew * 0.4, fill=body)
        d.ellipse(
            [ex - ew * 0.5, y0 + 0.04 * ph, ex + ew * 0.5, y0 + 0.2 * ph],
            fill=_muted(rng, 0.3, 0.1, 0.6),
        )


_NOISE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _noise_field(h: int, w: int) -> np.ndarray:
    """A fixed Gaussian noise tile (2x the image) sampled at random offsets: cheap, deterministic."""
    key = (h, w)
    if key not in _NOISE_CACHE:
        gen = np.random.default_rng(12345)
        _NOISE_CACHE[key] = gen.standard_normal((2 * h, 2 * w, 3), dtype=np.float32)
    return _NOISE_CACHE[key]


def render_image(
    person: Person, shot: Shot, rng: np.random.Generator, height: int, width: int
) -> Image.Image:
    """Render one RGB image of ``person`` under ``shot`` (all randomness drawn from ``rng``)."""
    scale = 1.0 if rng.random() < 0.45 else rng.uniform(0.5, 0.95)
    h = max(24, round(height * scale))
    w = max(12, round(width * scale))
    img = Image.new("RGB", (w, h))
    # placement of the person
    if shot.crop == "knees":
        ph = h * rng.uniform(1.1, 1.3)
        y0 = h * rng.uniform(0.0, 0.04)
    elif shot.crop == "head":
        ph = h * rng.uniform(0.95, 1.05) * person.height
        y0 = -ph * rng.uniform(0.03, 0.08)
    else:
        ph = h * rng.uniform(0.8, 0.96) * person.height
        top = 0.004 * h
        if person.accessory == "umbrella":  # keep most of the canopy in the frame
            ph = min(ph, h * 0.86)
            top = 0.1 * ph
        y0 = top + rng.uniform(0.0, 0.99) * max(1.0, h - ph - 0.01 * h - top)
    cx = w / 2 + rng.uniform(-0.09, 0.09) * w
    ground_y = min(h * 0.95, y0 + ph * rng.uniform(0.45, 0.8))
    ground = _draw_background(img, rng, ground_y)
    feet_y = y0 + ph * 0.99
    d = ImageDraw.Draw(img)
    sh_w = ph * rng.uniform(0.09, 0.14)
    d.ellipse(
        [cx - sh_w, feet_y - ph * 0.018, cx + sh_w, feet_y + ph * 0.018], fill=_shade(ground, 0.72)
    )
    painter = _Painter(img, person, shot, ph, cx, y0)
    painter.paint(rng)
    if shot.occluder != "none":
        _draw_occluder(img, shot.occluder, rng, ph, cx, painter.y0)
    if shot.view == "side" and shot.facing < 0:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # illumination: low-frequency field, then a per-channel tone curve (brightness, contrast,
    # gamma, colour cast) applied as a lookup table
    if rng.random() < 0.6:
        field_small = rng.uniform(0.78, 1.0, (3, 2)).astype(np.float32)
        fimg = Image.fromarray((field_small * 255).astype(np.uint8), "L").resize(
            (w, h), Image.Resampling.BILINEAR
        )
        img = ImageChops.multiply(img, Image.merge("RGB", (fimg, fimg, fimg)))
    bright = rng.uniform(0.82, 1.22)
    contrast = rng.uniform(0.8, 1.15)
    gamma = rng.uniform(0.85, 1.15)
    cast = rng.uniform(0.93, 1.07, 3)
    x = np.arange(256, dtype=np.float32) / 255.0
    lut = []
    for ch in range(3):
        y = ((x**gamma - 0.5) * contrast + 0.5) * bright * cast[ch]
        lut.extend(np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8).tolist())
    img = img.point(lut)
    if (w, h) != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    elif rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    if rng.random() < 0.5:
        tile = _noise_field(height, width)
        oy, ox = int(rng.integers(0, height)), int(rng.integers(0, width))
        noise = tile[oy : oy + height, ox : ox + width] * rng.uniform(2.0, 6.0)
        arr = np.asarray(img, dtype=np.float32) + noise
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img
