#!/usr/bin/env python3
"""Trains a StyleGAN2 generator on mixgan's procedural pictures and exports a model directory.

The generator is the math of `sg2_reference.py` on a dictionary of tensors under the names of
NVIDIA's `G_ema.state_dict()`, so the export is that dictionary as it stands and mixgan's
native generator loads it unchanged. The training follows the StyleGAN2 recipe: the
non-saturating logistic loss, lazy R1 regularisation of the discriminator, style-mixing
regularisation, an exponential moving average of G (`G_ema`, which is what is exported) and
`w_avg` tracked as a moving average of W during training. Mixed precision (bfloat16 autocast)
is used on CUDA; CPU runs in float32. Snapshots (the full training state) make a run
resumable with `--resume`.

  train_stylegan2.py --kind face --out models/face --minutes 7
"""
import argparse
import json
import math
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

BUFFERS = ("noise_const", "resample_filter", "w_avg")


# ----------------------------------------------------------------------------- generator

def init_generator(s, seed):
    """NVIDIA's initial values under G's names: unit normal weights (scaled at run time),
    zero biases except the affine layers' (one), zero noise strengths, zero w_avg."""
    sd = ref.random_state_dict(s, seed)
    g = torch.Generator().manual_seed(seed)
    for name, t in sd.items():
        if name.endswith(("resample_filter", "noise_const")):
            continue
        if name.endswith("affine.bias"):
            sd[name] = torch.ones_like(t)
        elif name.endswith(("bias", "noise_strength", "w_avg")):
            sd[name] = torch.zeros_like(t)
        elif name.startswith("mapping.fc") and name.endswith("weight"):
            sd[name] = torch.randn(t.shape, generator=g) / s.map["lr_multiplier"]
        else:
            sd[name] = torch.randn(t.shape, generator=g)
    return sd


