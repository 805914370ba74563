"""Analytic counting of operations and compulsory DRAM bytes, per layer and per model, without a GPU.

The model runs once on the ``meta`` device (shapes only, no memory, no arithmetic) under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that records every aten operator it issues, with
its shapes and the path of the module that issued it. The result is a tidy table in execution order, one
row per operator, that can later be joined to profiler kernels by module path and order.

Conventions (this study's, stated once here and in the book):

- **MACs** are the multiply-adds of convolutions and matrix products (what tensor cores execute);
  **FLOP = 2 x MACs** (STUDY.md: W counts 2 per multiply-add). Elementwise operators (norms,
  activations, adds, pools) count 0 FLOP but do count bytes. Biases are not counted as MACs.
- **Inference form**: a BatchNorm that directly follows a conv is folded into that conv (its weight and
  bias), so it costs no FLOP and no bytes; the conv gains a bias vector (counted in its weight bytes).
  LayerNorm, activations, adds and pools are separate layers and move their elementwise traffic.
- **Unfused bytes** (``bytes``): every operator reads its activation inputs and its weights once and
  writes its output once (``dtype_bytes`` per element for activations and weights alike).
- **Fused bytes** (``bytes_fused``): inside a fused block (by default every :class:`ConvFirstBlock` and
  :class:`MBConvBlock`) only the block input, the block's (folded) weights and the block output move;
  every other operator is unchanged. The fused-block accounting is the compulsory traffic of a
  depth-first kernel that keeps the wide intermediate tensors on chip.
- **Operational intensity** = FLOP / bytes.
- ``macs_fvcore`` adds the norm and pool terms that fvcore (used for timm's published GMACs) counts:
  2 per element for an inference BatchNorm with affine, 5 per element for LayerNorm/GroupNorm with
  affine, 1 per input element for adaptive average pooling. It exists only to compare with the cited
  numbers; the study's W is ``macs``.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterable, Sequence

import pandas as pd
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .blocks import BLOCK_TYPES, ConvFirstBlock, MBConvBlock, check_block_args, make_block
from .models import MODEL_SPECS, create
from .params import ParameterError

__all__ = ["BASELINE_MODELS", "FUSED_BLOCK_TYPES", "count_layers", "model_summary", "models_table",
           "block_accounting", "block_accounting_table", "intensity_table", "build_model_on_meta",
           "valid_model_names", "summarize_layers", "compare_with_published", "check_block_shapes"]

#: timm baselines the study counts and times (any timm model name also works).
BASELINE_MODELS = ("convnext_nano", "convnext_tiny", "convnext_small", "efficientnet_b0", "efficientnet_b1",
                   "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "resnet50", "mobilenetv3_large_100")

#: Block types whose whole residual block is one fused kernel in the "fused" accounting.
FUSED_BLOCK_TYPES: tuple[type[nn.Module], ...] = (ConvFirstBlock, MBConvBlock)

_CONV_OPS = {"convolution", "_convolution", "conv2d"}
_MATMUL_OPS = {"addmm", "mm", "bmm", "matmul", "linear", "baddbmm"}
_ACT_OPS = {"silu", "gelu", "relu", "hardswish", "sigmoid", "hardsigmoid", "tanh", "hardtanh", "mish",
            "elu", "leaky_relu", "relu6", "softplus", "clamp", "clamp_min"}
_ADD_OPS = {"add", "sub", "rsub"}
_MUL_OPS = {"mul", "div"}
_POOL_OPS = {"mean", "avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "max_pool2d",
             "max_pool2d_with_indices", "amax", "sum", "adaptive_max_pool2d"}
_COPY_OPS = {"clone", "_to_copy", "copy", "contiguous"}
_IGNORED_OPS = {"empty", "empty_like", "zeros", "ones", "full", "detach", "lift_fresh", "alias",
                "_local_scalar_dense", "as_strided", "sym_size", "sym_stride", "sym_numel", "zeros_like", "ones_like"}


def valid_model_names() -> list[str]:
    """Our family members plus the timm baselines (any other timm model name is accepted too)."""
    return list(MODEL_SPECS) + list(BASELINE_MODELS)


def build_model_on_meta(name: str) -> nn.Module:
    """Model ``name`` (ours or any timm model) on the meta device, in eval mode; no memory is allocated."""
    import timm

    if name not in MODEL_SPECS and not timm.is_model(name):
        raise ParameterError(f"model {name!r} is neither a family member nor a timm model; valid names "
                             f"include {valid_model_names()}")
    with torch.device("meta"):
        model = create(name) if name in MODEL_SPECS else timm.create_model(name, pretrained=False)
    return model.eval()


def _default_resolution(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return int(size[-1])


def _op_name(func) -> str:
    name = func.__name__ if hasattr(func, "__name__") else str(func)
    name = name.split(".")[0]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _shape_str(t) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else ""


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


def _kind(op: str, args: Sequence) -> str:
    if op in _CONV_OPS:
        weight, groups = args[1], args[8] if len(args) > 8 else 1
        c_out, c_in_per_group = weight.shape[0], weight.shape[1]
        spatial = weight.shape[2:]
        if groups == 1:
            return "conv_pointwise" if all(s == 1 for s in spatial) else "conv_dense"
        if c_in_per_group == 1 and c_out == groups:
            return "conv_depthwise"
        return "conv_grouped"
    if op in _MATMUL_OPS:
        return "linear"
    if "batch_norm" in op:
        return "norm_bn"
    if "layer_norm" in op or "group_norm" in op:
        return "norm"
    if op in _ACT_OPS:
        return "act"
    if op in _ADD_OPS:
        return "add"
    if op in _MUL_OPS:
        return "mul"
    if op in _POOL_OPS:
        return "pool"
    if op in _COPY_OPS:
        return "copy"
    if op == "cat":
        return "concat"
    return "other"


def _macs(op: str, args: Sequence, out: torch.Tensor) -> int:
    if op in _CONV_OPS:
        weight = args[1]
        return out.numel() * math.prod(weight.shape[1:])
    if op == "addmm":
        a, b = args[1], args[2]
        return a.shape[0] * a.shape[1] * b.shape[1]
    if op == "mm":
        return args[0].shape[0] * args[0].shape[1] * args[1].shape[1]
    if op in ("bmm", "baddbmm"):
        a, b = (args[1], args[2]) if op == "baddbmm" else (args[0], args[1])
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return 0


class _OpRecorder(TorchDispatchMode):
    """Records every aten operator with shapes, the issuing module path, and which inputs are weights."""

    def __init__(self, module_stack: list[tuple[str, str]], weight_ids: dict[int, tuple[int, bool]]):
        super().__init__()
        self.module_stack = module_stack
        self.weight_ids = weight_ids  # id(tensor) -> (numel of the underlying weight, is nn.Parameter)
        self.rows: list[dict] = []
        self.keep_alive: list = []
        self.last_conv_row: dict[int, int] = {}  # id(conv output) -> row index, for BatchNorm folding

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = _op_name(func)
        tensor_args = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        if getattr(func, "is_view", False) or op in _IGNORED_OPS or not tensor_args:
            # a view of a weight is still that weight (e.g. the transposed matrix of a Linear)
            if isinstance(out, torch.Tensor) and tensor_args and id(tensor_args[0]) in self.weight_ids:
                self.weight_ids[id(out)] = self.weight_ids[id(tensor_args[0])]
                self.keep_alive.append(out)
            return out
        self._record(op, list(args), tensor_args, out)
        return out

    def _record(self, op: str, args: list, tensor_args: list, out) -> None:
        out_t = _first_tensor(out)
        if out_t is None:
            return
        self.keep_alive.append(out)
        module, module_type = self.module_stack[-1] if self.module_stack else ("", "")
        weights = [t for t in tensor_args if id(t) in self.weight_ids]
        acts = [t for t in tensor_args if id(t) not in self.weight_ids]
        kind = _kind(op, args)
        row = {
            "module": module, "module_type": module_type, "op": op, "kind": kind,
            "in_shape": _shape_str(acts[0] if acts else tensor_args[0]), "out_shape": _shape_str(out_t),
            "c_in": None, "c_out": None, "k": None, "stride": None, "groups": None,
            "macs": _macs(op, args, out_t),
            "params": sum(self.weight_ids[id(t)][0] for t in weights if self.weight_ids[id(t)][1]),
            "weight_elems": sum(self.weight_ids[id(t)][0] for t in weights),
            "act_elems": out_t.numel(),
            "read_elems": sum(t.numel() for t in acts),
            "write_elems": out_t.numel(),
            "fvcore_extra": 0,
            "folded": False,
        }
        if kind.startswith("conv"):
            weight = args[1]
            row.update(c_in=args[0].shape[1], c_out=weight.shape[0], k=weight.shape[-1],
                       stride=args[3][0] if len(args) > 3 else 1, groups=args[8] if len(args) > 8 else 1)
        elif kind == "linear":
            row.update(c_in=(args[1] if op == "addmm" else args[0]).shape[-1], c_out=out_t.shape[-1])
        elif kind in ("norm", "norm_bn"):
            row["c_in"] = row["c_out"] = (args[0].shape[1] if kind == "norm_bn" else args[0].shape[-1])
        affine = any(self.weight_ids.get(id(t), (0, False))[1] for t in weights)
        if kind == "norm_bn":
            row["fvcore_extra"] = acts[0].numel() * (2 if affine else 1)
            conv_idx = self.last_conv_row.get(id(acts[0]))
            if conv_idx is not None:  # inference form: fold into the conv, whose bias it becomes
                conv_row = self.rows[conv_idx]
                if not conv_row.get("has_bias"):
                    conv_row["weight_elems"] += row["c_out"]
                    conv_row["has_bias"] = True
                row.update(read_elems=0, write_elems=0, weight_elems=0, act_elems=0, folded=True)
        elif kind == "norm":
            row["fvcore_extra"] = acts[0].numel() * (5 if affine else 4)
        elif kind == "pool" and ("AdaptiveAvgPool" in module_type or "SelectAdaptivePool" in module_type):
            row["fvcore_extra"] = acts[0].numel() if acts else 0
        if kind.startswith("conv"):
            row["has_bias"] = len(args) > 2 and isinstance(args[2], torch.Tensor)
            self.last_conv_row[id(out_t)] = len(self.rows)
        self.rows.append(row)


@contextmanager
def _module_tracking(model: nn.Module, stack: list, fused_types: tuple, fused_spans: list):
    """Keep ``stack`` = [(path, type name), ...] of the modules currently running; note fused blocks."""
    handles = []

    def pre_hook(path, mod):
        def hook(module, inputs):
            stack.append((path, type(module).__name__))
            if fused_types and isinstance(module, fused_types) and not any(
                    s["open"] for s in fused_spans):
                numel = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
                fused_spans.append({"path": path, "in_elems": numel, "open": True, "first": None})
        return hook

    def post_hook(path):
        def hook(module, inputs, output):
            stack.pop()
            if fused_spans and fused_spans[-1]["open"] and fused_spans[-1]["path"] == path:
                fused_spans[-1]["open"] = False
                fused_spans[-1]["out_elems"] = output.numel() if isinstance(output, torch.Tensor) else 0
        return hook

    for path, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(pre_hook(path, mod)))
        handles.append(mod.register_forward_hook(post_hook(path)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _as_model(model_or_name) -> tuple[nn.Module, str]:
    if isinstance(model_or_name, str):
        return build_model_on_meta(model_or_name), model_or_name
    if not isinstance(model_or_name, nn.Module):
        raise ParameterError(f"model must be a name or an nn.Module, got {type(model_or_name).__name__}")
    return model_or_name.eval(), type(model_or_name).__name__


def count_layers(model, *, batch: int = 1, resolution: int | None = None, dtype_bytes: int = 2,
                 fused_types: Iterable[type[nn.Module]] | None = FUSED_BLOCK_TYPES,
                 input_shape: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-operator counts of ``model`` (a name or an ``nn.Module``) for one forward pass of ``batch`` images.

    ``resolution`` defaults to the model's own input size (224 for ours). ``input_shape`` (N, C, H, W)
    overrides batch and resolution, for single blocks. A model that is not on the meta device is copied
    there for the count; the model passed in is not changed.

    Returns one row per aten operator, in execution order, with columns: ``order, module, module_type, op,
    kind, in_shape, out_shape, c_in, c_out, k, stride, groups, macs, flop, params, weight_elems, act_elems,
    bytes_read, bytes_written, bytes, intensity, fused_block, bytes_fused, folded, macs_fvcore``.
    Byte columns are for the whole batch; weights are read once per batch.
    """
    model, _ = _as_model(model)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ParameterError(f"batch={batch!r} must be a positive integer")
    if dtype_bytes not in (1, 2, 4, 8):
        raise ParameterError(f"dtype_bytes={dtype_bytes!r} is not allowed; choose one of [1, 2, 4, 8]")
    if input_shape is None:
        res = resolution or _default_resolution(model)
        in_chans = getattr(model, "in_chans", None) or 3
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is not None:
            in_chans = first_conv.in_channels
        input_shape = (batch, in_chans, res, res)
    batch = input_shape[0]
    if any(t.device.type != "meta" for t in list(model.parameters()) + list(model.buffers())):
        model = copy.deepcopy(model).to("meta").eval()
    weight_ids: dict[int, tuple[int, bool]] = {id(p): (p.numel(), True) for p in model.parameters()}
    weight_ids.update({id(b): (b.numel(), False) for b in model.buffers()})
    stack: list = []
    spans: list = []
    fused_types = tuple(fused_types or ())
    recorder = _OpRecorder(stack, weight_ids)
    x = torch.empty(*input_shape, device="meta")
    with torch.no_grad(), _module_tracking(model, stack, fused_types, spans), recorder:
        model(x)

    df = pd.DataFrame(recorder.rows).drop(columns=["has_bias"], errors="ignore")
    for col in ("c_in", "c_out", "k", "stride", "groups"):
        df[col] = df[col].astype("Int64")
    df.insert(0, "order", range(len(df)))
    df["flop"] = 2 * df["macs"]
    df["bytes_read"] = (df["read_elems"] + df["weight_elems"]) * dtype_bytes
    df["bytes_written"] = df["write_elems"] * dtype_bytes
    df["bytes"] = df["bytes_read"] + df["bytes_written"]
    df["macs_fvcore"] = df["macs"] + df["fvcore_extra"]

    # fused accounting: rows inside a fused block move only the block's input, weights and output
    df["fused_block"] = ""
    df["bytes_fused"] = df["bytes"].astype("int64")
    for span in spans:
        p = span["path"]
        inside = (df["module"] == p) | df["module"].str.startswith(p + ".") if p else df["module"].notna()
        idx = df.index[inside]
        if len(idx) == 0:
            continue
        df.loc[idx, "fused_block"] = p
        df.loc[idx, "bytes_fused"] = df.loc[idx, "weight_elems"] * dtype_bytes
        df.loc[idx[0], "bytes_fused"] += span["in_elems"] * dtype_bytes
        df.loc[idx[-1], "bytes_fused"] += span.get("out_elems", 0) * dtype_bytes

    df["intensity"] = df["flop"] / df["bytes"].where(df["bytes"] > 0)
    df.attrs.update(batch=batch, dtype_bytes=dtype_bytes, input_shape=tuple(input_shape),
                    params_total=sum(p.numel() for p in model.parameters()))
    cols = ["order", "module", "module_type", "op", "kind", "in_shape", "out_shape", "c_in", "c_out", "k",
            "stride", "groups", "macs", "flop", "params", "weight_elems", "act_elems", "bytes_read",
            "bytes_written", "bytes", "intensity", "fused_block", "bytes_fused", "folded", "macs_fvcore"]
    return df[cols]


