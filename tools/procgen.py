#!/usr/bin/env python3
"""Procedural training pictures for mixgan's demo experts: cartoon faces, hands and landscapes.

Every picture is a pure function of (kind, index, seed): the same arguments always draw the
same pixels, so a dataset is its seed and needs no download. Pictures are drawn at twice the
target size with PIL and reduced with a Lanczos filter, which antialiases the edges.

Sub-commands:
  grid     a grid of samples of one kind, for the README
  cache    N samples of one kind as a uint8 .npy array [N, H, W, 3] (parallel)

With --alpha, faces and hands come with a fourth channel, the exact coverage of the subject
(head, hair, neck and shoulders; the hand cut straight below the sleeve's cuff).
"""
import argparse
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZES = {"face": 64, "hand": 64, "background": 128}
SS = 2  # supersampling factor

SKIN = [(255, 224, 196), (241, 194, 157), (224, 172, 125), (198, 134, 86), (161, 102, 62),
        (120, 74, 44), (92, 56, 34), (250, 210, 180)]
HAIR = [(20, 16, 14), (58, 38, 24), (104, 66, 36), (170, 120, 60), (222, 188, 110),
        (150, 60, 30), (190, 190, 190), (90, 90, 96)]
IRIS = [(60, 40, 25), (40, 90, 160), (60, 120, 70), (110, 80, 40), (70, 70, 80)]


def rng_for(kind, index, seed):
    return np.random.default_rng([seed, index, list(SIZES).index(kind)])


def jitter(color, r, amount=12):
    return tuple(int(np.clip(c + r.integers(-amount, amount + 1), 0, 255)) for c in color)


def shade(color, f):
    return tuple(int(np.clip(c * f, 0, 255)) for c in color)


