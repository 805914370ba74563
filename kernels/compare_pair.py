"""The 1x1 pair kernel (:mod:`pair_ws`) against the two epilogue-fused GEMMs it would replace, on one GPU.

1. checks: every candidate chunking at odd row counts (below one tile, a tile tail, batch 1 at 14x14), C = 64,
   128 and 256, bf16 and fp16, NaN-poisoned outputs against fp64;
2. timing at batch 256, CUDA graphs, rotating inputs past the L2: the pair kernel per chunking, our two GEMMs
   (form ``auto``, i.e. the faster of the TMA kernel and the ordered Gluon kernel per layer, and ``tma``), and
   cuBLAS's two products alone (``torch.mm``, no bias, SiLU or residual) as a reference.

    python -m convfirst.kernels.compare_pair --out results/pair
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from convfirst.bench_blocks import TOLERANCE, relative_error
from convfirst.provenance import environment_info, with_provenance
from convfirst.timing import bench_ms, l2_rotation_count

from . import gemm, pair_ws

#: (rows M, C, dtype) of the checks: a 14x14 image (batch 1), odd tails, a partial last tile at full size.
CHECKS = ((196, 256, torch.bfloat16), (1000, 256, torch.bfloat16), (1000, 256, torch.float16),
          (777, 128, torch.bfloat16), (300, 64, torch.bfloat16), (50, 256, torch.bfloat16),
          (128 * 132 * 3 + 5, 256, torch.bfloat16))
#: (C, H = W) of the timed block shapes (E = 4).
SHAPES = ((256, 14), (128, 28), (64, 56))


def pair_case(m: int, c: int, dtype=torch.bfloat16, seed: int = 0, expansion: int = 4):
    """Random rows, weights (fan-in scaled), fp32 biases and a residual: (y, we_t, b_e, wp_t, b_p, residual)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = expansion * c
    y = torch.randn(m, c, device="cuda", dtype=dtype, generator=g)
    we_t = (torch.randn(c, h, device="cuda", generator=g) / math.sqrt(c)).to(dtype)
    wp_t = (torch.randn(h, c, device="cuda", generator=g) / math.sqrt(h)).to(dtype)
    b_e = 0.1 * torch.randn(h, device="cuda", generator=g)
    b_p = 0.1 * torch.randn(c, device="cuda", generator=g)
    return y, we_t, b_e, wp_t, b_p, torch.randn(m, c, device="cuda", dtype=dtype, generator=g)


def run_pair(y, we_t, b_e, wp_t, b_p, residual, config, out=None):
    out = torch.empty_like(y) if out is None else out
    pair_ws.launch_pair(y, we_t, b_e, wp_t, b_p, residual, out, config)
    return out


def check_rows() -> list[dict]:
    rows = []
    for m, c, dtype in tqdm(CHECKS, desc="pair checks"):
        case = pair_case(m, c, dtype)
        ref = pair_ws.pair_reference(*case)
        for cf in pair_ws.pair_configs(c):
            out = torch.full((m, c), float("nan"), device="cuda", dtype=dtype)
            err = relative_error(run_pair(*case, cf, out=out), ref)
            rows.append({"check": "pair", "M": m, "K": c, "N": c, "act": "silu", "residual": True, "config": str(cf),
                         "rel_err": err, "passed": err < TOLERANCE[str(dtype).replace("torch.", "")],
                         "form": "gluon-pair", "dtype_checked": str(dtype).replace("torch.", "")})
    return rows


def timing_rows(batch: int) -> list[dict]:
    rows = []
    for c, hw in tqdm(SHAPES, desc="pair timing"):
        m = batch * hw * hw
        nbytes = 2 * (3 * m * c + 8 * c * c)
        sets = [pair_case(m, c, seed=i) for i in range(l2_rotation_count(nbytes))]
        _, we_t, b_e, wp_t, b_p, _ = sets[0]
        inputs = [(s[0], s[5]) for s in sets]

        def two(form):
            return lambda a, r: gemm.launch_matmul(gemm.launch_matmul(a, we_t, b_e, "silu", form=form), wp_t, b_p,
                                                   "none", r, form=form)
        impls = {("two-gemm", "auto"): two("auto"), ("two-gemm", "tma"): two("tma"),
                 ("cublas-mm-pair", ""): lambda a, r: torch.mm(torch.mm(a, we_t), wp_t)}
        for cf in pair_ws.pair_configs(c):
            impls[("gluon-pair", str(cf))] = (lambda cf: lambda a, r: run_pair(a, we_t, b_e, wp_t, b_p, r, cf))(cf)
        ref = pair_ws.pair_reference(*sets[0])
        for (impl, config), fn in impls.items():
            err = relative_error(fn(*inputs[0]), ref) if impl != "cublas-mm-pair" else float("nan")
            ms = bench_ms(fn, inputs, cuda_graph=True)
            rows.append({"part": "pair", "block": "convfirst", "C": c, "H": hw, "layer": "expand+project", "M": m,
                         "K": c, "N": c, "impl": impl, "ms": ms, "tflops": 4 * m * c * 4 * c / ms / 1e9,
                         "gbps": nbytes / ms / 1e6, "rel_err": err, "config": config, "batch": batch,
                         "cuda_graph": True})
        del sets, inputs
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for compare_pair.csv and checks_pair.csv")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not pair_ws.HAVE_GLUON:
        raise SystemExit("compare_pair needs a Hopper GPU and Triton's Gluon")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    checks = pd.DataFrame(check_rows()).pipe(with_provenance, env, dtype="bfloat16", layout="channels_last")
    checks.to_csv(args.out / "checks_pair.csv", index=False)
    print(f"checks: {int(checks.passed.sum())}/{len(checks)} passed, max rel err {checks.rel_err.max():.2e}")
    df = pd.DataFrame(timing_rows(args.batch)).pipe(with_provenance, env, dtype="bfloat16", layout="channels_last")
    df.to_csv(args.out / "compare_pair.csv", index=False)
    df["name"] = df["impl"] + " " + df["config"].str.replace(r"'CONSUMER_REGS': \d+, 'maxnreg': \d+", "", regex=True)
    print(df.pivot_table(index="name", columns="C", values="ms").round(4).to_string())
    return 0 if checks.passed.all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
