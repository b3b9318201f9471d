#!/usr/bin/env python3
"""Writes test checkpoints in the formats `mixgan import` reads, from a mixgan model
directory (for the tests; no third-party code involved):

  nvidia-pkl  a dict {G, D, G_ema, augment_pipe, training_set_kwargs} whose networks are
              records in the layout of NVIDIA's torch_utils.persistence: a reduce to
              `torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type,
              version, module_src, class_name, state}, state the module's __dict__.
  rosinality  torch.save({"g_ema": state_dict, "latent_avg": w_avg}) under rosinality's names.
  hostile     pickles that must be refused: a shell command on load, an unknown module,
              deep nesting, a truncated snapshot, a non-Generator G_ema, a StyleGAN3 G_ema.
"""
import argparse
import collections
import os
import pickle
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from sg2_reference import read_model  # noqa: E402

# Stand-in modules under NVIDIA's names, so that pickle writes references to them.
_persistence = types.ModuleType("torch_utils.persistence")
_dnnlib_util = types.ModuleType("dnnlib.util")


def _reconstruct_persistent_obj(meta):  # never called by the importer
    raise RuntimeError("fixture only")


class EasyDict(dict):
    pass


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
EasyDict.__module__ = "dnnlib.util"
EasyDict.__qualname__ = "EasyDict"
_dnnlib_util.EasyDict = EasyDict
sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
sys.modules["torch_utils.persistence"] = _persistence
sys.modules.setdefault("dnnlib", types.ModuleType("dnnlib"))
sys.modules["dnnlib.util"] = _dnnlib_util

SG2_SRC = "# fixture module\ndef modulated_conv2d(): pass\nclass MappingNetwork: pass\nclass SynthesisBlock: pass\nclass Generator: pass\n"
SG3_SRC = "# fixture module\nclass SynthesisInput: pass\nclass Generator: pass\n"


class Persistent:
    """Pickles as an NVIDIA persistent-object record."""

    def __init__(self, class_name, state, src=SG2_SRC):
        self.meta = dict(type="class", version=6, module_src=src, class_name=class_name, state=state)

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


def module_state(params, buffers, children, extra=None):
    state = {
        "training": False,
        "_parameters": collections.OrderedDict((k, torch.nn.Parameter(v, requires_grad=False)) for k, v in params.items()),
        "_buffers": collections.OrderedDict(buffers),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(children),
    }
    state.update(extra or {})
    return state


BUFFERS = ("w_avg", "noise_const", "resample_filter")


def tree(sd, prefix=""):
    """Nested records from a flat state dict (children named by the first dotted part)."""
    params, buffers, groups = {}, {}, collections.OrderedDict()
    for name, t in sd.items():
        head, _, rest = name.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = t
        elif head in BUFFERS:
            buffers[head] = t
        else:
            params[head] = t
    children = [(k, Persistent(k.capitalize(), module_state(*tree(v)[:3]))) for k, v in groups.items()]
    return params, buffers, children


def nvidia_pickle(model_dir, out, src=SG2_SRC, class_name="Generator"):
    s, sd = read_model(model_dir)
    import tomllib
    with open(os.path.join(model_dir, "model.toml"), "rb") as fh:
        gen = tomllib.load(fh)["generator"]
    kwargs = EasyDict({k: v for k, v in gen.items() if not isinstance(v, dict)})
    kwargs["mapping_kwargs"] = EasyDict(gen.get("mapping_kwargs", {}))
    kwargs["synthesis_kwargs"] = EasyDict(gen.get("synthesis_kwargs", {}))
    params, buffers, children = tree(sd)
    extra = {"_init_args": (), "_init_kwargs": kwargs, "z_dim": s.z_dim, "c_dim": s.c_dim, "w_dim": s.w_dim,
             "img_resolution": s.res, "img_channels": s.img_channels}
    g_ema = Persistent(class_name, module_state(params, buffers, children, extra), src)
    snapshot = {"G": g_ema, "D": Persistent("Discriminator", module_state({}, {}, [])), "G_ema": g_ema,
                "augment_pipe": None, "training_set_kwargs": {"path": "faces.zip", "resolution": s.res}}
    with open(out, "wb") as fh:
        pickle.dump(snapshot, fh)


def rosinality_pt(model_dir, out):
    s, sd = read_model(model_dir)
    g = collections.OrderedDict()
    for i in range(s.map["num_layers"]):
        g[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    g["input.input"] = sd["synthesis.b4.const"][None]

    def styled(src, dst, noise, res):
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        g[f"noises.noise_{noise}"] = sd[f"{src}.noise_const"].reshape(1, 1, res, res)

    def torgb(src, dst):
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)

    styled("synthesis.b4.conv1", "conv1", 0, 4)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i, res in enumerate(s.resolutions[1:]):
        styled(f"synthesis.b{res}.conv0", f"convs.{2 * i}", 2 * i + 1, res)
        styled(f"synthesis.b{res}.conv1", f"convs.{2 * i + 1}", 2 * i + 2, res)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{i}")
    torch.save({"g_ema": g, "latent_avg": sd["mapping.w_avg"], "args": {"size": s.res}}, out)


class Shell:
    """Runs a shell command when unpickled (the kind of pickle the importer must refuse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile(kind, out, model_dir=None, marker=None):
    if kind == "shell":
        data = {"G_ema": Shell(marker)}
    elif kind == "unknown-module":
        # {"G_ema": somebody_elses.package.Unknown()}, written opcode by opcode since the
        # module does not exist here either.
        with open(out, "wb") as fh:
            fh.write(b"\x80\x02}X\x05\x00\x00\x00G_emacsomebody_elses.package\nUnknown\n)Rs.")
        return
    elif kind == "deep":
        with open(out, "wb") as fh:
            # Written opcode by opcode: pickle.dumps itself would recurse too deeply.
            fh.write(b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b".")
        return
    elif kind == "truncated":
        nvidia_pickle(model_dir, out)
        size = os.path.getsize(out)
        with open(out, "r+b") as fh:
            fh.truncate(size // 2)
        return
    elif kind == "not-generator":
        nvidia_pickle(model_dir, out, class_name="Discriminator")
        return
    elif kind == "stylegan3":
        nvidia_pickle(model_dir, out, src=SG3_SRC)
        return
    else:
        raise SystemExit(f"unknown hostile kind {kind}")
    with open(out, "wb") as fh:
        pickle.dump(data, fh)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["nvidia-pkl", "rosinality", "shell", "unknown-module", "deep", "truncated",
                                    "not-generator", "stylegan3"])
    p.add_argument("--model")
    p.add_argument("--out", required=True)
    p.add_argument("--marker")
    a = p.parse_args()
    if a.kind == "nvidia-pkl":
        nvidia_pickle(a.model, a.out)
    elif a.kind == "rosinality":
        rosinality_pt(a.model, a.out)
    else:
        hostile(a.kind, a.out, a.model, a.marker)


if __name__ == "__main__":
    main()