def mix(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def vertical_gradient(size, top, bottom):
    t = np.linspace(0, 1, size)[:, None, None]
    col = np.array(top, float) * (1 - t) + np.array(bottom, float) * t
    return Image.fromarray(np.repeat(col, size, axis=1).astype(np.uint8))


def lighting(img, r, strength):
    """A soft light from a random direction: brighter on one side, darker on the other."""
    n = img.size[0]
    ang = r.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:n, 0:n] / n - 0.5
    ramp = 1 + strength * (x * math.cos(ang) + y * math.sin(ang))
    a = np.asarray(img, float) * ramp[:, :, None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- faces

def draw_face(r, n):
    s = n * SS
    bg_top = tuple(int(v) for v in r.integers(40, 230, 3))
    img = vertical_gradient(s, bg_top, shade(bg_top, r.uniform(0.6, 1.0)))
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))  # the subject: head, hair, neck, shoulders
    d = ImageDraw.Draw(layer)
    skin = jitter(SKIN[r.integers(len(SKIN))], r)
    hair = jitter(HAIR[r.integers(len(HAIR))], r, 8)
    cx = s * r.uniform(0.46, 0.54)
    cy = s * r.uniform(0.47, 0.55)
    hw = s * r.uniform(0.25, 0.33)      # half width of the head
    hh = hw * r.uniform(1.1, 1.4)       # half height
    style = r.choice(["short", "long", "bald", "bun", "curly"], p=[0.35, 0.3, 0.1, 0.1, 0.15])
    # Shoulders and neck.
    shirt = tuple(int(v) for v in r.integers(20, 240, 3))
    d.ellipse([cx - hw * 2.2, cy + hh * 1.05, cx + hw * 2.2, cy + hh * 3.2], fill=shirt)
    d.rectangle([cx - hw * 0.4, cy + hh * 0.6, cx + hw * 0.4, cy + hh * 1.25], fill=shade(skin, 0.85))
    if style == "long":
        d.rounded_rectangle([cx - hw * 1.2, cy - hh * 0.9, cx + hw * 1.2, cy + hh * r.uniform(0.9, 1.5)],
                            radius=hw * 0.6, fill=hair)
    # Ears, then the head.
    for side in (-1, 1):
        ex = cx + side * hw * 0.97
        d.ellipse([ex - hw * 0.16, cy - hh * 0.12, ex + hw * 0.16, cy + hh * 0.22], fill=shade(skin, 0.92))
    d.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=skin)
    # Hair on top.
    if style in ("short", "long"):
        d.chord([cx - hw * 1.05, cy - hh * 1.1, cx + hw * 1.05, cy + hh * r.uniform(0.1, 0.45)], 180, 360, fill=hair)
        if r.random() < 0.5:  # a fringe
            d.pieslice([cx - hw * 1.0, cy - hh * 0.95, cx + hw * 0.4, cy - hh * 0.1], 180, 330, fill=hair)
    elif style == "bun":
        d.chord([cx - hw * 1.02, cy - hh * 1.05, cx + hw * 1.02, cy - hh * 0.05], 180, 360, fill=hair)
        d.ellipse([cx - hw * 0.35, cy - hh * 1.45, cx + hw * 0.35, cy - hh * 0.85], fill=hair)
    elif style == "curly":
        for k in range(11):
            a = math.pi * (1.0 + k / 10)
            px, py = cx + hw * 0.95 * math.cos(a), cy - hh * 0.25 + hh * 0.8 * math.sin(a)
            rad = hw * r.uniform(0.25, 0.35)
            d.ellipse([px - rad, py - rad, px + rad, py + rad], fill=hair)
    # Eyes.
    ey = cy - hh * r.uniform(0.0, 0.15)
    ex = hw * r.uniform(0.36, 0.46)
    er = hw * r.uniform(0.12, 0.18)
    iris = IRIS[r.integers(len(IRIS))]
    look = r.uniform(-0.3, 0.3) * er
    closed = r.random() < 0.08
    for side in (-1, 1):
        x = cx + side * ex
        if closed:
            d.arc([x - er, ey - er * 0.6, x + er, ey + er * 0.6], 10, 170, fill=shade(skin, 0.4), width=SS * 2)
        else:
            d.ellipse([x - er, ey - er * 0.7, x + er, ey + er * 0.7], fill=(250, 250, 250))
            d.ellipse([x - er * 0.55 + look, ey - er * 0.55, x + er * 0.55 + look, ey + er * 0.55], fill=iris)
            d.ellipse([x - er * 0.25 + look, ey - er * 0.25, x + er * 0.25 + look, ey + er * 0.25], fill=(10, 10, 10))
        # Brows: angle gives the mood.
        tilt = r.uniform(-0.25, 0.25) * er
        by = ey - er * r.uniform(1.2, 1.7)
        d.line([x - er * 1.1, by + side * tilt, x + er * 1.1, by - side * tilt], fill=shade(hair, 0.8), width=SS * 2)
    # Nose.
    ny = cy + hh * r.uniform(0.15, 0.28)
    nw = hw * r.uniform(0.08, 0.15)
    d.polygon([(cx, ey + er * 0.5), (cx - nw, ny), (cx + nw, ny)], fill=shade(skin, 0.82))
    # Mouth: smile, neutral, open or frown.
    my = cy + hh * r.uniform(0.45, 0.58)
    mw = hw * r.uniform(0.3, 0.5)
    lips = mix(skin, (170, 40, 50), r.uniform(0.4, 0.8))
    mood = r.choice(["smile", "neutral", "open", "frown"], p=[0.4, 0.25, 0.2, 0.15])
    if mood == "smile":
        d.arc([cx - mw, my - mw * 0.6, cx + mw, my + mw * 0.5], 15, 165, fill=lips, width=SS * 2)
    elif mood == "neutral":
        d.line([cx - mw * 0.8, my, cx + mw * 0.8, my], fill=lips, width=SS * 2)
    elif mood == "open":
        d.ellipse([cx - mw * 0.55, my - mw * 0.3, cx + mw * 0.55, my + mw * 0.45], fill=(90, 20, 30), outline=lips, width=SS)
    else:
        d.arc([cx - mw, my, cx + mw, my + mw * 0.8], 200, 340, fill=lips, width=SS * 2)
    # Cheeks.
    if r.random() < 0.4:
        for side in (-1, 1):
            x, y, rr = cx + side * hw * 0.55, cy + hh * 0.3, hw * 0.14
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=mix(skin, (230, 110, 110), 0.35))
    img.paste(layer, (0, 0), layer)
    return lighting(img, r, r.uniform(0.1, 0.45)), layer.getchannel("A")


# ----------------------------------------------------------------------------- hands

POSES = {  # finger (index..little) extension in [0, 1] and spread in degrees; thumb out or in
    "open": ([1, 1, 1, 1], 12, True),
    "fist": ([0, 0, 0, 0], 0, False),
    "pointing": ([1, 0, 0, 0], 4, False),
    "peace": ([1, 1, 0, 0], 14, False),
    "waving": ([1, 1, 1, 1], 18, True),
}


def capsule(d, a, b, w, fill):
    d.line([a, b], fill=fill, width=int(w))
    for p in (a, b):
        d.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=fill)