def summarize_layers(layers: pd.DataFrame) -> dict:
    """Whole-model totals of a :func:`count_layers` table; per-image numbers divide by the batch."""
    batch = layers.attrs.get("batch", 1)
    flop = float(layers["flop"].sum())
    unfused, fused = float(layers["bytes"].sum()), float(layers["bytes_fused"].sum())
    matmul_like = layers["kind"].str.startswith("conv") | (layers["kind"] == "linear")
    return {
        "params_m": layers.attrs.get("params_total", int(layers["params"].sum())) / 1e6,
        "gmac": layers["macs"].sum() / batch / 1e9,
        "gflop": flop / batch / 1e9,
        "gmac_fvcore": layers["macs_fvcore"].sum() / batch / 1e9,
        "activations_m": layers.loc[matmul_like, "act_elems"].sum() / batch / 1e6,
        "act_elems_all_m": layers["act_elems"].sum() / batch / 1e6,
        "bytes_unfused_mb": unfused / batch / 1e6,
        "bytes_fused_mb": fused / batch / 1e6,
        "intensity_unfused": flop / unfused if unfused else float("nan"),
        "intensity_fused": flop / fused if fused else float("nan"),
        "fused_blocks": int(layers.loc[layers["fused_block"] != "", "fused_block"].nunique()),
        "operators": int((~layers["folded"]).sum()),
    }


