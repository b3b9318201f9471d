#!/usr/bin/env python3
"""NVIDIA's own StyleGAN2 generator timed on a mixgan model's weights, for `scripts/gpu-bench`:
the baseline mixgan's speed and half-precision error are compared with, run from a NVIDIA
source tree you give it (the project never contains NVIDIA's code).

It builds NVIDIA's `Generator` from the model's `[generator]` settings (the same names as its
constructor arguments), loads the model's weights into it (the same tensor names), and

  1. times it in float32 (`force_fp32=True`) and as shipped (float16 in the top
     `num_fp16_res` resolutions on CUDA) at the given batch sizes, truncation 0.7, constant
     noise, synchronised by copying the uint8 pictures to the host;
  2. prints how far its float16 pictures are from its float32 pictures on the same seeds
     (NumPy seeds, as gen_images.py makes z), in 8-bit levels, and on a GPU how far both
     are from its float32 pictures on the CPU (no TF32, no cuDNN): the reference
     `mixgan bench` also compares its pictures with.

  nvidia_bench.py --nvlabs-src ~/src/stylegan3 --model DIR --device cuda --batches 1,8,32

NVIDIA's pure-PyTorch op paths run (its custom CUDA ops are not compiled unless
MIXGAN_NVLABS_PLUGINS=1), which is how the figures in docs/performance.md were taken.
"""
import argparse
import copy
import os
import sys
import json
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sg2_reference import load_safetensors  # noqa: E402


def build(nvlabs_src, model_dir, config, device):
    sys.path.insert(0, nvlabs_src)
    try:
        from training import networks_stylegan2 as sg2
    except ImportError:
        from training import networks as sg2  # stylegan2-ada-pytorch's name
    if os.environ.get("MIXGAN_NVLABS_PLUGINS") != "1":
        # Its pure-PyTorch op paths, as the figures in the docs were taken: building the CUDA
        # plugins would spend minutes of a GPU lease in nvcc (MIXGAN_NVLABS_PLUGINS=1 allows it).
        from torch_utils.ops import bias_act, upfirdn2d
        bias_act._init = lambda: False
        upfirdn2d._init = lambda: False
    if config:
        spec = {"generator": json.loads(config)}
    else:
        import tomllib  # Python 3.11; older ones pass --config
        with open(os.path.join(model_dir, "model.toml"), "rb") as fh:
            spec = tomllib.load(fh)
    g = spec["generator"]
    G = sg2.Generator(z_dim=g["z_dim"], c_dim=g["c_dim"], w_dim=g["w_dim"], img_resolution=g["img_resolution"],
                      img_channels=g["img_channels"], mapping_kwargs=g.get("mapping_kwargs", {}),
                      synthesis_kwargs=g.get("synthesis_kwargs", {}))
    weights = load_safetensors(os.path.join(model_dir, spec.get("weights", "weights.safetensors")))
    missing, unexpected = G.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise SystemExit(f"the weights do not fit NVIDIA's Generator: missing {missing}, unexpected {unexpected}")
    return G.eval().requires_grad_(False).to(device)


def pictures(G, z, c, force_fp32):
    img = G(z, c, truncation_psi=0.7, noise_mode="const", force_fp32=force_fp32)
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvlabs-src", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--config", help="the [generator] table as JSON, for a Python without tomllib")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 for the float16 check")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device(a.device)
    G = build(os.path.abspath(a.nvlabs_src), a.model, a.config, device)
    for force_fp32, name in [(True, "fp32"), (False, "as shipped (fp16 in the top num_fp16_res)")]:
        for batch in [int(b) for b in a.batches.split(",")]:
            z = torch.randn(batch, G.z_dim, device=device)
            c = torch.zeros(batch, G.c_dim, device=device)
            for _ in range(a.warmup):
                pictures(G, z, c, force_fp32)
            times = []
            for _ in range(a.iters):
                t0 = time.perf_counter()
                pictures(G, z, c, force_fp32)
                times.append(time.perf_counter() - t0)
            t = float(np.median(times))
            print(f"nvidia {name}: batch {batch}: {t * 1e3 / batch:.2f} ms/img, {batch / t:.1f} img/s")
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in range(a.seeds)])).to(device)
    c = torch.zeros(a.seeds, G.c_dim, device=device)
    shipped, full = pictures(G, z, c, False), pictures(G, z, c, True)
    levels = f"levels of 255 on seeds 0-{a.seeds - 1} at truncation 0.7"

    def apart(x, y):
        d = (x.float() - y.float()).abs()
        return f"largest {d.max().item():.0f}, mean {d.mean().item():.3f}"

    print(f"nvidia: as shipped against fp32: {apart(shipped, full)} {levels}")
    if device.type != "cpu":
        # Its own code forces float32 on the CPU.
        cpu = pictures(copy.deepcopy(G).cpu(), z.cpu(), c.cpu(), True)
        for name, pics in [("as shipped", shipped), ("fp32", full)]:
            print(f"nvidia: {name} on {device} against float32 on the CPU: {apart(pics, cpu)} {levels}")


if __name__ == "__main__":
    main()