def draw_hand(r, n):
    s = n * SS
    bg = tuple(int(v) for v in r.integers(30, 235, 3))
    img = vertical_gradient(s, bg, shade(bg, r.uniform(0.7, 1.1)))
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    skin = jitter(SKIN[r.integers(len(SKIN))], r)
    edge = shade(skin, 0.72)
    pose = r.choice(list(POSES), p=[0.3, 0.2, 0.2, 0.15, 0.15])
    ext, spread, thumb_out = POSES[pose]
    mirror = r.random() < 0.5  # left or right hand
    cx, cy = s * 0.5, s * 0.62
    pw, ph = s * r.uniform(0.2, 0.25), s * r.uniform(0.22, 0.27)  # palm half sizes
    fw = pw * r.uniform(0.36, 0.44)  # finger width
    lengths = [0.95, 1.05, 1.0, 0.78]
    # Wrist and a sleeve's cuff, cut straight below it (the subject ends there).
    sleeve = tuple(int(v) for v in r.integers(20, 240, 3))
    cut = cy + ph * r.uniform(1.6, 1.8)
    d.rectangle([cx - pw * 0.7, cy + ph * 0.6, cx + pw * 0.7, cut], fill=edge)
    d.rectangle([cx - pw * 0.66, cy + ph * 0.6, cx + pw * 0.66, cut], fill=skin)
    d.rectangle([cx - pw * 0.9, cy + ph * 1.35, cx + pw * 0.9, cut], fill=sleeve)
    fingers = []
    for i in range(4):
        base_x = cx - pw * 0.75 + i * pw * 0.5
        base_y = cy - ph * 0.75
        ang = math.radians(-90 + (i - 1.5) * spread + r.uniform(-3, 3))
        length = ph * 1.5 * lengths[i] * r.uniform(0.92, 1.08)
        if ext[i]:
            tip = (base_x + math.cos(ang) * length, base_y + math.sin(ang) * length)
        else:  # curled: a short knuckle over the palm
            tip = (base_x, base_y + ph * 0.25)
        fingers.append(((base_x, base_y), tip))
    # Thumb.
    tb = (cx + pw * 0.8, cy + ph * 0.2)
    if thumb_out:
        ta = math.radians(-35 + r.uniform(-10, 10))
        tt = (tb[0] + math.cos(ta) * ph * 1.1, tb[1] + math.sin(ta) * ph * 1.1)
    else:
        tt = (cx + pw * 0.05, cy - ph * 0.1)
    for a, b in fingers + [(tb, tt)]:
        capsule(d, a, b, fw * 1.18, edge)
    d.rounded_rectangle([cx - pw - SS, cy - ph - SS, cx + pw + SS, cy + ph + SS], radius=pw * 0.5, fill=edge)
    for a, b in fingers + [(tb, tt)]:
        capsule(d, a, b, fw, skin)
    d.rounded_rectangle([cx - pw, cy - ph, cx + pw, cy + ph], radius=pw * 0.5, fill=skin)
    # Knuckle creases and nails.
    for (a, b), e in zip(fingers, ext):
        if e:
            mid = ((a[0] * 0.45 + b[0] * 0.55), (a[1] * 0.45 + b[1] * 0.55))
            d.line([mid[0] - fw * 0.3, mid[1], mid[0] + fw * 0.3, mid[1]], fill=edge, width=SS)
            d.ellipse([b[0] - fw * 0.28, b[1] - fw * 0.3, b[0] + fw * 0.28, b[1] + fw * 0.22], fill=mix(skin, (255, 235, 235), 0.5))
        else:
            d.arc([a[0] - fw * 0.5, b[1] - fw * 0.5, a[0] + fw * 0.5, b[1] + fw * 0.5], 180, 360, fill=edge, width=SS)
    d.arc([cx - pw * 0.6, cy - ph * 0.2, cx + pw * 0.9, cy + ph * 0.9], 200, 280, fill=edge, width=SS)
    if mirror:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    if pose == "waving" or r.random() < 0.7:
        layer = layer.rotate(r.uniform(-30, 30), resample=Image.BICUBIC, center=(s / 2, s * 0.6))
    img.paste(layer, (0, 0), layer)
    return lighting(img, r, r.uniform(0.1, 0.4)), layer.getchannel("A")


# ----------------------------------------------------------------------------- landscapes

SKIES = {  # time of day -> (top, horizon, light colour, light is the sun)
    "day": ((60, 120, 210), (170, 210, 240), (255, 250, 220), True),
    "morning": ((110, 150, 210), (250, 200, 160), (255, 235, 180), True),
    "sunset": ((70, 50, 120), (250, 140, 70), (255, 200, 120), True),
    "night": ((8, 12, 40), (40, 50, 90), (235, 235, 215), False),
}


