#!/usr/bin/env python3
"""A small detector of the demo experts' faces and hands, trained on procedural scenes.

A scene is a procedural landscape (128 px) with 1 to 4 faces and hands (procgen.py's, cut out
by their alpha) pasted at random places, sizes (18 to 60 px) and rotations (up to 30 degrees
either way), overlapping little; a subject's box is its alpha's bounding box as pasted. The
network is CenterNet's idea at toy size: strided convolutions down to a grid of 4-pixel cells,
where each cell predicts, per class, whether a box's centre falls in it (a heatmap trained
with the focal loss on Gaussian-splatted centres) and the box's width and height (L1 at the
centres). It is exported by mixgan's detector contract (docs/models.md), decoding included:
peaks of the heatmap by 3 x 3 max-pooling, the best 32, each with its cell's size.

Sub-commands:
  train  --out DIR [--minutes 8] [--pool 400]: trains, writes DIR/detector.pt and model.toml
  eval   --model DIR/detector.pt [--scenes 200] [--seed 1000] [--dump DIR]: recall and false
         detections at IoU 0.5 on held-out scenes (pools drawn with another seed); --dump
         writes the scenes as PNGs with their boxes (boxes.json) for other checkers
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procgen  # noqa: E402

SIDE = 128
STRIDE = 4
CLASSES = ["face", "hand"]
MIN_SCORE = 0.5  # the layouts' default min_score


class Pools:
    """Pictures drawn once and reused: landscapes, and faces and hands with alpha."""

    def __init__(self, count, seed):
        self.background = procgen.make_cache("background", count, seed=seed)
        self.subjects = [procgen.make_cache(k, count, seed=seed, alpha=True) for k in CLASSES]


def iou(a, b):
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(ix, 0) * max(iy, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def scene(pools, r):
    """One scene: uint8 [128, 128, 3] and its boxes [[x, y, w, h, class], ...]."""
    img = Image.fromarray(pools.background[r.integers(len(pools.background))]).convert("RGBA")
    boxes = []
    for _ in range(int(r.integers(1, 5))):
        cls = int(r.integers(len(CLASSES)))
        pool = pools.subjects[cls]
        sub = Image.fromarray(pool[r.integers(len(pool))], "RGBA")
        size = int(r.integers(18, 61))
        sub = sub.resize((size, size), Image.LANCZOS).rotate(float(r.uniform(-30, 30)), Image.BICUBIC, expand=True)
        alpha = np.asarray(sub)[:, :, 3] > 127
        ys, xs = np.nonzero(alpha)
        if len(xs) == 0:
            continue
        for _ in range(10):
            x = int(r.integers(-xs.min(), SIDE - xs.max()))
            y = int(r.integers(-ys.min(), SIDE - ys.max()))
            box = [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if all(iou(box, b) < 0.2 for b in boxes):
                img.alpha_composite(sub, (x, y))
                boxes.append(box + [cls])
                break
    return np.asarray(img.convert("RGB")), boxes


class Net(torch.nn.Module):
    def __init__(self, classes=len(CLASSES)):
        super().__init__()

        def block(i, o, s=1):
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, s, 1), torch.nn.BatchNorm2d(o), torch.nn.ReLU())

        self.down = torch.nn.Sequential(block(3, 24, 2), block(24, 32, 2), block(32, 48), block(48, 48))  # /4
        self.deep = torch.nn.Sequential(block(48, 64, 2), block(64, 64), block(64, 64, 2), block(64, 64))  # /16
        self.fuse = torch.nn.Sequential(block(48 + 64, 64), block(64, 64))
        self.heat = torch.nn.Conv2d(64, classes, 1)
        self.size = torch.nn.Conv2d(64, 2, 1)
        torch.nn.init.constant_(self.heat.bias, -2.19)  # CenterNet's prior of 0.1

    def forward(self, x):
        f = self.down(x)
        d = F.interpolate(self.deep(f), size=f.shape[2:], mode="bilinear", align_corners=False)
        f = self.fuse(torch.cat([f, d], 1))
        return self.heat(f), self.size(f)


class Contract(torch.nn.Module):
    """mixgan's detector contract: [1, 3, H, W] in [0, 1] -> boxes [N, 4] (x, y, w, h),
    scores [N], classes [N]."""

    def __init__(self, net):
        super().__init__()
        self.net = net.eval()

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2], x.shape[3]
        x = F.pad(x, [0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16])
        heat, size = self.net(x * 2 - 1)
        heat = torch.sigmoid(heat)
        peaks = heat * (heat == F.max_pool2d(heat, 3, 1, 1)).float()
        classes, gh, gw = peaks.shape[1], peaks.shape[2], peaks.shape[3]
        scores, idx = peaks.flatten().topk(min(32, peaks.numel()))
        cls = torch.div(idx, gh * gw, rounding_mode="floor")
        cell = idx % (gh * gw)
        cy = torch.div(cell, gw, rounding_mode="floor")
        cx = cell % gw
        sizes = size[0].flatten(1)[:, cell].t() * 32.0
        bw, bh = sizes[:, 0].clamp(min=1.0), sizes[:, 1].clamp(min=1.0)
        centre_x = (cx.float() + 0.5) * 4.0
        centre_y = (cy.float() + 0.5) * 4.0
        boxes = torch.stack([centre_x - bw / 2, centre_y - bh / 2, bw, bh], 1)
        keep = scores > 0.05
        return boxes[keep], scores[keep], cls[keep]


def targets(boxes, classes):
    g = SIDE // STRIDE
    heat = np.zeros((classes, g, g), np.float32)
    size = np.zeros((2, g, g), np.float32)
    mask = np.zeros((g, g), np.float32)
    ys, xs = np.mgrid[0:g, 0:g]
    for x, y, w, h, c in boxes:
        cx, cy = (x + w / 2) / STRIDE - 0.5, (y + h / 2) / STRIDE - 0.5
        sigma = max(0.5, min(w, h) / STRIDE / 6)
        heat[c] = np.maximum(heat[c], np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))
        i, j = int(round(cy)), int(round(cx))
        heat[c, i, j] = 1.0
        size[:, i, j] = (w / 32.0, h / 32.0)
        mask[i, j] = 1.0
    return heat, size, mask


def batch(pools, r, n):
    imgs, heats, sizes, masks = [], [], [], []
    for _ in range(n):
        img, boxes = scene(pools, r)
        heat, size, mask = targets(boxes, len(CLASSES))
        imgs.append(img)
        heats.append(heat)
        sizes.append(size)
        masks.append(mask)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(np.stack(heats)), torch.from_numpy(np.stack(sizes)), torch.from_numpy(np.stack(masks))


def loss_of(net, x, heat_t, size_t, mask):
    heat, size = net(x)
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    pos = (heat_t == 1).float()
    neg = (1 - heat_t) ** 4
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * neg * p**2 * torch.log(1 - p)).sum()
    n = pos.sum().clamp(min=1)
    l1 = (torch.abs(size - size_t) * mask[:, None]).sum() / mask.sum().clamp(min=1)
    return focal / n + l1


def train(a):
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"drawing pools of {a.pool} pictures per kind", flush=True)
    pools = Pools(a.pool, seed=0)
    r = np.random.default_rng(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    started, step = time.time(), 0
    budget = a.minutes * 60
    while time.time() - started < budget:
        frac = (time.time() - started) / budget
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (0.5 + 0.5 * math.cos(math.pi * frac))
        x, heat, size, mask = batch(pools, r, a.batch)
        loss = loss_of(net, x, heat, size, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}, {time.time() - started:.0f} s, loss {loss.item():.3f}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    scripted = torch.jit.script(Contract(net))
    scripted.save(os.path.join(a.out, "detector.pt"))
    with open(os.path.join(a.out, "model.toml"), "w") as f:
        f.write(
            "# Faces and hands of the demo experts, trained by tools/train_detector.py on procedural scenes\n"
            f"# ({step} steps of {a.batch} scenes, {a.minutes} minutes on the CPU).\n"
            'name = "scene-detector"\nkind = "detector"\nclasses = ["face", "hand"]\n\n'
            '[detector]\nformat = "torchscript"\nfile = "detector.pt"\ninput_size = 128\n'
        )
    print(f"wrote {a.out}/detector.pt after {step} steps", flush=True)


def evaluate(a):
    module = torch.jit.load(a.model).eval()
    pools = Pools(max(100, a.scenes), seed=a.seed)
    r = np.random.default_rng(a.seed)
    truth = found = matched = false = 0
    dump = []
    for k in range(a.scenes):
        img, boxes = scene(pools, r)
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            Image.fromarray(img).save(os.path.join(a.dump, f"scene{k:04d}.png"))
            dump.append({"file": f"scene{k:04d}.png", "boxes": boxes})
        with torch.no_grad():
            x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
            b, s, c = module(x)
        dets = [(b[i].tolist(), int(c[i])) for i in range(len(s)) if float(s[i]) >= MIN_SCORE]
        used = set()
        for det, cls in dets:
            best = max((j for j in range(len(boxes)) if j not in used and boxes[j][4] == cls),
                       key=lambda j: iou(det, boxes[j]), default=None)
            if best is not None and iou(det, boxes[best]) >= 0.5:
                used.add(best)
                matched += 1
            else:
                false += 1
        truth += len(boxes)
        found += len(dets)
    if a.dump:
        with open(os.path.join(a.dump, "boxes.json"), "w") as f:
            json.dump(dump, f)
    recall = matched / max(truth, 1)
    false_rate = false / max(found, 1)
    print(f"{a.scenes} scenes, {truth} faces and hands: found {matched} at IoU 0.5 (recall {recall:.3f}); "
          f"{found} detections at score {MIN_SCORE}, {false} false ({false_rate:.3f})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=8)
    t.add_argument("--pool", type=int, default=400)
    t.add_argument("--batch", type=int, default=32)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--scenes", type=int, default=200)
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--dump")
    a = p.parse_args()
    train(a) if a.cmd == "train" else evaluate(a)


if __name__ == "__main__":
    main()
