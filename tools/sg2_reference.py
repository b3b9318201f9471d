#!/usr/bin/env python3
"""A compact PyTorch reference of the StyleGAN2 generator math, written for mixgan's tests.

It reads the same files as mixgan (a `model.toml` plus a safetensors file with the tensor
names of a StyleGAN2 `G_ema.state_dict()`) and computes images with plain PyTorch ops in a
functional style. Resampling takes the textbook route (zero insertion, padding, FIR filter),
unlike the Rust generator's transposed convolutions, so the two check each other.

Sub-commands:
  make      write a seeded, randomly initialised model directory
  generate  write images for seeds as float tensors (safetensors) or PNGs
  bench     time generation at given batch sizes (the benchmark's Python baseline)
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

# ----------------------------------------------------------------------------- settings

GEN_DEFAULTS = {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 64, "img_channels": 3}
MAP_DEFAULTS = {"num_layers": 8, "embed_features": None, "layer_features": None,
                "activation": "lrelu", "lr_multiplier": 0.01, "w_avg_beta": 0.995}
SYN_DEFAULTS = {"channel_base": 32768, "channel_max": 512, "num_fp16_res": 0,
                "architecture": "skip", "resample_filter": [1, 3, 3, 1], "conv_clamp": None,
                "use_noise": True, "activation": "lrelu", "kernel_size": 3}

ACTIVATIONS = {  # name -> (function, default gain)
    "linear": (lambda x: x, 1.0),
    "relu": (torch.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (torch.sigmoid, 1.0),
    "elu": (F.elu, 1.0),
    "selu": (F.selu, 1.0),
    "softplus": (F.softplus, 1.0),
    "swish": (lambda x: x * torch.sigmoid(x), math.sqrt(2)),
}


class Settings:
    """The generator settings of a model.toml with the reference defaults filled in."""

    def __init__(self, gen):
        g = dict(GEN_DEFAULTS)
        g.update({k: v for k, v in gen.items() if k not in ("mapping_kwargs", "synthesis_kwargs")})
        self.z_dim, self.c_dim, self.w_dim = g["z_dim"], g["c_dim"], g["w_dim"]
        self.res, self.img_channels = g["img_resolution"], g["img_channels"]
        self.map = dict(MAP_DEFAULTS, **gen.get("mapping_kwargs", {}))
        self.syn = dict(SYN_DEFAULTS, **gen.get("synthesis_kwargs", {}))
        self.log2 = int(round(math.log2(self.res)))
        self.resolutions = [2 ** i for i in range(2, self.log2 + 1)]
        self.arch = self.syn["architecture"]

    def channels(self, res):
        return min(self.syn["channel_base"] // res, self.syn["channel_max"])

    def block_layers(self, res):
        """(number of convs, number of toRGB layers) of the block at `res`."""
        convs = 1 if res == 4 else 2
        torgb = 1 if (res == self.res or self.arch == "skip") else 0
        return convs, torgb

    @property
    def num_ws(self):
        n = sum(self.block_layers(r)[0] for r in self.resolutions)
        return n + self.block_layers(self.res)[1]


DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def load_safetensors(path):
    """Reads a safetensors file with NumPy alone (the GPU machines may lack the package)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def save_safetensors(tensors, path):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def read_model(model_dir, config_json=None):
    """Settings come from model.toml, or from `config_json` (the generator table as JSON)
    where Python lacks tomllib."""
    if config_json:
        gen, weights = json.loads(config_json), "weights.safetensors"
    else:
        import tomllib
        with open(os.path.join(model_dir, "model.toml"), "rb") as fh:
            toml = tomllib.load(fh)
        gen, weights = toml["generator"], toml.get("weights", "weights.safetensors")
    return Settings(gen), load_safetensors(os.path.join(model_dir, weights))


# ----------------------------------------------------------------------------- random models

def fir_filter(taps):
    """The stored `resample_filter` buffer: 2-D, or 1-D (separable) from 8 taps up."""
    t = torch.tensor(taps, dtype=torch.float32)
    k = t if len(taps) >= 8 else torch.outer(t, t)
    return k / k.sum()