def mod_layer(s, sd, p, x, w, up, gain, noise):
    """A styled conv layer, not fused: modulate the input, convolve with the shared weight,
    demodulate the output. The same math as the reference's fused form, and fast to train."""
    weight = sd[f"{p}.weight"]
    styles = ref.dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"])
    k = weight.shape[-1]
    x = x * styles[:, :, None, None].to(x.dtype)
    if up > 1:
        # Transposed convolution, then the FIR filter (NVIDIA's route; the reference takes
        # zero insertion, and `export` checks that the two agree).
        f = sd[f"{p}.resample_filter"]
        taps = f.shape[0]
        x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
        pad = (taps - 2 - (k - 1)) // 2 + 1, (taps - 2 - (k - 1) + 1) // 2 + 1
        x = ref.fir(x, f.to(x.dtype), pad=(pad[0], pad[1]), gain=4.0)
    else:
        x = F.conv2d(x, weight.to(x.dtype), padding=k // 2)
    dcoefs = torch.rsqrt((weight[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8)
    x = x * dcoefs[:, :, None, None].to(x.dtype)
    if s.syn["use_noise"] and noise != "none":
        strength = sd[f"{p}.noise_strength"]
        if noise == "const":
            x = x + sd[f"{p}.noise_const"] * strength
        else:
            x = x + torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype) * strength
    clamp = s.syn["conv_clamp"]
    return ref.bias_act(x.float(), sd[f"{p}.bias"], s.syn["activation"], gain, None if clamp is None else clamp * gain)


def rgb_layer(s, sd, p, x, w):
    weight = sd[f"{p}.weight"]
    styles = ref.dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"]) / math.sqrt(weight.shape[1])
    y = F.conv2d(x * styles[:, :, None, None], weight)
    return ref.bias_act(y, sd[f"{p}.bias"], "linear", 1.0, s.syn["conv_clamp"])


def synthesis(s, sd, ws, noise="random"):
    return ref.run_blocks(s, sd, ws, lambda p, x, w, up, gain: mod_layer(s, sd, p, x, w, up, gain, noise),
                          lambda p, x, w: rgb_layer(s, sd, p, x, w))


def generate(s, sd, z, mixing=0.0, noise="random", track_w_avg=None):
    """Images for `z`; with probability `mixing` a second latent takes over the later layers.
    `track_w_avg` (a beta) moves `mapping.w_avg` towards this batch's mean W, as NVIDIA does."""
    c = torch.zeros(z.shape[0], s.c_dim, device=z.device)
    ws = ref.mapping(s, sd, z, c)
    if track_w_avg is not None:
        with torch.no_grad():
            avg = sd["mapping.w_avg"]
            avg.copy_(ws[:, 0].detach().float().mean(0).lerp(avg, track_w_avg))
    if mixing > 0 and torch.rand(()) < mixing:
        cutoff = int(torch.randint(1, s.num_ws, ()))
        ws2 = ref.mapping(s, sd, torch.randn_like(z), c)
        ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
    return synthesis(s, sd, ws, noise)


# ----------------------------------------------------------------------------- discriminator

class EqConv(nn.Module):
    """Convolution with the equalised learning rate (weights scaled by 1/sqrt(fan-in) at run time)."""

    def __init__(self, cin, cout, k, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * k * k)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)


class EqLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class DBlock(nn.Module):
    """Residual block: two 3x3 convs and a 2x average-pool, with a pooled 1x1 skip."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv0, self.conv1, self.skip = EqConv(cin, cin, 3), EqConv(cin, cout, 3), EqConv(cin, cout, 1, bias=False)

    def forward(self, x):
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    def __init__(self, s):
        super().__init__()
        ch = s.channels
        self.fromrgb = EqConv(s.img_channels, ch(s.res), 1)
        self.blocks = nn.ModuleList(DBlock(ch(r), ch(r // 2)) for r in reversed(s.resolutions) if r > 4)
        c4 = ch(4)
        self.conv = EqConv(c4 + 1, c4, 3)
        self.fc = EqLinear(c4 * 16, c4)
        self.out = EqLinear(c4, 1)

    def forward(self, img):
        x = lrelu(self.fromrgb(img))
        for b in self.blocks:
            x = b(x)
        # Minibatch standard deviation over groups of up to four, one feature map.
        n, c, h, w = x.shape
        g = min(4, n) if n % min(4, n) == 0 else 1
        y = x.float().reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([1, 2, 3])
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        x = lrelu(self.conv(torch.cat([x, y], 1)))
        return self.out(lrelu(self.fc(x.flatten(1))))


# ----------------------------------------------------------------------------- training

def gen_settings(a):
    return {"z_dim": a.z_dim, "c_dim": 0, "w_dim": a.w_dim, "img_resolution": a.res,
            "img_channels": 4 if a.alpha else 3,
            "mapping_kwargs": {"num_layers": a.map_layers},
            "synthesis_kwargs": {"channel_base": a.channel_base, "channel_max": a.channel_max,
                                 "architecture": a.architecture, "conv_clamp": 256}}


def load_data(a, device):
    """The dataset as uint8 [N, C, H, W] on `device` (C = 4 with alpha), drawn once and
    cached as .npy."""
    tag = "-rgba" if a.alpha else ""
    path = os.path.join(a.work, f"data-{a.kind}-{a.res}-{a.data_size}-{a.data_seed}{tag}.npy")
    if os.path.exists(path):
        arr = np.load(path)
    else:
        t0 = time.time()
        print(f"drawing {a.data_size} {a.kind} pictures at {a.res} px ...", flush=True)
        arr = procgen.make_cache(a.kind, a.data_size, a.data_seed, a.res, alpha=a.alpha)
        np.save(path, arr)
        print(f"  done in {time.time() - t0:.1f} s", flush=True)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def real_batch(data, n, flip):
    idx = torch.randint(0, data.shape[0], (n,), device=data.device)
    x = data[idx].float() / 127.5 - 1
    if flip:
        mask = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
        x = torch.where(mask, x.flip(3), x)
    return x


def over_checks(img):
    """RGBA uint8 [N, H, W, 4] shown over a grey checkerboard (RGB), so the alpha can be judged."""
    n, h, w, _ = img.shape
    y, x = np.mgrid[0:h, 0:w]
    checks = np.where((y // 8 + x // 8) % 2 == 0, 160.0, 96.0)[None, :, :, None]
    a = img[..., 3:].astype(float) / 255
    return (img[..., :3] * a + checks * (1 - a)).round().astype(np.uint8)


def sample_grid(s, sd, path, device, psi=1.0):
    """16 seeds (NumPy's legacy normal latents, as mixgan draws them) in a 4x4 grid; RGBA
    models over a checkerboard, with their alpha beside."""
    from PIL import Image
    with torch.no_grad():
        z = torch.cat([ref.legacy_z(seed, s.z_dim) for seed in range(16)]).float().to(device)
        ws = ref.truncate(ref.mapping(s, sd, z, torch.zeros(16, 0, device=device)), sd["mapping.w_avg"], psi)
        img = ref.to_uint8(synthesis(s, sd, ws, "const").float().cpu()).numpy()
    if img.shape[3] == 4:
        alpha = np.repeat(img[..., 3:], 3, axis=3)
        img = np.concatenate([over_checks(img), alpha], axis=2)
    Image.fromarray(procgen.grid(img, 4)).save(path)


def init_from(s, sd, model_dir):
    """Starts from a trained model directory of the same architecture. A 3-channel model
    grows a fourth (alpha) output: zero weights and bias, so it starts at half coverage and
    the colour is unchanged."""
    old = ref.load_safetensors(os.path.join(model_dir, "weights.safetensors"))
    for name, t in sd.items():
        if name not in old:
            raise SystemExit(f"--init-from {model_dir}: it has no {name}")
        src = old[name].float()
        if src.shape == t.shape:
            sd[name] = src.clone()
        elif ".torgb." in name and src.shape[0] == 3 and t.shape[0] == 4:
            grown = torch.zeros_like(t)
            grown[:3] = src
            sd[name] = grown
        else:
            raise SystemExit(f"--init-from {model_dir}: {name} is {tuple(src.shape)}, not {tuple(t.shape)}")
    return sd


def export(a, s, sd_ema):
    """Writes the model directory, after checking the training graph against the reference."""
    sd = {k: v.detach().float().cpu() for k, v in sd_ema.items()}
    with torch.no_grad():
        z = torch.cat([ref.legacy_z(seed, s.z_dim) for seed in (0, 1)]).float()
        ws = ref.mapping(s, sd, z, torch.zeros(2, 0))
        diff = (synthesis(s, sd, ws, "const") - ref.synthesis(s, sd, ws, "const")).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"the training graph and the reference differ by {diff}; not exporting")
    defaults = {"trunc": a.export_trunc, "noise_mode": "const"}
    ref.write_model_dir(a.out, a.name or a.kind, [a.name or a.kind], gen_settings(a), sd, defaults, alpha=a.alpha)


def train(a):
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    amp = a.amp == "on" or (a.amp == "auto" and device.type == "cuda")
    os.makedirs(a.work, exist_ok=True)
    torch.manual_seed(a.seed)
    s = ref.Settings(gen_settings(a))
    data = load_data(a, device)
    sd = init_generator(s, a.seed)
    if a.init_from:
        sd = init_from(s, sd, a.init_from)
    G = {k: v.to(device) for k, v in sd.items()}
    for k, v in G.items():
        v.requires_grad_(not k.endswith(BUFFERS))
    if a.only_alpha:
        # Learn only the alpha row of each toRGB layer: the colour stays exactly the start's.
        if not (a.alpha and a.init_from):
            raise SystemExit("--only-alpha needs --alpha and --init-from")
        for k, v in G.items():
            v.requires_grad_(k.endswith((".torgb.weight", ".torgb.bias")))
    colour_rows = [v for v in G.values() if v.requires_grad] if a.only_alpha else []
    D = Discriminator(s).to(device)
    G_ema = {k: v.detach().clone() for k, v in G.items()}
    g_params = [v for k, v in G.items() if v.requires_grad]
    r1_every = 16
    ratio = r1_every / (r1_every + 1)
    fused = device.type == "cuda"  # one kernel per step instead of one per tensor
    opt_g = torch.optim.Adam(g_params, lr=a.lr, betas=(0.0, 0.99), eps=1e-8, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=a.lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8, fused=fused)
    ema_pairs = [(G_ema[k], v) for k, v in G.items() if v.requires_grad]
    ema_buffers = [(G_ema[k], v) for k, v in G.items() if not v.requires_grad]
    step, nimg, spent = 0, 0, 0.0
    state_path = os.path.join(a.work, f"{a.kind}-state.pt")
    if a.resume and os.path.exists(state_path):
        st = torch.load(state_path, map_location=device, weights_only=False)
        for k in G:
            G[k].data.copy_(st["G"][k])
            G_ema[k].copy_(st["G_ema"][k])
        D.load_state_dict(st["D"])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        step, nimg, spent = st["step"], st["nimg"], st["seconds"]
        print(f"resumed {a.kind} at step {step} ({nimg / 1000:.1f} kimg)", flush=True)
    gamma = a.r1_gamma if a.r1_gamma is not None else 0.0002 * a.res ** 2 / a.batch
    flip = a.kind != "hand"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    started = time.time() - spent

    def snapshot():
        torch.save({"G": G, "G_ema": G_ema, "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(), "step": step, "nimg": nimg,
                    "seconds": time.time() - started, "args": vars(a)}, state_path)
        export(a, s, G_ema)
        sample_grid(s, G_ema, os.path.join(a.work, f"{a.kind}-samples.png"), device, a.export_trunc)

    last_log = time.time()
    while True:
        elapsed = time.time() - started
        if (a.steps and step >= a.steps) or (a.minutes and elapsed >= a.minutes * 60):
            break
        z = torch.randn(a.batch, s.z_dim, device=device)
        # G: non-saturating logistic loss; w_avg follows W.
        with autocast:
            fake = generate(s, G, z, a.mixing, track_w_avg=None if a.only_alpha else 0.995)
            loss_g = F.softplus(-D(fake).float()).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        for v in colour_rows:
            v.grad[:3] = 0
        opt_g.step()
        # D: logistic loss on fakes and reals.
        real = real_batch(data, a.batch, flip)
        with autocast:
            with torch.no_grad():
                fake = generate(s, G, torch.randn_like(z), a.mixing)
            loss_d = F.softplus(D(fake).float()).mean() + F.softplus(-D(real).float()).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # Lazy R1 on reals, in float32.
        if step % r1_every == 0:
            real = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
            r1 = grad.square().sum([1, 2, 3]).mean()
            opt_d.zero_grad(set_to_none=True)
            (r1 * (gamma / 2) * r1_every).backward()
            opt_d.step()
        # G_ema: half-life of ema_kimg thousand images, ramped up over the first images.
        nimg += a.batch
        ema_nimg = min(a.ema_kimg * 1000, nimg * 0.05)
        beta = 0.5 ** (a.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in ema_pairs], [v for _, v in ema_pairs], 1.0 - beta)
            for e, v in ema_buffers:
                e.copy_(v)
        step += 1
        if time.time() - last_log > a.log_seconds or step == 1:
            last_log = time.time()
            print(f"{a.kind} step {step} kimg {nimg / 1000:.1f} loss_g {loss_g.item():.3f} "
                  f"loss_d {loss_d.item():.3f} {time.time() - started:.0f}s", flush=True)
        if a.snap_every and step % a.snap_every == 0:
            snapshot()
    snapshot()
    print(json.dumps({"kind": a.kind, "steps": step, "kimg": nimg / 1000, "seconds": round(time.time() - started, 1),
                      "device": str(device), "model": a.out}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=list(procgen.SIZES), required=True)
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--name", help="model and class name (default: the kind)")
    p.add_argument("--work", default=os.path.join(os.environ.get("MIXGAN_CACHE", os.path.expanduser("~/.cache/mixgan")), "train"),
                   help="training state, sample grids and the drawn dataset")
    p.add_argument("--res", type=int, help="resolution (default: the kind's)")
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--w-dim", type=int, default=64)
    p.add_argument("--map-layers", type=int, default=2)
    p.add_argument("--channel-base", type=int, default=4096)
    p.add_argument("--channel-max", type=int, default=64)
    p.add_argument("--architecture", choices=["skip", "resnet", "orig"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.0025)
    p.add_argument("--r1-gamma", type=float, help="default: 0.0002 * res^2 / batch")
    p.add_argument("--mixing", type=float, default=0.9, help="style-mixing probability")
    p.add_argument("--ema-kimg", type=float, help="default: batch * 10 / 32")
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--minutes", type=float, help="stop after this much training time")
    p.add_argument("--snap-every", type=int, default=1000)
    p.add_argument("--resume", action="store_true", help="continue from the state in --work")
    p.add_argument("--alpha", choices=["auto", "on", "off"], default="auto",
                   help="a fourth output channel, the subject's coverage (auto: faces and hands)")
    p.add_argument("--only-alpha", action="store_true",
                   help="with --init-from: train only the alpha output, keep the colour as it is")
    p.add_argument("--init-from", metavar="DIR",
                   help="start G from this model directory (an RGB model grows an alpha output)")
    p.add_argument("--data-size", type=int, default=20000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bfloat16 autocast (auto: on CUDA only)")
    p.add_argument("--export-trunc", type=float, default=0.7)
    p.add_argument("--log-seconds", type=float, default=10.0)
    a = p.parse_args()
    a.res = a.res or procgen.SIZES[a.kind]
    a.alpha = a.alpha == "on" or (a.alpha == "auto" and procgen.has_alpha(a.kind))
    a.architecture = a.architecture or ("resnet" if a.kind == "background" else "skip")
    a.ema_kimg = a.ema_kimg if a.ema_kimg is not None else a.batch * 10 / 32
    if not (a.steps or a.minutes):
        p.error("give --steps or --minutes")
    train(a)


if __name__ == "__main__":
    main()
