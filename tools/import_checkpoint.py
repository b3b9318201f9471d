#!/usr/bin/env python3
"""Converts a StyleGAN2 checkpoint into a mixgan model directory (model.toml + safetensors).

Formats:
  nvidia-pkl  NVIDIA stylegan2-ada-pytorch / stylegan3 `network-snapshot-*.pkl` (the StyleGAN2
              generator of either). Read by an allow-list unpickler that executes nothing from
              the file: NVIDIA's persistent objects are read as records (their embedded source
              is never run), tensors are rebuilt from their bytes by torch's weights-only
              loader, and any other global in the file is refused by name.
  rosinality  rosinality/stylegan2-pytorch `.pt` (`g_ema` state dict and `latent_avg`), read
              with torch's weights-only loader and renamed and rescaled to NVIDIA's layout.

Prints one JSON line describing the result; errors go to stderr with exit status 2.
"""
import argparse
import collections
import io
import json
import os
import pickle
import re
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from sg2_reference import save_safetensors, toml_value  # noqa: E402


class ImportError_(Exception):
    """A checkpoint this tool refuses, with the reason."""


# ----------------------------------------------------------------------------- NVIDIA pickles

class PersistentRecord:
    """An NVIDIA persistent object as data: its class name, embedded module source (kept as
    text, never executed) and state."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise ImportError_("a persistent-object record without type 'class'")
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src") or ""
        self.state = meta.get("state") or {}
        if not isinstance(self.state, dict):
            raise ImportError_(f"persistent object {self.class_name!r} has no state dict")


class AttrDict(dict):
    """Stands in for dnnlib's EasyDict: a plain dict."""


def _storage_from_bytes(data):
    if not isinstance(data, (bytes, bytearray)):
        raise ImportError_("a tensor storage record without bytes")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    t = torch.empty((0,), dtype=storage.dtype)
    t.set_(storage, offset, size, stride)
    return t


def _rebuild_parameter(data, *_rest):
    return data


def _numpy_scalar(dtype, data=None):
    import numpy as np
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else np.zeros((), dtype=dtype)[()]


def _numpy_reconstruct(cls, shape, dtype):
    import numpy as np
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(name, *_args):
    import numpy as np
    return np.dtype(name)


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): AttrDict,
    ("dnnlib", "EasyDict"): AttrDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): "ndarray",
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = ALLOWED.get((module, name))
        if found is None:
            raise ImportError_(f"refused: the pickle references `{module}.{name}`, which is not on the allow-list "
                               "(a checkpoint only needs NVIDIA's persistent records and torch tensors)")
        return found

    def persistent_load(self, pid):
        raise ImportError_("refused: the pickle uses persistent ids, which NVIDIA snapshots do not")


def read_nvidia_pickle(path):
    with open(path, "rb") as fh:
        try:
            data = SafeUnpickler(fh).load()
        except ImportError_:
            raise
        except RecursionError:
            raise ImportError_("refused: the pickle is nested too deeply")
        except Exception as e:  # truncated or corrupt
            raise ImportError_(f"not a readable pickle: {type(e).__name__}: {e}")
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ImportError_("not an NVIDIA snapshot: no `G_ema` in the pickle's top-level dict")
    g = data["G_ema"]
    if not isinstance(g, PersistentRecord):
        raise ImportError_("`G_ema` is not an NVIDIA persistent object")
    return g


def generator_kind(record):
    src = record.module_src
    if record.class_name != "Generator":
        raise ImportError_(f"`G_ema` is a `{record.class_name}`, not a `Generator`")
    if "class SynthesisInput" in src:
        raise ImportError_("`G_ema` is a StyleGAN3 generator: export it to TorchScript with your NVIDIA "
                           "stylegan3 checkout (`mixgan import ... --nvlabs-src DIR`)")
    if "def modulated_conv2d" in src and "class SynthesisBlock" in src and "class MappingNetwork" in src:
        return "stylegan2"
    raise ImportError_("`G_ema` is a `Generator` of an unknown kind (not NVIDIA's StyleGAN2)")