def random_state_dict(s, seed):
    """Seeded random weights under a StyleGAN2 G_ema's tensor names. Biases, noise strengths
    and w_avg are random too: at their training-start values they would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    sd = {}
    lr = s.map["lr_multiplier"]
    embed = (s.map["embed_features"] or s.w_dim) if s.c_dim > 0 else 0
    feats = s.map["layer_features"] or s.w_dim
    sizes = [s.z_dim + embed] + [feats] * (s.map["num_layers"] - 1) + [s.w_dim]
    if s.c_dim > 0:
        sd["mapping.embed.weight"] = rnd(embed, s.c_dim)
        sd["mapping.embed.bias"] = rnd(embed) * 0.1
    for i in range(s.map["num_layers"]):
        sd[f"mapping.fc{i}.weight"] = rnd(sizes[i + 1], sizes[i]) / lr
        sd[f"mapping.fc{i}.bias"] = rnd(sizes[i + 1]) * 0.1 / lr
    sd["mapping.w_avg"] = rnd(s.w_dim) * 0.5
    filt = fir_filter(s.syn["resample_filter"])

    def layer(prefix, cin, cout, res, k=s.syn["kernel_size"], styled=True):
        sd[f"{prefix}.affine.weight"] = rnd(cin, s.w_dim)
        sd[f"{prefix}.affine.bias"] = 1 + rnd(cin) * 0.1
        sd[f"{prefix}.weight"] = rnd(cout, cin, k, k)
        sd[f"{prefix}.bias"] = rnd(cout) * 0.1
        if styled:
            if s.syn["use_noise"]:
                sd[f"{prefix}.noise_const"] = rnd(res, res)
                sd[f"{prefix}.noise_strength"] = (rnd(()) * 0.2).reshape(())
            sd[f"{prefix}.resample_filter"] = filt.clone()

    for res in s.resolutions:
        b = f"synthesis.b{res}"
        cout = s.channels(res)
        sd[f"{b}.resample_filter"] = filt.clone()
        if res == 4:
            sd[f"{b}.const"] = rnd(cout, 4, 4)
        else:
            cin = s.channels(res // 2)
            layer(f"{b}.conv0", cin, cout, res)
            if s.arch == "resnet":
                sd[f"{b}.skip.weight"] = rnd(cout, cin, 1, 1)
                sd[f"{b}.skip.resample_filter"] = filt.clone()
        layer(f"{b}.conv1", cout, cout, res)
        if s.block_layers(res)[1]:
            layer(f"{b}.torgb", cout, s.img_channels, res, k=1, styled=False)
    return sd


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_model(out, name, classes, gen, seed, defaults=None):
    write_model_dir(out, name, classes, gen, random_state_dict(Settings(gen), seed), defaults)


def write_model_dir(out, name, classes, gen, sd, defaults=None, alpha=False):
    """A mixgan model directory: `sd` (G_ema tensor names) plus its model.toml. `alpha`: the
    fourth output channel is the subject's coverage."""
    os.makedirs(out, exist_ok=True)
    save_safetensors(sd, os.path.join(out, "weights.safetensors"))
    lines = [f"name = {json.dumps(name)}", f"classes = {toml_value(classes)}",
             'kind = "stylegan2"', 'weights = "weights.safetensors"']
    lines += ["alpha = true"] if alpha else []
    lines += ["", "[generator]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in gen.items() if not isinstance(v, dict)]
    for table in ("mapping_kwargs", "synthesis_kwargs"):
        if gen.get(table):
            lines += ["", f"[generator.{table}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in gen[table].items() if v is not None]
    if defaults:
        lines += ["", "[defaults]"] + [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    with open(os.path.join(out, "model.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- the math

def dense(x, weight, bias, lr=1.0, act="linear"):
    y = x @ (weight * (lr / math.sqrt(weight.shape[1]))).t()
    if bias is not None:
        y = y + bias * lr
    fn, gain = ACTIVATIONS[act]
    return fn(y) * gain


def normalize(x):
    return x / torch.sqrt((x * x).mean(dim=1, keepdim=True) + 1e-8)


def mapping(s, sd, z, c):
    parts = []
    if s.z_dim > 0:
        parts.append(normalize(z.float()))
    if s.c_dim > 0:
        parts.append(normalize(dense(c.float(), sd["mapping.embed.weight"], sd["mapping.embed.bias"])))
    x = torch.cat(parts, dim=1)
    for i in range(s.map["num_layers"]):
        x = dense(x, sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"],
                  s.map["lr_multiplier"], s.map["activation"])
    return x.unsqueeze(1).repeat(1, s.num_ws, 1)


def truncate(ws, w_avg, psi, cutoff=None):
    if psi == 1:
        return ws
    ws = ws.clone()
    n = ws.shape[1] if cutoff is None else cutoff
    ws[:, :n] = w_avg + psi * (ws[:, :n] - w_avg)
    return ws


def fir(x, f, up=1, pad=(0, 0), gain=1.0):
    """Zero-insert by `up`, pad (before, after) on both axes, then filter with `f` (a true
    convolution, so the filter is flipped), per channel."""
    n, ch, h, w = x.shape
    if f.ndim == 1:
        f = torch.outer(f, f)
    if up > 1:
        x = x.reshape(n, ch, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, ch, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1])[None, None].repeat(ch, 1, 1, 1)
    return F.conv2d(x, k, groups=ch)


def upsample(x, f):
    taps = f.shape[0]
    return fir(x, f, up=2, pad=((taps + 1) // 2, (taps - 2) // 2), gain=4.0)


def bias_act(x, b, act, gain, clamp):
    fn, g = ACTIVATIONS[act]
    x = fn(x + b.reshape(1, -1, 1, 1)) * (g * gain)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def mod_conv(x, weight, styles, demodulate, up, f):
    """Modulated convolution, one sample at a time (the reference favours clarity)."""
    out = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w * w).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xi = x[i:i + 1]
        k = w.shape[-1]
        if up > 1:
            taps = f.shape[0]
            p = k // 2
            xi = fir(xi, f, up=2, pad=(p + (taps + 1) // 2, p + (taps - 2) // 2), gain=4.0)
            xi = F.conv2d(xi, w.flip([2, 3]))
        else:
            xi = F.conv2d(xi, w, padding=k // 2)
        out.append(xi)
    return torch.cat(out)


def style_layer(s, sd, p, x, w, up, noise_mode, gain=1.0):
    styles = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"])
    f = sd[f"{p}.resample_filter"]
    x = mod_conv(x, sd[f"{p}.weight"], styles, True, up, f)
    if s.syn["use_noise"] and noise_mode != "none":
        strength = sd[f"{p}.noise_strength"]
        if noise_mode == "const":
            x = x + sd[f"{p}.noise_const"] * strength
        else:
            x = x + torch.randn(x.shape[0], 1, x.shape[2], x.shape[3]) * strength
    clamp = s.syn["conv_clamp"]
    return bias_act(x, sd[f"{p}.bias"], s.syn["activation"], gain, None if clamp is None else clamp * gain)


def to_rgb(s, sd, p, x, w):
    cin = sd[f"{p}.weight"].shape[1]
    styles = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"]) / math.sqrt(cin)
    x = mod_conv(x, sd[f"{p}.weight"], styles, False, 1, None)
    return bias_act(x, sd[f"{p}.bias"], "linear", 1.0, s.syn["conv_clamp"])


def run_blocks(s, sd, ws, layer, rgb):
    """The synthesis network's block structure; `layer(prefix, x, w, up, gain)` and
    `rgb(prefix, x, w)` compute its styled and toRGB layers."""
    n = ws.shape[0]
    x = img = None
    idx = 0
    for res in s.resolutions:
        b = f"synthesis.b{res}"
        convs, torgb = s.block_layers(res)
        bw = ws[:, idx: idx + convs + torgb]
        idx += convs
        f = sd[f"{b}.resample_filter"]
        if res == 4:
            x = layer(f"{b}.conv1", sd[f"{b}.const"][None].repeat(n, 1, 1, 1), bw[:, 0], 1, 1.0)
        elif s.arch == "resnet":
            cin = sd[f"{b}.skip.weight"].shape[1]
            y = upsample(F.conv2d(x, sd[f"{b}.skip.weight"] / math.sqrt(cin)), f) * math.sqrt(0.5)
            x = layer(f"{b}.conv0", x, bw[:, 0], 2, 1.0)
            x = layer(f"{b}.conv1", x, bw[:, 1], 1, math.sqrt(0.5)) + y
        else:
            x = layer(f"{b}.conv0", x, bw[:, 0], 2, 1.0)
            x = layer(f"{b}.conv1", x, bw[:, 1], 1, 1.0)
        if img is not None:
            img = upsample(img, f)
        if torgb:
            y = rgb(f"{b}.torgb", x, bw[:, convs])
            img = y if img is None else img + y
    return img


def synthesis(s, sd, ws, noise_mode="const"):
    return run_blocks(s, sd, ws, lambda p, x, w, up, gain: style_layer(s, sd, p, x, w, up, noise_mode, gain),
                      lambda p, x, w: to_rgb(s, sd, p, x, w))


def legacy_z(seed, z_dim):
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim))


def generate(s, sd, seeds, psi=1.0, cutoff=None, class_index=None, noise_mode="const",
             mix_seed=None, mix_from=None):
    z = torch.cat([legacy_z(seed, s.z_dim) for seed in seeds])
    c = torch.zeros(len(seeds), s.c_dim)
    if s.c_dim > 0:
        c[:, class_index or 0] = 1
    ws = truncate(mapping(s, sd, z, c), sd["mapping.w_avg"], psi, cutoff)
    if mix_seed is not None:
        zm = legacy_z(mix_seed, s.z_dim).repeat(len(seeds), 1)
        wm = truncate(mapping(s, sd, zm, c), sd["mapping.w_avg"], psi, cutoff)
        ws[:, mix_from:] = wm[:, mix_from:]
    return synthesis(s, sd, ws, noise_mode)


def to_uint8(img):
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- commands

def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds += list(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    return seeds


def cmd_make(a):
    gen = json.loads(a.config)
    write_model(a.out, a.name, a.classes.split(","), gen, a.seed,
                json.loads(a.defaults) if a.defaults else None)


def cmd_generate(a):
    torch.set_grad_enabled(False)
    s, sd = read_model(a.model)
    seeds = parse_seeds(a.seeds)
    img = generate(s, sd, seeds, a.trunc, a.trunc_cutoff, a.class_index, a.noise_mode,
                   a.mix_seed, a.mix_from)
    if a.out.endswith(".safetensors"):
        save_safetensors({"images": img}, a.out)
    else:
        from PIL import Image
        os.makedirs(a.out, exist_ok=True)
        for seed, px in zip(seeds, to_uint8(img).numpy()):
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[px.shape[2]]
            Image.fromarray(px[:, :, 0] if mode == "L" else px, mode).save(
                os.path.join(a.out, f"seed{seed:04d}.png"))


def fast_synthesis(s, sd, ws):
    """Batched synthesis for the benchmark baseline: grouped convolutions as in common
    PyTorch StyleGAN2 code, so the baseline is PyTorch eager at its usual speed."""
    n = ws.shape[0]

    def layer(p, x, w, up, gain=1.0):
        styles = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"])
        wt = sd[f"{p}.weight"][None] * styles[:, None, :, None, None]
        wt = wt * torch.rsqrt(wt.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8)
        cout, cin = wt.shape[1], wt.shape[2]
        xx = x.reshape(1, n * cin, x.shape[2], x.shape[3])
        if up > 1:
            wt = wt.transpose(1, 2).reshape(n * cin, cout, 3, 3)
            xx = F.conv_transpose2d(xx, wt, stride=2, groups=n)
            xx = xx.reshape(n, cout, xx.shape[2], xx.shape[3])
            xx = fir(xx, sd[f"{p}.resample_filter"], pad=(1, 1), gain=4.0)
        else:
            xx = F.conv2d(xx, wt.reshape(n * cout, cin, 3, 3), padding=1, groups=n)
            xx = xx.reshape(n, cout, xx.shape[2], xx.shape[3])
        if s.syn["use_noise"]:
            xx = xx + sd[f"{p}.noise_const"] * sd[f"{p}.noise_strength"]
        clamp = s.syn["conv_clamp"]
        return bias_act(xx, sd[f"{p}.bias"], s.syn["activation"], gain, None if clamp is None else clamp * gain)

    def rgb(p, x, w):
        cin = sd[f"{p}.weight"].shape[1]
        styles = dense(w, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"]) / math.sqrt(cin)
        wt = sd[f"{p}.weight"][None] * styles[:, None, :, None, None]
        xx = x.reshape(1, -1, x.shape[2], x.shape[3])
        xx = F.conv2d(xx, wt.reshape(-1, cin, 1, 1), groups=n).reshape(n, -1, x.shape[2], x.shape[3])
        return bias_act(xx, sd[f"{p}.bias"], "linear", 1.0, s.syn["conv_clamp"])

    return run_blocks(s, sd, ws, layer, rgb)


def cmd_bench(a):
    torch.set_grad_enabled(False)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    s, sd = read_model(a.model, a.config)
    sd = {k: v.to(device) for k, v in sd.items()}
    results = {}
    for batch in [int(b) for b in a.batches.split(",")]:
        z = torch.randn(batch, s.z_dim, device=device)
        c = torch.zeros(batch, s.c_dim, device=device)

        def run():
            ws = truncate(mapping(s, sd, z, c), sd["mapping.w_avg"], 0.7)
            img = fast_synthesis(s, sd, ws)
            to_uint8(img).cpu()

        for _ in range(a.warmup):
            run()
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        results[str(batch)] = float(np.median(times))
    json.dump(results, sys.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--name", default="model")
    m.add_argument("--classes", default="thing")
    m.add_argument("--config", required=True, help="generator settings as JSON")
    m.add_argument("--defaults", help="[defaults] table as JSON")
    m.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--seeds", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--trunc", type=float, default=1.0)
    g.add_argument("--trunc-cutoff", type=int)
    g.add_argument("--class", dest="class_index", type=int)
    g.add_argument("--noise-mode", default="const")
    g.add_argument("--mix-seed", type=int)
    g.add_argument("--mix-from", type=int)
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--config", help="generator settings as JSON instead of model.toml")
    b.add_argument("--batches", default="1,8")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--device", default="cpu")
    b.add_argument("--iters", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    {"make": cmd_make, "generate": cmd_generate, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
