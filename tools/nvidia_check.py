#!/usr/bin/env python3
"""The outside check against NVIDIA's own code, which the project may not contain: point it at
your NVIDIA source tree (stylegan3, or stylegan2-ada-pytorch for the StyleGAN2 half) and it

  1. builds StyleGAN2 (skip, and resnet conditional) and StyleGAN3 (-T and -R) generators with
     NVIDIA's classes, randomises their parameters so every tensor matters, and pickles them
     the way NVIDIA's training loop writes snapshots (G, D, G_ema, augment_pipe, ...);
  2. runs NVIDIA's gen_images.py on each snapshot for a few seeds and truncations;
  3. imports each snapshot with `mixgan import` (StyleGAN2 without NVIDIA's code on the path,
     StyleGAN3 with --nvlabs-src) and generates the same seeds with `mixgan generate`;
  4. prints the largest pixel difference per snapshot and exits non-zero above 1/255.

  nvidia_check.py --nvlabs-src ~/src/stylegan3 --mixgan target/release/mixgan --work nvcheck-out

NVIDIA's gen_images.py asks for CUDA; without a GPU, --cpu runs it with its `cuda` device
mapped to the CPU. NVIDIA's tree needs its own Python packages (click, scipy, requests):
put them on PYTHONPATH; the StyleGAN2 imports run with PYTHONPATH cleared. `mixgan import`
finds PyTorch as it always does ($MIXGAN_PYTHON, else the environment `make setup` installs).
"""
import argparse
import copy
import os
import pickle
import subprocess
import sys

SNAPSHOTS = ["sg2-skip", "sg2-resnet-cond", "sg3-t", "sg3-r"]


def make_snapshots(nvlabs_src, work):
    sys.path.insert(0, nvlabs_src)
    import torch
    import dnnlib
    try:
        from training import networks_stylegan2 as sg2
    except ImportError:
        from training import networks as sg2  # stylegan2-ada-pytorch's name
    try:
        from training import networks_stylegan3 as sg3
    except ImportError:
        sg3 = None
    from training.augment import AugmentPipe

    def randomise(G, seed, scale, rgb):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in G.named_parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
            for name, b in G.named_buffers():
                if name.endswith("w_avg"):
                    b.copy_(torch.randn(b.shape, generator=g) * 0.5)
            # Scale the output layers so that the pictures use the range without much clipping.
            for name, p in G.named_parameters():
                if "torgb" in name and name.endswith("weight"):
                    p.mul_(rgb)
            if hasattr(G.synthesis, "layer_names"):
                getattr(G.synthesis, G.synthesis.layer_names[-1]).weight.mul_(rgb)

    def save(name, G, D):
        aug = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                          brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
        data = dict(G=G, D=D, G_ema=G, augment_pipe=aug,
                    training_set_kwargs=dict(dnnlib.EasyDict(path="data.zip", resolution=G.img_resolution)))
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        with open(os.path.join(work, f"{name}.pkl"), "wb") as fh:
            pickle.dump(data, fh)

    G = sg2.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=64, img_channels=3, mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=4096, channel_max=64, conv_clamp=256))
    randomise(G, 1, 0.2, 0.15)
    save("sg2-skip", G, sg2.Discriminator(c_dim=0, img_resolution=64, img_channels=3, channel_base=4096, channel_max=64))
    G = sg2.Generator(z_dim=32, c_dim=4, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(channel_base=1024, channel_max=32, architecture="resnet", conv_clamp=256))
    randomise(G, 2, 0.2, 1.0)
    save("sg2-resnet-cond", G, sg2.Discriminator(c_dim=4, img_resolution=32, img_channels=3, channel_base=1024, channel_max=32))
    if sg3 is None:
        return
    for name, kw, rgb in [("sg3-t", {}, 8.0),
                          ("sg3-r", dict(conv_kernel=1, use_radial_filters=True, channel_base=8192), 3.0)]:
        settings = dict(channel_base=4096, channel_max=64, magnitude_ema_beta=0.999)
        settings.update(kw)
        G = sg3.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=64, img_channels=3,
                          mapping_kwargs=dict(num_layers=2), **settings)
        randomise(G, 3, 0.05, rgb)
        save(name, G, sg2.Discriminator(c_dim=0, img_resolution=64, img_channels=3, channel_base=4096, channel_max=64))


