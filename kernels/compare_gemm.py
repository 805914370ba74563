"""Our epilogue-fused GEMM against cuBLAS + PyTorch elementwise kernels, on one GPU, in one call.

What it measures (``NOTES_gemm.md`` holds the outcome):

1. correctness: every autotuning candidate of :mod:`convfirst.kernels.gemm` at odd sizes (M not a multiple
   of any tile, K not a multiple of 64, with and without SiLU and residual) and the patchify conv at stem and
   downsampling shapes, NaN-poisoned outputs against an fp32 reference;
2. the 1x1 layers of the unfused block sequence at batch 256 (expand + SiLU, project + residual), cuBLAS
   ``addmm`` + SiLU / add against the fused epilogue (autotuned);
3. the whole unfused sequence per block shape with each backend (``gemm="cublas"`` / ``"triton"``);
4. the patchify convs of the families (stem 4x4/4, downsampling 2x2/2) as cuDNN conv + bias (what a folded
   BatchNorm gives), cuDNN conv + BatchNorm (unfolded), the gathered-rows ``addmm`` and our kernel;
5. (``--parts epilogue``, not by default) the 1x1 layers with and without their epilogue (the expanding
   layer's SiLU, the projecting layer's residual add), beside cuBLAS's matmul alone.

    python -m convfirst.kernels.compare_gemm --out results/gemm
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error
from convfirst.provenance import environment_info, with_provenance
from convfirst.timing import bench_ms, l2_rotation_count

from . import gemm, gemm_ws
from ._common import LAST_COMPILED, launch_kwargs

#: Block shapes whose 1x1 layers run through the unfused sequence in the planned families (late stages of
#: ConvFirstNet-T/H) or are compared in the block benchmark (MBConv).
SEQUENCE_SHAPES = (BlockShape("convfirst", 96, 56, 56), BlockShape("convfirst", 192, 28, 28),
                   BlockShape("convfirst", 256, 14, 14), BlockShape("convfirst", 384, 14, 14),
                   BlockShape("convfirst", 512, 7, 7), BlockShape("convfirst", 768, 7, 7),
                   BlockShape("mbconv", 64, 56, 56), BlockShape("mbconv", 128, 28, 28),
                   BlockShape("mbconv", 256, 14, 14))
#: (name, C_in, C_out, patch, input H = W): the stem and downsampling convs of ConvFirstNet-T and -H.
PATCH_SHAPES = (("stem-t", 3, 96, 4, 224), ("down-t1", 96, 192, 2, 56), ("down-t2", 192, 384, 2, 28),
                ("down-t3", 384, 768, 2, 14), ("stem-h", 3, 64, 4, 224), ("down-h1", 64, 128, 2, 56),
                ("down-h2", 128, 256, 2, 28), ("down-h3", 256, 512, 2, 14))
#: (M, K, N) checked with every candidate config: odd M, K below/above/not a multiple of 64, N not of 64, and an
#: expanding layer of 256@14 in shape (K = 256, N = 4K) at an odd M.
CHECK_GEMMS = ((1000, 96, 384), (777, 384, 96), (257, 48, 80), (130, 1536, 384), (300, 80, 96), (515, 256, 1024))


def check_rows(dtype=torch.bfloat16, device="cuda", seed=0) -> list[dict]:
    """Every candidate config at the ``CHECK_GEMMS`` sizes, every epilogue, poisoned outputs; and the patch convs."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    tol = TOLERANCE[str(dtype).split(".")[-1]]
    configs = ([("pointer", launch_kwargs(cf)) for cf in gemm.gemm_configs()]
               + [("tma", launch_kwargs(cf)) for cf in gemm.tma_configs()])
    if gemm_ws.ws_available(torch.device(device)):
        configs += [("gluon-ws", cf) for cf in gemm_ws.ws_configs()]
    for m, k, n in CHECK_GEMMS:
        a = torch.randn(m, k, generator=gen).to(device, dtype)
        w_t = (torch.randn(k, n, generator=gen) / math.sqrt(k)).to(device, dtype)
        bias = (0.1 * torch.randn(n, generator=gen)).to(device)
        res = torch.randn(m, n, generator=gen).to(device, dtype)
        for act, residual in (("none", None), ("silu", None), ("none", res)):
            ref = gemm.matmul_reference(a, w_t, bias, act, residual)
            for form, cf in configs:
                if form == "tma" and not gemm.tma_config_fits(cf, residual is not None):
                    continue
                out = torch.full((m, n), float("nan"), device=device, dtype=dtype)
                gemm.launch_matmul(a, w_t, bias, act, residual, config=cf, out=out, form=form)
                torch.cuda.synchronize()
                err = relative_error(out, ref)
                k_ = LAST_COMPILED["gemm"]
                rows.append({"check": "matmul", "M": m, "K": k, "N": n, "act": act, "form": form,
                             "residual": residual is not None, "config": str(cf), "rel_err": err,
                             "regs": getattr(k_, "n_regs", None), "spills": getattr(k_, "n_spills", None),
                             "passed": bool(err < tol)})
    for name, cin, cout, patch, hw in PATCH_SHAPES:
        x = torch.randn(2, cin, hw, hw, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(cout, cin, patch, patch, generator=gen) / math.sqrt(cin * patch * patch)).to(device, dtype)
        bias = (0.1 * torch.randn(cout, generator=gen)).to(device)
        ref = F.conv2d(x.double(), weight.double(), bias.double(), stride=patch)
        out = torch.full((2, cout, hw // patch, hw // patch), float("nan"), device=device,
                         dtype=dtype).contiguous(memory_format=torch.channels_last)
        gemm.launch_patchify(x, gemm.patchify_weight(weight), bias, patch, out=out)
        torch.cuda.synchronize()
        err = relative_error(out, ref)
        rows.append({"check": "patchify", "shape": name, "config": "autotuned", "rel_err": err,
                     "passed": bool(err < tol)})
    return rows


def _time(fn, inputs, graphs):
    return bench_ms(fn, inputs, cuda_graph=graphs)


def _layers(shape: BlockShape, batch: int, dtype, layers=("expand", "project")):
    """The 1x1 layers of one block shape as timing cases: (layer, M, K, N, act, inputs, w_t, bias, nbytes), with
    ``inputs`` enough (a, residual or None) sets to rotate past the L2 and an fp32 ``bias``."""
    m, c, hid = batch * shape.H * shape.W, shape.C, shape.E * shape.C
    for layer in layers:
        project = layer == "project"
        k, n, act = (hid, c, "none") if project else (c, hid, "silu")
        nbytes = 2 * (m * k + k * n + m * n * (2 if project else 1))
        inputs = [(torch.randn(m, k, device="cuda", dtype=dtype),
                   torch.randn(m, n, device="cuda", dtype=dtype) if project else None)
                  for _ in range(l2_rotation_count(nbytes))]
        w_t = (torch.randn(k, n, device="cuda") / math.sqrt(k)).to(dtype)
        yield layer, m, k, n, act, inputs, w_t, 0.1 * torch.randn(n, device="cuda"), nbytes


def gemm_rows(batch: int, dtype=torch.bfloat16, graphs: bool = True, shapes=SEQUENCE_SHAPES,
              gluon: bool = True) -> list[dict]:
    """The expand and project layers of each block in ``shapes``: cuBLAS + PyTorch epilogue vs ours (the Gluon
    tiles too unless ``gluon`` is False)."""
    rows = []
    for shape in tqdm(shapes, desc="1x1 layers"):
        c = shape.C
        for layer, m, k, n, act, inputs, w_t, bias, nbytes in _layers(shape, batch, dtype):
            bias_lp = bias.to(dtype)

            def cublas(a, r):
                out = torch.addmm(bias_lp, a, w_t)
                return F.silu(out) if act == "silu" else out.add_(r)

            def ours(form):
                return lambda a, r: gemm.launch_matmul(a, w_t, bias, act, r, form=form)

            def ws(cf):
                return lambda a, r: gemm.launch_matmul(a, w_t, bias, act, r, config=cf, form="gluon-ws")

            def record(impl, ms, err, config):
                rows.append({"part": "gemm", "block": shape.block, "C": c, "H": shape.H, "layer": layer,
                             "M": m, "K": k, "N": n, "impl": impl, "ms": ms, "tflops": 2 * m * k * n / ms / 1e9,
                             "gbps": nbytes / ms / 1e6, "rel_err": err, "config": config, "batch": batch,
                             "cuda_graph": graphs})

            a0, r0 = inputs[0]
            ref = gemm.matmul_reference(a0, w_t, bias, act, r0)
            if gluon and gemm_ws.ws_available(a0.device):  # every Gluon tile checked and timed; a row per schedule
                for impl, ordered in (("gluon-ws", False), ("gluon-ws-ordered", True)):
                    timed = []
                    for cf in gemm_ws.ws_configs(ordered=ordered):
                        fn = ws(cf)
                        err = relative_error(fn(a0, r0), ref)
                        timed.append((_time(fn, inputs, graphs), err, cf))
                    best = min(timed, key=lambda t: t[0])
                    record(impl, best[0], max(t[1] for t in timed), str(best[2]))
            for impl, fn in (("cublas", cublas), ("triton-pointer", ours("pointer")), ("triton-tma", ours("tma"))):
                err = relative_error(fn(a0, r0), ref)
                ms = _time(fn, inputs, graphs)
                tuner = {"triton-pointer": gemm._launcher, "triton-tma": gemm._tma_launcher}.get(impl)
                tuned = getattr(tuner() if tuner else None, "best_config", None)
                record(impl, ms, err, str(tuned) if tuned else "")
    return rows


def epilogue_rows(batch: int, dtype=torch.bfloat16, graphs: bool = True, shapes=SEQUENCE_SHAPES,
                  layers=("expand", "project")) -> list[dict]:
    """What the epilogues cost: each block's expanding layer with our TMA kernel with and without its SiLU, and
    its projecting layer with and without its residual add, each beside cuBLAS's matmul alone (``torch.mm``, no
    bias) and cuBLAS with the epilogue as separate PyTorch kernels (``addmm`` then ``F.silu`` or ``add_``)."""
    rows = []
    for shape in tqdm(shapes, desc="epilogues"):
        c = shape.C
        for layer, m, k, n, act, inputs, w_t, bias, nbytes in _layers(shape, batch, dtype, layers):
            project = layer == "project"
            bias_lp = bias.to(dtype)
            bare = "triton-tma-no-residual" if project else "triton-tma-no-silu"
            impls = {"triton-tma": lambda a, r: gemm.launch_matmul(a, w_t, bias, act, r, form="tma"),
                     bare: lambda a, r: gemm.launch_matmul(a, w_t, bias, "none", form="tma"),
                     "cublas-mm": lambda a, r: torch.mm(a, w_t),
                     "cublas": (lambda a, r: torch.addmm(bias_lp, a, w_t).add_(r)) if project
                     else (lambda a, r: F.silu(torch.addmm(bias_lp, a, w_t)))}
            a0, r0 = inputs[0]
            refs = {"triton-tma": gemm.matmul_reference(a0, w_t, bias, act, r0),
                    bare: gemm.matmul_reference(a0, w_t, bias)}
            for impl, fn in impls.items():
                err = relative_error(fn(a0, r0), refs[impl]) if impl in refs else float("nan")
                ms = _time(fn, inputs, graphs)
                tuned = getattr(gemm._tma_launcher(), "best_config", None) if impl in refs else None
                rows.append({"part": "epilogue", "block": shape.block, "C": c, "H": shape.H, "layer": layer,
                             "M": m, "K": k, "N": n, "impl": impl, "ms": ms, "tflops": 2 * m * k * n / ms / 1e9,
                             "gbps": nbytes / ms / 1e6, "rel_err": err, "config": str(tuned) if tuned else "",
                             "batch": batch, "cuda_graph": graphs})
    return rows


def sequence_rows(batch: int, dtype: str = "bfloat16", graphs: bool = True, shapes=SEQUENCE_SHAPES) -> list[dict]:
    """The whole unfused sequence of each block shape with each GEMM backend."""
    from .unfused import convfirst_block_unfused, mbconv_block_unfused

    rows = []
    for shape in tqdm(shapes, desc="sequences"):
        case = BlockCase(shape, batch, dtype, n_inputs=1)
        x_bytes = case.inputs[0].numel() * 2
        case.inputs += [case.new_input(torch.Generator().manual_seed(i), "cuda")
                        for i in range(1, l2_rotation_count(3 * x_bytes))]
        run = convfirst_block_unfused if shape.block == "convfirst" else mbconv_block_unfused
        ref = case.reference(case.inputs[0])
        for backend in ("cublas", "triton"):
            fn = lambda x, b=backend, p=case.packed: run(x, p, gemm=b)  # noqa: E731
            err = relative_error(fn(case.inputs[0]), ref)
            ms = _time(fn, [(x,) for x in case.inputs], graphs)
            impl = backend if backend == "cublas" else f"triton-{gemm.DEFAULT_FORM}"
            rows.append({"part": "sequence", "block": shape.block, "C": shape.C, "H": shape.H, "impl": impl,
                         "ms": ms, "rel_err": err, "batch": batch, "cuda_graph": graphs})
        del case
        torch.cuda.empty_cache()
    return rows


def patch_rows(batch: int, dtype=torch.bfloat16, graphs: bool = True) -> list[dict]:
    """Stem and downsampling convs: cuDNN + bias, cuDNN + BatchNorm, gathered-rows addmm, our kernel (with the
    patch rows read value by value, and, where a row's values are not a multiple of 8, as padded runs)."""
    from .modules import PatchifyConv2d

    rows = []
    for name, cin, cout, patch, hw in tqdm(PATCH_SHAPES, desc="patchify convs"):
        conv = nn.Conv2d(cin, cout, patch, stride=patch).cuda().to(dtype).to(memory_format=torch.channels_last).eval()
        bare = nn.Sequential(nn.Conv2d(cin, cout, patch, stride=patch, bias=False), nn.BatchNorm2d(cout))
        bare = bare.cuda().to(dtype).to(memory_format=torch.channels_last).eval()
        kernel = PatchifyConv2d.from_conv(conv).eval()
        x_bytes = batch * cin * hw * hw * 2
        sets = l2_rotation_count(x_bytes)
        inputs = [(torch.randn(batch, cin, hw, hw, device="cuda", dtype=dtype)
                   .contiguous(memory_format=torch.channels_last),) for _ in range(sets)]
        ref = F.conv2d(inputs[0][0].float(), conv.weight.float(), conv.bias.float(), stride=patch)
        gathered = PatchifyConv2d.from_conv(conv).eval()
        gathered._uses_kernel = lambda x: False  # the addmm path on the same weights

        out_bytes = batch * cout * (hw // patch) ** 2 * 2
        flop = 2 * batch * (hw // patch) ** 2 * cin * patch * patch * cout
        impls = [("cudnn-bias", conv), ("cudnn-bn", bare), ("gather-addmm", gathered), ("triton", kernel)]
        if (patch * cin) % 8:  # patch rows that are read as padded runs (the stem's)
            impls.append(("triton-rowpad", kernel))
        default = gemm.PAD_PATCH_ROWS
        with torch.no_grad():
            for impl, fn in impls:
                gemm.PAD_PATCH_ROWS = impl == "triton-rowpad"  # "triton": the patch rows value by value
                try:
                    err = relative_error(fn(inputs[0][0]), ref) if impl != "cudnn-bn" else float("nan")
                    ms = _time(fn, inputs, graphs)
                finally:  # the module's setting is back whatever happened
                    gemm.PAD_PATCH_ROWS = default
                rows.append({"part": "patchify", "shape": name, "C": cin, "N": cout, "H": hw, "patch": patch,
                             "impl": impl, "ms": ms, "tflops": flop / ms / 1e9,
                             "gbps": (x_bytes + out_bytes) / ms / 1e6, "rel_err": err, "batch": batch,
                             "cuda_graph": graphs})
    return rows


def comparison_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The recorded comparison as one table per part (gemm, sequence, patchify): ms per case and implementation,
    from the most recent full run of each part (a later run of fewer cases does not replace it), with that run's
    date and commit in ``.attrs``."""
    tables = {}
    for part, sub in df.groupby("part", sort=False):
        keys = [c for c in ("block", "shape", "C", "H", "layer") if c in sub and sub[c].notna().any()]
        if part.endswith("-configs"):  # one row per tile, not a mean over them
            keys.append("config")
        # the most recent run that measured as many cases as any run did (a later run of a few shapes only,
        # such as a one-kernel experiment, does not replace the full table)
        cases = sub.groupby("date")[keys].apply(lambda d: len(d.drop_duplicates()))
        latest = sub[sub["date"] == cases[cases == cases.max()].index.max()]
        table = latest.pivot_table(index=keys, columns="impl", values="ms", sort=False)
        table.columns.name = "ms"
        table.attrs.update(date=latest["date"].iloc[0], commit=str(latest["commit"].iloc[0]),
                           gpu=latest["gpu"].iloc[0], batch=int(latest["batch"].iloc[0]))
        tables[part] = table
    return tables


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for compare_gemm.csv and checks_gemm.csv")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--parts", nargs="+", default=["checks", "gemm", "sequence", "patchify"],
                    choices=["checks", "gemm", "sequence", "patchify", "epilogue"])
    ap.add_argument("--no-gluon", action="store_true", help="leave the Gluon tiles out of the 1x1 layers' timing")
    ap.add_argument("--shapes", nargs="+", default=None, metavar="BLOCK:C@H",
                    help="only these of the sequence shapes, e.g. convfirst:256@14 mbconv:64@56 (default: all)")
    args = ap.parse_args()
    shapes = SEQUENCE_SHAPES
    if args.shapes:
        names = {f"{s.block}:{s.C}@{s.H}": s for s in SEQUENCE_SHAPES}
        unknown = [n for n in args.shapes if n not in names]
        if unknown:
            raise SystemExit(f"--shapes: unknown {unknown}; choose from {sorted(names)}")
        shapes = tuple(names[n] for n in args.shapes)
    if not torch.cuda.is_available():
        raise SystemExit("compare_gemm needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    rows, checks = [], []
    if "checks" in args.parts:
        checks = check_rows()
        pd.DataFrame(checks).pipe(with_provenance, env, dtype="bfloat16", layout="channels_last").to_csv(
            args.out / "checks_gemm.csv", index=False)
        failed = [c for c in checks if not c["passed"]]
        print(f"checks: {len(checks) - len(failed)}/{len(checks)} passed, max rel err "
              f"{max(c['rel_err'] for c in checks):.2e}")
        for c in failed:
            print("FAILED", c)
    if "gemm" in args.parts:
        rows += gemm_rows(args.batch, shapes=shapes, gluon=not args.no_gluon)
    if "sequence" in args.parts:
        rows += sequence_rows(args.batch, shapes=shapes)
    if "epilogue" in args.parts:
        rows += epilogue_rows(args.batch, shapes=shapes)
    if "patchify" in args.parts:
        rows += patch_rows(args.batch)
    if rows:
        df = pd.DataFrame(rows).pipe(with_provenance, env, dtype="bfloat16", layout="channels_last")
        df.to_csv(args.out / "compare_gemm.csv", index=False)
        pd.set_option("display.width", 200)
        for part, table in comparison_tables(df).items():
            print(f"\n{part} (ms, batch {args.batch}, bf16, CUDA graphs)\n{table.round(4).to_string()}")
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