def ridge(r, width, rough, octaves=6):
    """A 1-D fractal profile in [-1, 1] by midpoint displacement (`rough` in (0, 1))."""
    n = 2 ** octaves + 1
    h = np.zeros(n)
    h[0], h[-1] = r.uniform(-1, 1, 2)
    step, amp = n - 1, 1.0
    while step > 1:
        half = step // 2
        for i in range(half, n - 1, step):
            h[i] = (h[i - half] + h[i + half]) / 2 + r.uniform(-amp, amp)
        step, amp = half, amp * rough
    h /= max(1e-6, np.abs(h).max())
    return np.interp(np.linspace(0, n - 1, width), np.arange(n), h)


def draw_landscape(r, n):
    s = n * SS
    tod = r.choice(list(SKIES), p=[0.4, 0.2, 0.25, 0.15])
    top, horizon, light, is_sun = SKIES[tod]
    top, horizon = jitter(top, r, 15), jitter(horizon, r, 15)
    img = vertical_gradient(s, top, horizon)
    d = ImageDraw.Draw(img)
    haze = horizon
    if tod == "night":
        for _ in range(r.integers(20, 60)):
            x, y = r.uniform(0, s), r.uniform(0, s * 0.6)
            v = int(r.uniform(150, 255))
            d.point([(x, y)], fill=(v, v, v))
    # Sun or moon with a glow.
    lx, ly = r.uniform(0.15, 0.85) * s, r.uniform(0.1, 0.45) * s
    lr = s * r.uniform(0.04, 0.07)
    glow = Image.new("L", (s, s), 0)
    ImageDraw.Draw(glow).ellipse([lx - lr * 3, ly - lr * 3, lx + lr * 3, ly + lr * 3], fill=90 if is_sun else 40)
    glow = glow.filter(ImageFilter.GaussianBlur(lr * 1.5))
    img = Image.composite(Image.new("RGB", (s, s), light), img, glow)
    d = ImageDraw.Draw(img)
    d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=light)
    if not is_sun:  # a crescent: the sky's colour bites the moon
        off = lr * 0.5
        d.ellipse([lx - lr + off, ly - lr - off * 0.3, lx + lr + off, ly + lr - off * 0.3], fill=mix(top, horizon, ly / s))
    # Clouds.
    clouds = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    cd = ImageDraw.Draw(clouds)
    ccol = mix((255, 255, 255), horizon, 0.35 if tod != "day" else 0.05)
    if tod == "night":
        ccol = (70, 75, 100)
    for _ in range(r.integers(0, 5)):
        x, y, w = r.uniform(0, s), r.uniform(0.05, 0.4) * s, r.uniform(0.08, 0.2) * s
        for _ in range(r.integers(3, 7)):
            px, py, pr = x + r.uniform(-w, w), y + r.uniform(-w * 0.2, w * 0.2), w * r.uniform(0.25, 0.5)
            cd.ellipse([px - pr, py - pr * 0.6, px + pr, py + pr * 0.6], fill=ccol + (220,))
    clouds = clouds.filter(ImageFilter.GaussianBlur(SS * 1.5))
    img.paste(clouds, (0, 0), clouds)
    d = ImageDraw.Draw(img)
    # Mountain ridges, far to near, fading into the haze.
    water_line = s * r.uniform(0.68, 0.8) if r.random() < 0.5 else s * 1.01
    base_col = jitter((90, 100, 120), r, 20) if r.random() < 0.5 else jitter((80, 110, 80), r, 20)
    layers = r.integers(2, 4)
    xs = np.arange(s + 1)
    for k in range(layers):
        depth = (k + 1) / layers
        level = s * (0.45 + 0.22 * depth) + r.uniform(-0.05, 0.05) * s
        amp = s * r.uniform(0.06, 0.18) * (1.2 - depth * 0.5)
        prof = level - amp * ridge(r, s + 1, r.uniform(0.45, 0.65))
        col = mix(haze, shade(base_col, 0.5 + 0.5 * depth), 0.35 + 0.65 * depth)
        if tod == "night":
            col = shade(col, 0.45)
        d.polygon(list(zip(xs, prof)) + [(s, s), (0, s)], fill=col)
        if k == 0 and r.random() < 0.4:  # snow caps on the far range
            cap = prof + amp * 0.25
            d.polygon(list(zip(xs, prof)) + list(zip(xs[::-1], np.minimum(cap, level)[::-1])), fill=mix(col, (245, 245, 250), 0.7))
    # Hills with trees.
    hill_top = min(water_line, s * 0.98) - s * r.uniform(0.02, 0.12)
    hprof = hill_top - s * 0.05 * ridge(r, s + 1, 0.4, 4)
    green = jitter((60, 120, 50), r, 25)
    if tod == "night":
        green = shade(green, 0.4)
    if water_line > s:
        d.polygon(list(zip(xs, hprof)) + [(s, s), (0, s)], fill=green)
        for _ in range(r.integers(0, 12)):
            tx = r.uniform(0, s)
            ty = np.interp(tx, xs, hprof) + r.uniform(0, s * 0.05)
            th = s * r.uniform(0.04, 0.09)
            tc = shade(green, r.uniform(0.5, 0.8))
            if r.random() < 0.6:
                d.polygon([(tx, ty - th), (tx - th * 0.35, ty), (tx + th * 0.35, ty)], fill=tc)
            else:
                d.ellipse([tx - th * 0.3, ty - th * 0.8, tx + th * 0.3, ty], fill=tc)
    else:
        # Water: the scene above mirrored, darkened and tinted.
        wl = int(water_line)
        above = img.crop((0, max(0, 2 * wl - s), s, wl)).transpose(Image.FLIP_TOP_BOTTOM)
        tint = Image.new("RGB", above.size, jitter((30, 60, 90), r, 15))
        refl = Image.blend(above, tint, 0.45).filter(ImageFilter.GaussianBlur(SS))
        img.paste(refl, (0, wl))
        d = ImageDraw.Draw(img)
        for _ in range(r.integers(5, 15)):
            y = r.uniform(wl + 2, s)
            x = r.uniform(0, s)
            d.line([x, y, x + r.uniform(5, 20) * SS, y], fill=mix(light, horizon, 0.5), width=1)
    return img, None