def run_gen_images(nvlabs_src, argv, cpu):
    """NVIDIA's gen_images.py (or stylegan2-ada-pytorch's generate.py) as a script, in its tree."""
    import runpy
    import torch
    if cpu:
        real = torch.device

        class CpuForCuda:
            def __new__(cls, *a, **k):
                d = real(*a, **k)
                return real("cpu") if d.type == "cuda" else d

        torch.device = CpuForCuda
    os.chdir(nvlabs_src)
    sys.path.insert(0, nvlabs_src)
    script = "gen_images.py" if os.path.exists("gen_images.py") else "generate.py"
    sys.argv = [script] + argv
    runpy.run_path(script, run_name="__main__")


def largest_difference(a_dir, b_dir):
    import numpy as np
    from PIL import Image
    worst, count = 0, 0
    for name in sorted(os.listdir(a_dir)):
        a = np.asarray(Image.open(os.path.join(a_dir, name))).astype(int)
        b = np.asarray(Image.open(os.path.join(b_dir, name))).astype(int)
        if a.shape != b.shape:
            raise SystemExit(f"{name}: shapes {a.shape} and {b.shape}")
        worst, count = max(worst, int(np.abs(a - b).max())), count + 1
    return worst, count


def run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}{out.stderr[-4000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvlabs-src", required=True)
    p.add_argument("--mixgan", required=True, help="the mixgan binary")
    p.add_argument("--work", required=True)
    p.add_argument("--cpu", action="store_true", help="run NVIDIA's gen_images.py on the CPU")
    p.add_argument("--seeds", default="0-3,42")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    src, work = os.path.abspath(a.nvlabs_src), os.path.abspath(a.work)
    if a.step == "snapshots":
        return make_snapshots(src, work)
    if a.step == "gen":
        return run_gen_images(src, a.rest, a.cpu)
    os.makedirs(work, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--nvlabs-src", src, "--mixgan", a.mixgan, "--work", work]
    run(me + ["--step", "snapshots"])
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    worst_all, rows = 0, []
    for snap in SNAPSHOTS:
        pkl = os.path.join(work, f"{snap}.pkl")
        if not os.path.exists(pkl):
            print(f"{snap}: skipped (no StyleGAN3 code in the tree)")
            continue
        model = os.path.join(work, "models", snap)
        cmd = [a.mixgan, "import", pkl, "--name", snap, "--classes", "thing", "-o", model]
        if snap.startswith("sg3"):
            run(cmd + ["--nvlabs-src", src])
        else:
            run(cmd, env=clean)
        cls = ["--class", "2"] if snap == "sg2-resnet-cond" else []
        for trunc in ("1", "0.7"):
            theirs = os.path.join(work, "nvidia", f"{snap}-{trunc}")
            ours = os.path.join(work, "mixgan", f"{snap}-{trunc}")
            gen = ["--network", pkl, "--seeds", a.seeds, "--trunc", trunc, "--outdir", theirs] + cls
            run(me + (["--cpu"] if a.cpu else []) + ["--step", "gen", "--"] + gen)
            run([a.mixgan, "generate", "--model", model, "--seeds", a.seeds, "--trunc", trunc, "--outdir", ours] + cls)
            worst, count = largest_difference(theirs, ours)
            worst_all = max(worst_all, worst)
            rows.append(f"{snap:16s} trunc {trunc:4s} {count} pictures, largest difference {worst}/255")
    print("\n".join(rows))
    print(f"largest difference overall: {worst_all}/255")
    sys.exit(0 if worst_all <= 1 else 1)


if __name__ == "__main__":
    main()
