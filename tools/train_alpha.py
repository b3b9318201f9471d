#!/usr/bin/env python3
"""Teaches a trained RGB expert to draw its own alpha, without a GPU.

The full recipe for an RGBA expert is `train_stylegan2.py` (four channels from the start, the
discriminator seeing all four), which needs a GPU to get far. This is the CPU route for an
expert that is already trained in RGB: its colour stays exactly as it is, and only the alpha
row of each toRGB layer (a modulated 1x1 convolution of that block's features) is learned.

1. A small matting network (a U-Net) learns coverage from the procedural pictures, whose
   exact coverage `procgen.py` knows (supervised, with blur and noise so that it also reads
   the generator's softer pictures).
2. The generator's pictures (random z, truncation 0.5 to 1, constant noise, as the service
   draws them) are labelled by that network, and the alpha rows are fitted to the labels:
   squared error, with no penalty beyond full or no coverage (NVIDIA's uint8 conversion
   clamps there), so backdrop pixels are pushed to exactly zero.

The result is a model directory whose fourth channel is alpha (`alpha = true`): the generator
itself draws the matte; the matting network is only its teacher and is not exported.

  train_alpha.py --kind face --model models/face --out models/face --minutes 20
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procgen  # noqa: E402
import sg2_reference as ref  # noqa: E402
import train_stylegan2 as trainer  # noqa: E402


# ----------------------------------------------------------------------------- the teacher

def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class Matter(nn.Module):
    """RGB in [-1, 1] to coverage logits, a four-level U-Net."""

    def __init__(self, width=24):
        super().__init__()
        c = [width, width * 2, width * 3, width * 4]
        self.down = nn.ModuleList([block(3, c[0]), block(c[0], c[1]), block(c[1], c[2]), block(c[2], c[3])])
        self.up = nn.ModuleList([block(c[3] + c[2], c[2]), block(c[2] + c[1], c[1]), block(c[1] + c[0], c[0])])
        self.out = nn.Conv2d(c[0], 1, 1)

    def forward(self, x):
        skips = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for u, skip in zip(self.up, reversed(skips[:-1])):
            x = u(torch.cat([F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), skip], 1))
        return self.out(x)


def degrade(x, g):
    """Blur (sigma up to 1 px) and noise, so the teacher also reads softer, noisier pictures."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.0
    out = []
    for i in range(n):
        s = float(sigma[i])
        if s < 0.2:
            out.append(x[i])
            continue
        r = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-r ** 2 / (2 * s * s))
        k = k / k.sum()
        y = F.conv2d(F.pad(x[i:i + 1], (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
        out.append(y[0])
    x = torch.stack(out)
    return x + torch.randn(x.shape, generator=g) * 0.03 * torch.rand(n, 1, 1, 1, generator=g)


def train_teacher(a, data, held):
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    net = Matter()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    started = time.time()
    step = 0
    while time.time() - started < a.teacher_minutes * 60:
        idx = torch.randint(0, data.shape[0], (a.batch,), generator=g)
        batch = data[idx].float() / 127.5 - 1
        if a.kind != "hand":
            flip = torch.rand(a.batch, 1, 1, 1, generator=g) < 0.5
            batch = torch.where(flip, batch.flip(3), batch)
        rgb, cover = degrade(batch[:, :3], g), (batch[:, 3:] + 1) / 2
        loss = F.binary_cross_entropy_with_logits(net(rgb), cover)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"teacher step {step} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
    net.eval()
    with torch.no_grad():
        x = held.float() / 127.5 - 1
        pred = torch.sigmoid(net(x[:, :3]))
        truth = (x[:, 3:] + 1) / 2
    err = (pred - truth).abs().mean().item() * 255
    print(f"teacher: {step} steps; on {held.shape[0]} held-out pictures the coverage is off by "
          f"{err:.2f} levels on average, IoU {iou(pred, truth):.3f}", flush=True)
    return net


def iou(a, b):
    a, b = a > 0.5, b > 0.5
    return ((a & b).sum() / (a | b).sum().clamp_min(1)).item()


# ----------------------------------------------------------------------------- the student

def units(coverage):
    """Coverage in [0, 1] to generator units (the inverse of NVIDIA's uint8 conversion)."""
    return (coverage * 255 - 128) / 127.5


def fit_alpha(a, s, sd, teacher):
    """Fits the alpha rows of the toRGB layers to the teacher's coverage of G's pictures."""
    g = torch.Generator().manual_seed(a.seed + 1)
    rows = [k for k in sd if k.endswith((".torgb.weight", ".torgb.bias"))]
    for k in sd:
        sd[k].requires_grad_(k in rows)
    opt = torch.optim.Adam([sd[k] for k in rows], lr=a.lr)
    started = time.time()
    step = 0

    def batch(n, gen):
        z = torch.randn(n, s.z_dim, generator=gen)
        psi = torch.rand(n, 1, 1, generator=gen) * 0.5 + 0.5
        with torch.no_grad():
            ws = ref.mapping(s, sd, z, torch.zeros(n, 0))
            ws = sd["mapping.w_avg"] + (ws - sd["mapping.w_avg"]) * psi
        return ws

    while time.time() - started < a.minutes * 60:
        ws = batch(a.batch, g)
        img = trainer.synthesis(s, sd, ws, "const")
        with torch.no_grad():
            target = units(torch.sigmoid(teacher(img[:, :3].clamp(-1, 1))))
            cover = (target * 127.5 + 128) / 255
        pred = img[:, 3:]
        # No penalty past full or no coverage: the uint8 conversion clamps there.
        err = torch.where(cover < 0.02, F.relu(pred - target), torch.where(cover > 0.98, F.relu(target - pred),
                                                                             pred - target))
        loss = err.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for k in rows:
            sd[k].grad[:3] = 0  # the colour stays the expert's own
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"alpha step {step} loss {loss.item():.5f} {time.time() - started:.0f}s", flush=True)
    for k in sd:
        sd[k].requires_grad_(False)
    with torch.no_grad():
        ws = batch(64, torch.Generator().manual_seed(12345))
        img = trainer.synthesis(s, sd, ws, "const")
        want = torch.sigmoid(teacher(img[:, :3].clamp(-1, 1)))
        got = ((img[:, 3:] * 127.5 + 128) / 255).clamp(0, 1)
    err = (got - want).abs().mean().item() * 255
    print(f"alpha: {step} steps; on 64 held-out seeds the drawn alpha is off the teacher's by {err:.2f} "
          f"levels on average, IoU {iou(got, want):.3f}", flush=True)
    return sd


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["face", "hand"], required=True)
    p.add_argument("--model", required=True, help="the trained RGB model directory")
    p.add_argument("--out", required=True, help="the RGBA model directory to write")
    p.add_argument("--minutes", type=float, default=10, help="fitting the alpha rows")
    p.add_argument("--teacher-minutes", type=float, default=8)
    p.add_argument("--data-size", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="also write 16 samples (over a checkerboard, alpha beside) here")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    spec = read_toml(a.model)
    s_rgb = ref.Settings(spec["generator"])
    if s_rgb.img_channels != 3:
        raise SystemExit(f"{a.model}: img_channels is {s_rgb.img_channels}; this grows a 3-channel model")
    res = s_rgb.res
    print(f"drawing {a.data_size} {a.kind} pictures with their coverage ...", flush=True)
    data = torch.from_numpy(procgen.make_cache(a.kind, a.data_size + 256, a.seed, res, alpha=True)).permute(0, 3, 1, 2)
    data, held = data[:-256].contiguous(), data[-256:].contiguous()
    teacher = train_teacher(a, data, held)
    gen = dict(spec["generator"], img_channels=4)
    s = ref.Settings(gen)
    sd = trainer.init_from(s, {k: v.float() for k, v in ref.random_state_dict(s, 0).items()}, a.model)
    sd = fit_alpha(a, s, sd, teacher)
    sd = {k: v.detach() for k, v in sd.items()}
    with torch.no_grad():
        z = torch.cat([ref.legacy_z(seed, s.z_dim) for seed in (0, 1)]).float()
        ws = ref.mapping(s, sd, z, torch.zeros(2, 0))
        diff = (trainer.synthesis(s, sd, ws, "const") - ref.synthesis(s, sd, ws, "const")).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"the training graph and the reference differ by {diff}; not exporting")
    ref.write_model_dir(a.out, spec["name"], spec["classes"], gen, sd, spec.get("defaults"), alpha=True)
    if a.grid:
        trainer.sample_grid(s, sd, a.grid, torch.device("cpu"), spec.get("defaults", {}).get("trunc", 0.7))
    print(json.dumps({"kind": a.kind, "model": a.out, "seconds": round(time.time() - t0, 1)}), flush=True)


def read_toml(model_dir):
    import tomllib
    with open(os.path.join(model_dir, "model.toml"), "rb") as fh:
        return tomllib.load(fh)


if __name__ == "__main__":
    main()