def record_state_dict(record, prefix="", out=None, depth=0):
    """Parameters and persistent buffers of a record tree, under state_dict names."""
    if depth > 32:
        raise ImportError_("refused: the module tree is nested too deeply")
    out = collections.OrderedDict() if out is None else out
    st = record.state
    skip = st.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        for name, t in (st.get(key) or {}).items():
            if t is None or (key == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise ImportError_(f"`{prefix}{name}` is not a tensor")
            out[prefix + name] = t.detach().float().contiguous()
    for name, child in (st.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ImportError_(f"submodule `{prefix}{name}` is not an NVIDIA persistent object")
        record_state_dict(child, f"{prefix}{name}.", out, depth + 1)
    return out


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, torch.Tensor):
        return v.item()
    return v


GEN_KEYS = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"]


def nvidia_settings(record):
    kwargs = plain(record.state.get("_init_kwargs") or {})
    args = list(record.state.get("_init_args") or [])
    for k, v in zip(GEN_KEYS, args):
        kwargs.setdefault(k, plain(v))
    missing = [k for k in GEN_KEYS if k not in kwargs]
    if missing:
        raise ImportError_(f"`G_ema` lacks constructor arguments {missing}")
    gen = {k: kwargs[k] for k in GEN_KEYS}
    for table in ("mapping_kwargs", "synthesis_kwargs"):
        if kwargs.get(table):
            gen[table] = dict(kwargs[table])
    extra = sorted(set(kwargs) - set(GEN_KEYS) - {"mapping_kwargs", "synthesis_kwargs"})
    return gen, extra


# ----------------------------------------------------------------------------- rosinality

def read_rosinality(path):
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise ImportError_(f"not a readable torch checkpoint (weights only): {type(e).__name__}: {e}")
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        raise ImportError_("not a rosinality checkpoint: no `g_ema` state dict")
    sd = ckpt["g_ema"]
    if "latent_avg" not in ckpt:
        raise ImportError_("the checkpoint has no `latent_avg` (needed for truncation)")
    return sd, ckpt["latent_avg"].reshape(-1).float()


def rosinality_to_nvidia(sd, latent_avg):
    """rosinality/stylegan2-pytorch names and shapes to NVIDIA's G_ema.state_dict()."""
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    style_dim = sd["style.1.weight"].shape[1]
    n_convs = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)])
    log_size = n_convs // 2 + 2
    res = 2 ** log_size
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    for i in range(n_convs // 2):
        channels[2 ** (i + 3)] = sd[f"convs.{2 * i}.conv.weight"].shape[1]
    channel_max = channels[4]
    below = [(r, c) for r, c in channels.items() if c < channel_max]
    channel_base = min(below)[0] * min(below)[1] if below else channel_max * res
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise ImportError_(f"the channel counts {channels} do not follow NVIDIA's channel_base/channel_max rule")
    out = collections.OrderedDict()
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    out["mapping.w_avg"] = latent_avg
    filt = torch.tensor([1.0, 3.0, 3.0, 1.0])
    filt = torch.outer(filt, filt) / 64.0

    def styled(dst, src, noise, res_):
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape(())
        out[f"{dst}.noise_const"] = sd[f"noises.noise_{noise}"].reshape(res_, res_)
        out[f"{dst}.resample_filter"] = filt.clone()

    def torgb(dst, src):
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)

    out["synthesis.b4.const"] = sd["input.input"][0]
    out["synthesis.b4.resample_filter"] = filt.clone()
    styled("synthesis.b4.conv1", "conv1", 0, 4)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i in range(n_convs // 2):
        r = 2 ** (i + 3)
        b = f"synthesis.b{r}"
        out[f"{b}.resample_filter"] = filt.clone()
        styled(f"{b}.conv0", f"convs.{2 * i}", 2 * i + 1, r)
        styled(f"{b}.conv1", f"convs.{2 * i + 1}", 2 * i + 2, r)
        torgb(f"{b}.torgb", f"to_rgbs.{i}")
    gen = {"z_dim": style_dim, "c_dim": 0, "w_dim": style_dim, "img_resolution": res,
           "img_channels": out["synthesis.b4.torgb.weight"].shape[0],
           "mapping_kwargs": {"num_layers": n_mlp},
           "synthesis_kwargs": {"channel_base": channel_base, "channel_max": channel_max, "architecture": "skip"}}
    return {k: v.float().contiguous() for k, v in out.items()}, gen


# ----------------------------------------------------------------------------- TorchScript export

def export_with_nvlabs(src, nvlabs_src, out_dir, name, classes, seeds=(0, 1, 2, 42)):
    """Exports a StyleGAN3 (or StyleGAN2) snapshot to the TorchScript contract with the
    user's own NVIDIA source tree: this runs NVIDIA's code, which the user asked for by
    pointing at it. The networks run on their pure-PyTorch paths in fp32, and the traced
    modules are checked against the originals on a few seeds before anything is written."""
    import numpy as np
    sys.path.insert(0, os.path.abspath(nvlabs_src))
    try:
        import legacy  # NVIDIA's, from --nvlabs-src
    except ImportError as e:
        raise ImportError_(f"--nvlabs-src {nvlabs_src}: NVIDIA's `legacy` module does not import: {e}")
    with open(src, "rb") as fh:
        G = legacy.load_network_pkl(fh)["G_ema"].eval().requires_grad_(False).float()

    class Mapping(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.G = G

        def forward(self, z, c):
            return self.G.mapping(z, c, truncation_psi=1)

    class Synthesis(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.G = G

        def forward(self, ws):
            return self.G.synthesis(ws, noise_mode="const", force_fp32=True)

    torch.set_grad_enabled(False)

    def trace(n):
        z, c = torch.randn(n, G.z_dim), torch.zeros(n, G.c_dim)
        mapping = torch.jit.trace(Mapping(), (z, c), check_trace=False)
        return mapping, torch.jit.trace(Synthesis(), (mapping(z, c),), check_trace=False)

    def runs_at(mapping, synthesis, n):
        try:
            synthesis(mapping(torch.randn(n, G.z_dim), torch.zeros(n, G.c_dim)))
            return True
        except RuntimeError:
            return False

    # NVIDIA's StyleGAN3 layers turn the batch size into a constant while tracing (grouped
    # convolutions); such traces are redone at batch 1 and marked `batch = 1`, and mixgan
    # runs them one sample at a time.
    mapping, synthesis = trace(2)
    fixed = None
    if not (runs_at(mapping, synthesis, 1) and runs_at(mapping, synthesis, 3)):
        print("the traced modules accept only the batch size they were traced at; tracing at batch 1", flush=True)
        mapping, synthesis = trace(1)
        fixed = 1

    def traced(zs, cs):
        if fixed is None:
            return synthesis(mapping(zs, cs))
        return torch.cat([synthesis(mapping(zs[i:i + 1], cs[i:i + 1])) for i in range(zs.shape[0])])

    worst = 0.0
    for n, seed in enumerate(seeds):
        zs = torch.from_numpy(np.random.RandomState(seed).randn(n % 3 + 1, G.z_dim)).float()
        cs = torch.zeros(zs.shape[0], G.c_dim)
        if G.c_dim:
            cs[:, 0] = 1
        want = G.synthesis(G.mapping(zs, cs), noise_mode="const", force_fp32=True)
        worst = max(worst, (want - traced(zs, cs)).abs().max().item())
    if worst > 1e-4:
        raise ImportError_(f"the traced modules differ from NVIDIA's by {worst:.2e}; nothing was written")
    os.makedirs(out_dir, exist_ok=True)
    mapping.save(os.path.join(out_dir, "mapping.pt"))
    synthesis.save(os.path.join(out_dir, "synthesis.pt"))
    save_safetensors({"mapping.w_avg": G.mapping.w_avg.float()}, os.path.join(out_dir, "weights.safetensors"))
    gen = {"z_dim": G.z_dim, "c_dim": G.c_dim, "w_dim": G.w_dim, "img_resolution": G.img_resolution,
           "img_channels": G.img_channels}
    lines = [f"# exported from {os.path.basename(src)} by mixgan import --nvlabs-src",
             f"name = {json.dumps(name)}", f"classes = {toml_value(classes)}", 'kind = "torchscript"',
             'weights = "weights.safetensors"', "", "[generator]"]
    lines += [f"{k} = {v}" for k, v in gen.items()]
    lines += ["", "[torchscript]", 'mapping = "mapping.pt"', 'synthesis = "synthesis.pt"', f"num_ws = {G.num_ws}"]
    if fixed is not None:
        lines.append(f"batch = {fixed}")
    with open(os.path.join(out_dir, "model.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return gen, worst


# ----------------------------------------------------------------------------- output

def write_dir(out_dir, name, classes, gen, sd, source):
    os.makedirs(out_dir, exist_ok=True)
    save_safetensors(sd, os.path.join(out_dir, "weights.safetensors"))
    lines = [f"# imported from {os.path.basename(source)} by mixgan import",
             f"name = {json.dumps(name)}", f"classes = {toml_value(classes)}", 'kind = "stylegan2"',
             'weights = "weights.safetensors"', "", "[generator]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in gen.items() if not isinstance(v, dict)]
    for table in ("mapping_kwargs", "synthesis_kwargs"):
        if gen.get(table):
            lines += ["", f"[generator.{table}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in gen[table].items() if v is not None]
    with open(os.path.join(out_dir, "model.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def detect(path):
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        return "rosinality"
    if head[:1] == b"\x80":
        return "nvidia-pkl"
    raise ImportError_("neither a pickle (NVIDIA .pkl) nor a torch zip checkpoint (rosinality .pt)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("--name", required=True)
    p.add_argument("--classes", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="auto", choices=["auto", "nvidia-pkl", "rosinality"])
    p.add_argument("--nvlabs-src", help="your NVIDIA stylegan3 / stylegan2-ada-pytorch checkout: export to TorchScript with it")
    a = p.parse_args()
    try:
        if a.nvlabs_src:
            gen, worst = export_with_nvlabs(a.src, a.nvlabs_src, a.out, a.name, [c for c in a.classes.split(",") if c])
            print(json.dumps({"format": "nvidia-pkl", "kind": "torchscript", "generator": gen, "max_abs_diff": worst}))
            return
        fmt = detect(a.src) if a.format == "auto" else a.format
        print(f"reading {a.src} as {fmt}", file=sys.stderr)
        if fmt == "nvidia-pkl":
            record = read_nvidia_pickle(a.src)
            kind = generator_kind(record)
            gen, ignored = nvidia_settings(record)
            sd = record_state_dict(record)
        else:
            sd, latent_avg = read_rosinality(a.src)
            sd, gen = rosinality_to_nvidia(sd, latent_avg)
            kind, ignored = "stylegan2", []
        write_dir(a.out, a.name, [c for c in a.classes.split(",") if c], gen, sd, a.src)
    except ImportError_ as e:
        print(f"mixgan import: {e}", file=sys.stderr)
        sys.exit(2)
    except (OSError, KeyError) as e:
        print(f"mixgan import: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"format": fmt, "kind": kind, "generator": gen, "tensors": len(sd), "ignored_kwargs": ignored}))


if __name__ == "__main__":
    main()