DRAW = {"face": draw_face, "hand": draw_hand, "background": draw_landscape}


def has_alpha(kind):
    """Faces and hands have a subject in front of a backdrop; landscapes are all backdrop."""
    return kind in ("face", "hand")


def sample(kind, index, seed=0, size=None, alpha=False):
    """One picture as uint8 [H, W, 3]; `size` overrides the kind's default resolution. With
    `alpha`, [H, W, 4]: the fourth channel is the subject's coverage of each pixel (the mean of
    the supersampled pixels it covers, so edges are antialiased), 255 everywhere for kinds
    without a subject."""
    n = size or SIZES[kind]
    img, cover = DRAW[kind](rng_for(kind, index, seed), n)
    rgb = np.asarray(img.resize((n, n), Image.LANCZOS), dtype=np.uint8)
    if not alpha:
        return rgb
    a = np.full((n, n), 255, np.uint8) if cover is None else np.asarray(cover.resize((n, n), Image.BOX), dtype=np.uint8)
    return np.concatenate([rgb, a[:, :, None]], axis=2)


def _cache_chunk(args):
    kind, start, stop, seed, size, alpha = args
    return np.stack([sample(kind, i, seed, size, alpha) for i in range(start, stop)])


def make_cache(kind, count, seed=0, size=None, workers=None, alpha=False):
    """`count` samples [N, H, W, 3] (4 with `alpha`), drawn in parallel processes."""
    from multiprocessing import Pool
    workers = workers or os.cpu_count() or 1
    step = max(1, min(500, count // (workers * 4) or 1))
    jobs = [(kind, a, min(count, a + step), seed, size, alpha) for a in range(0, count, step)]
    if workers == 1 or len(jobs) == 1:
        return np.concatenate([_cache_chunk(j) for j in jobs])
    with Pool(workers) as pool:
        return np.concatenate(pool.map(_cache_chunk, jobs))


def grid(images, cols):
    n, h, w, c = images.shape
    rows = (n + cols - 1) // cols
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, im in enumerate(images):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid")
    g.add_argument("kind", choices=list(SIZES))
    g.add_argument("--count", type=int, default=16)
    g.add_argument("--cols", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int)
    g.add_argument("-o", "--out", required=True)
    c = sub.add_parser("cache")
    c.add_argument("kind", choices=list(SIZES))
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--size", type=int)
    c.add_argument("--alpha", action="store_true", help="a fourth channel: the subject's coverage")
    c.add_argument("-o", "--out", required=True)
    g.add_argument("--alpha", action="store_true", help="RGBA: the subject's coverage as alpha")
    a = p.parse_args()
    if a.cmd == "grid":
        imgs = np.stack([sample(a.kind, i, a.seed, a.size, a.alpha) for i in range(a.count)])
        Image.fromarray(grid(imgs, a.cols)).save(a.out)
    else:
        np.save(a.out, make_cache(a.kind, a.count, a.seed, a.size, alpha=a.alpha))


if __name__ == "__main__":
    main()