def model_summary(model, *, batch: int = 1, resolution: int | None = None, dtype_bytes: int = 2) -> dict:
    """Totals for one model: params (M), GMAC and GFLOP per image, activations (M, conv and linear outputs,
    as fvcore counts them), unfused and fused DRAM MB per image at this batch, intensities (FLOP/B)."""
    layers = count_layers(model, batch=batch, resolution=resolution, dtype_bytes=dtype_bytes)
    out = {"model": model if isinstance(model, str) else type(model).__name__,
           "resolution": layers.attrs["input_shape"][-1], "batch": batch, "dtype_bytes": dtype_bytes}
    out.update(summarize_layers(layers))
    return out


def models_table(names: Sequence[str], *, batch: int = 1, resolution: int | None = None,
                 dtype_bytes: int = 2, progress: bool = False) -> pd.DataFrame:
    """:func:`model_summary` for each name, one row per model, with ``family`` ('ours' or 'timm')."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ParameterError(f"model names must be strings, got {bad}")
    iterator = names
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(names, desc="counting models")
    rows = []
    for name in iterator:
        row = model_summary(name, batch=batch, resolution=resolution, dtype_bytes=dtype_bytes)
        row["family"] = "ours" if name in MODEL_SPECS else "timm"
        rows.append(row)
    df = pd.DataFrame(rows)
    first = ["model", "family", "resolution"]
    return df[first + [c for c in df.columns if c not in first]]


def block_accounting(block: str, channels: int, height: int, width: int | None = None, expansion: int = 4,
                     *, batch: int = 1, dtype_bytes: int = 2, group_width: int = 8,
                     kernel_size: int | None = None) -> dict:
    """FLOP and compulsory bytes of one block shape, fused (one kernel) and unfused (one kernel per layer).

    ``block`` is 'convfirst', 'mbconv' or 'convnext' (for ConvNeXt the fused number is hypothetical: no
    such kernel is in this study). Weights are included in the bytes (read once per batch). The roofline
    floor of a kernel is ``max(flop / P, bytes / B)``.
    """
    if block not in BLOCK_TYPES:
        raise ParameterError(f"block={block!r} is not allowed; choose one of {list(BLOCK_TYPES)}")
    width = height if width is None else width
    kwargs = {}
    if block != "convnext":
        kwargs["group_width"] = group_width
    if kernel_size is not None:
        kwargs["kernel_size"] = kernel_size
    with torch.device("meta"):
        module = make_block(block, channels, expansion=expansion, **kwargs).eval()
    layers = count_layers(module, input_shape=(batch, channels, height, width), dtype_bytes=dtype_bytes,
                          fused_types=(type(module),))
    flop = int(layers["flop"].sum())
    unfused, fused = int(layers["bytes"].sum()), int(layers["bytes_fused"].sum())
    weight_bytes = int(layers["weight_elems"].sum()) * dtype_bytes
    return {"block": block, "C": channels, "H": height, "W": width, "E": expansion,
            "group_width": module.group_width, "kernel_size": module.kernel_size, "batch": batch,
            "dtype_bytes": dtype_bytes, "macs": flop // 2, "flop": flop, "bytes_unfused": unfused,
            "bytes_fused": fused, "weight_bytes": weight_bytes,
            "intensity_unfused": flop / unfused, "intensity_fused": flop / fused,
            "operators_unfused": int((~layers["folded"]).sum())}


def block_accounting_table(shapes: Iterable, *, batch: int = 1, dtype_bytes: int = 2) -> pd.DataFrame:
    """:func:`block_accounting` for each shape, given as dicts or tuples ``(block, C, H, W, E)``
    (a :func:`convfirst.models.family_block_shapes` DataFrame works too)."""
    if isinstance(shapes, pd.DataFrame):
        shapes = shapes.to_dict("records")
    rows = []
    for s in shapes:
        if isinstance(s, dict):
            extra = {k: s[k] for k in ("group_width", "kernel_size") if k in s and s["block"] != "convnext"}
            if s.get("block") == "convnext" and "kernel_size" in s:
                extra["kernel_size"] = s["kernel_size"]
            rows.append(block_accounting(s["block"], s["C"], s["H"], s.get("W"), s.get("E", 4), batch=batch,
                                         dtype_bytes=dtype_bytes, **extra))
        else:
            block, c, h, w, e = s
            rows.append(block_accounting(block, c, h, w, e, batch=batch, dtype_bytes=dtype_bytes))
    return pd.DataFrame(rows)


def _per_pixel(module: nn.Module, channels: int, dtype_bytes: int, fused: bool) -> tuple[float, float]:
    """FLOP and activation bytes per output pixel of ``module`` (weights ignored), counted on meta."""
    side = 8
    layers = count_layers(module, input_shape=(1, channels, side, side), dtype_bytes=dtype_bytes,
                          fused_types=(type(module),) if fused else ())
    pixels = side * side
    act_bytes = (layers["bytes_fused"] if fused else layers["bytes"]) - layers["weight_elems"] * dtype_bytes
    return layers["flop"].sum() / pixels, act_bytes.sum() / pixels


def intensity_table(channels: int = 64, expansion: int = 4, group_width: int = 8, kernel_size: int = 3,
                    depthwise_kernel_size: int = 7, dtype_bytes: int = 2) -> pd.DataFrame:
    """Operational intensity of conv layer types per output pixel, weights ignored (STUDY.md section 3).

    Each row is counted on the meta device from a real layer or block and sits next to its closed form,
    so the table is computed, not typed: ``flop_per_pixel``, ``bytes_per_pixel``, ``intensity`` (counted)
    and ``intensity_closed_form`` (the algebra) must agree.
    """
    c, e, g, k, kd, b = channels, expansion, group_width, kernel_size, depthwise_kernel_size, dtype_bytes
    with torch.device("meta"):
        layers = [
            (f"depthwise {k}x{k}", nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), False,
             f"k^2/{b}", k * k / b),
            (f"depthwise {kd}x{kd}", nn.Conv2d(c, c, kd, padding=kd // 2, groups=c, bias=False), False,
             f"k^2/{b}", kd * kd / b),
            (f"grouped {k}x{k}, group width {g}", nn.Conv2d(c, c, k, padding=k // 2, groups=c // g, bias=False),
             False, f"g*k^2/{b}", g * k * k / b),
            (f"1x1 C->{e}C", nn.Conv2d(c, e * c, 1, bias=False), False, f"2*E*C/({b}*(1+E))",
             2 * e * c / (b * (1 + e))),
            ("ConvFirst block, unfused", ConvFirstBlock(c, e, g, k), False, "(see rows above, summed)", None),
            ("ConvFirst block, fused", ConvFirstBlock(c, e, g, k), True, f"(g*k^2 + 2*E*C)/{b}",
             (g * k * k + 2 * e * c) / b),
            ("MBConv block, unfused", MBConvBlock(c, e, g, k), False, "", None),
            ("MBConv block, fused", MBConvBlock(c, e, g, k), True, f"E*(g*k^2 + 2*C)/{b}",
             e * (g * k * k + 2 * c) / b),
        ]
    rows = []
    for name, module, fused, formula, closed in layers:
        flop, nbytes = _per_pixel(module.eval(), c, b, fused)
        rows.append({"layer": name, "C": c, "E": e, "group_width": g, "kernel_size": k,
                     "flop_per_pixel": flop, "bytes_per_pixel": nbytes, "intensity": flop / nbytes,
                     "closed_form": formula, "intensity_closed_form": closed})
    return pd.DataFrame(rows)


def compare_with_published(cited: pd.DataFrame) -> pd.DataFrame:
    """Counted numbers next to the published ones of a cited table (columns model, img_size,
    param_count_m, gmacs, macts_m, source), each model counted at its published input size."""
    rows = []
    for row in cited.itertuples():
        ours = model_summary(row.model, resolution=int(row.img_size))
        rows.append({"model": row.model, "img_size": int(row.img_size),
                     "GMACs published": row.gmacs, "GMACs counted (fvcore terms)": ours["gmac_fvcore"],
                     "GMAC counted (conv+matmul only)": ours["gmac"],
                     "params (M) published": row.param_count_m, "params (M) counted": ours["params_m"],
                     "activations (M) published": row.macts_m, "activations (M) counted": ours["activations_m"],
                     "GMACs difference %": 100 * (ours["gmac_fvcore"] / row.gmacs - 1),
                     "source": row.source})
    return pd.DataFrame(rows)


def check_block_shapes(shapes) -> list[dict]:
    """Validate a list of block shapes ``[block, C, H]`` or ``[block, C, H, E]`` (a notebook parameter) and
    return them as dicts for :func:`block_accounting_table`; a :class:`ParameterError` names what is wrong."""
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, (list, tuple)) or not shapes:
        raise ParameterError(f"parameter block_shapes must be a non-empty list of [block, C, H] or "
                             f"[block, C, H, E], got {shapes!r}")
    out = []
    for i, s in enumerate(shapes):
        if not isinstance(s, (list, tuple)) or len(s) not in (3, 4):
            raise ParameterError(f"parameter block_shapes[{i}]={s!r} must be [block, C, H] or [block, C, H, E]")
        block, c, h, *rest = s
        if block not in BLOCK_TYPES:
            raise ParameterError(f"parameter block_shapes[{i}]: block {block!r} is not allowed; choose one of "
                                 f"{list(BLOCK_TYPES)}")
        for name, v in (("C", c), ("H", h), ("E", rest[0] if rest else 4)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ParameterError(f"parameter block_shapes[{i}]: {name}={v!r} must be a positive integer")
        e = rest[0] if rest else 4
        try:
            check_block_args(c, e, None if block == "convnext" else 8, 7 if block == "convnext" else 3,
                             grouped_channels=e * c if block == "mbconv" else c)
        except ParameterError as err:
            raise ParameterError(f"parameter block_shapes[{i}]={list(s)!r}: {err}") from None
        out.append({"block": block, "C": c, "H": h, "W": h, "E": e})
    return out
