#!/usr/bin/env python3
"""Exports a mixgan StyleGAN2 model directory to the TorchScript model contract, from the
project's own reference math (for the tests, and as an example of the contract):

  mapping.pt    (z [N, z_dim], c [N, c_dim]) -> ws [N, num_ws, w_dim], no truncation
  synthesis.pt  ws [N, num_ws, w_dim] -> image [N, C, H, W] in [-1, 1]
  weights.safetensors  holding `mapping.w_avg` [w_dim] (truncation happens in mixgan)
  model.toml    kind = "torchscript", [generator] sizes, [torchscript] file names and num_ws
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sg2_reference import ACTIVATIONS, normalize, read_model, save_safetensors  # noqa: E402


def act(name, x):
    fn, gain = ACTIVATIONS[name]
    return fn(x) * gain


class Mapping(torch.nn.Module):
    def __init__(self, s, sd):
        super().__init__()
        self.s = s
        self.sd = {k: v for k, v in sd.items() if k.startswith("mapping.")}
        self.num_ws = s.num_ws

    def forward(self, z, c):
        s, sd = self.s, self.sd
        x = normalize(z)
        if s.c_dim > 0:
            w, b = sd["mapping.embed.weight"], sd["mapping.embed.bias"]
            x = torch.cat([x, normalize(c @ (w / math.sqrt(w.shape[1])).t() + b)], dim=1)
        lr = s.map["lr_multiplier"]
        for i in range(s.map["num_layers"]):
            w, b = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
            x = act(s.map["activation"], x @ (w * (lr / math.sqrt(w.shape[1]))).t() + b * lr)
        return x.unsqueeze(1).expand(-1, self.num_ws, -1)


class Synthesis(torch.nn.Module):
    """The unfused formulation (scale, shared convolution, demodulate): no batch-size
    constants, so a trace works for every batch size."""

    def __init__(self, s, sd):
        super().__init__()
        self.s = s
        self.sd = {k: v for k, v in sd.items() if k.startswith("synthesis.")}

    def dense(self, p, w):
        wt, b = self.sd[f"{p}.affine.weight"], self.sd[f"{p}.affine.bias"]
        return w @ (wt / math.sqrt(wt.shape[1])).t() + b

    def filt(self, p, ch):
        f = self.sd[f"{p}.resample_filter"]
        f = torch.outer(f, f) if f.ndim == 1 else f
        return (f * 4).flip([0, 1])[None, None].repeat(ch, 1, 1, 1)

    def layer(self, p, x, w, up, gain):
        s = self.s
        weight = self.sd[f"{p}.weight"]
        styles = self.dense(p, w)
        d = (weight[None] * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4]).add(1e-8).rsqrt()
        x = x * styles[:, :, None, None]
        k = weight.shape[-1]
        if up:
            taps = self.sd[f"{p}.resample_filter"].shape[0]
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            p0 = k // 2 + (taps + 1) // 2 - (k - 1)
            p1 = k // 2 + (taps - 2) // 2 - (k - 2)
            x = F.pad(x, [p0, p1, p0, p1])
            x = F.conv2d(x, self.filt(p, x.shape[1]), groups=weight.shape[0])
        else:
            x = F.conv2d(x, weight, padding=k // 2)
        x = x * d[:, :, None, None]
        if s.syn["use_noise"]:
            x = x + self.sd[f"{p}.noise_const"] * self.sd[f"{p}.noise_strength"]
        x = act(s.syn["activation"], x + self.sd[f"{p}.bias"][None, :, None, None]) * gain
        clamp = s.syn["conv_clamp"]
        return x if clamp is None else x.clamp(-clamp * gain, clamp * gain)

    def rgb(self, p, x, w):
        weight = self.sd[f"{p}.weight"]
        styles = self.dense(p, w) / math.sqrt(weight.shape[1])
        x = F.conv2d(x * styles[:, :, None, None], weight) + self.sd[f"{p}.bias"][None, :, None, None]
        clamp = self.s.syn["conv_clamp"]
        return x if clamp is None else x.clamp(-clamp, clamp)

    def upsample(self, p, img):
        taps = self.sd[f"{p}.resample_filter"].shape[0]
        ch = img.shape[1]
        k = self.filt(p, ch).flip([2, 3])
        pad = taps - 1 - (taps + 1) // 2
        y = F.conv_transpose2d(img, k, stride=2, padding=pad, groups=ch)
        h = 2 * img.shape[2] + (taps + 1) // 2 + (taps - 2) // 2 - taps + 1
        return y[:, :, :h, :h]

    def forward(self, ws):
        s, sd = self.s, self.sd
        x = img = None
        idx = 0
        for res in s.resolutions:
            b = f"synthesis.b{res}"
            convs, torgb = s.block_layers(res)
            if res == 4:
                x = sd[f"{b}.const"][None].expand(ws.shape[0], -1, -1, -1)
                x = self.layer(f"{b}.conv1", x, ws[:, idx], False, 1.0)
            elif s.arch == "resnet":
                cin = sd[f"{b}.skip.weight"].shape[1]
                y = self.upsample(b, F.conv2d(x, sd[f"{b}.skip.weight"] / math.sqrt(cin))) * math.sqrt(0.5)
                x = self.layer(f"{b}.conv0", x, ws[:, idx], True, 1.0)
                x = self.layer(f"{b}.conv1", x, ws[:, idx + 1], False, math.sqrt(0.5)) + y
            else:
                x = self.layer(f"{b}.conv0", x, ws[:, idx], True, 1.0)
                x = self.layer(f"{b}.conv1", x, ws[:, idx + 1], False, 1.0)
            if img is not None:
                img = self.upsample(b, img)
            if torgb:
                y = self.rgb(f"{b}.torgb", x, ws[:, idx + convs])
                img = y if img is None else img + y
            idx += convs
        return img


class FixedBatch(torch.nn.Module):
    """Turns the batch size into a constant of the trace, as NVIDIA's StyleGAN3 layers do
    (for testing mixgan's `[torchscript] batch`)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *xs):
        n = int(xs[0].shape[0])  # a constant once traced
        return self.inner(*[x.reshape([n] + list(x.shape[1:])) for x in xs])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="scripted")
    p.add_argument("--classes", default="thing")
    p.add_argument("--fixed-batch", type=int, help="trace at this batch size only and say so in model.toml")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    s, sd = read_model(a.model)
    os.makedirs(a.out, exist_ok=True)
    n = a.fixed_batch or 3
    z = torch.randn(n, s.z_dim)
    c = torch.zeros(n, s.c_dim)
    wrap = FixedBatch if a.fixed_batch else (lambda m: m)
    mapping = torch.jit.trace(wrap(Mapping(s, sd)), (z, c), check_trace=False)
    ws = mapping(z, c)
    synthesis = torch.jit.trace(wrap(Synthesis(s, sd)), (ws,), check_trace=False)
    other = n + 1
    try:
        ok = synthesis(mapping(torch.randn(other, s.z_dim), torch.zeros(other, s.c_dim))).shape[0] == other
    except RuntimeError:
        ok = False
    # Only a fixed-batch export may refuse another batch size.
    assert ok != bool(a.fixed_batch), "the trace's batch handling is not what was asked for"
    mapping.save(os.path.join(a.out, "mapping.pt"))
    synthesis.save(os.path.join(a.out, "synthesis.pt"))
    save_safetensors({"mapping.w_avg": sd["mapping.w_avg"]}, os.path.join(a.out, "weights.safetensors"))
    lines = [f"name = {json.dumps(a.name)}", f"classes = {json.dumps(a.classes.split(','))}", 'kind = "torchscript"',
             'weights = "weights.safetensors"', "", "[generator]", f"z_dim = {s.z_dim}", f"c_dim = {s.c_dim}",
             f"w_dim = {s.w_dim}", f"img_resolution = {s.res}", f"img_channels = {s.img_channels}", "",
             "[torchscript]", 'mapping = "mapping.pt"', 'synthesis = "synthesis.pt"', f"num_ws = {s.num_ws}"]
    if a.fixed_batch:
        lines.append(f"batch = {a.fixed_batch}")
    with open(os.path.join(a.out, "model.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
