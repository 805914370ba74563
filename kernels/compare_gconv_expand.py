"""The grouped conv and the expanding layer of a ConvFirst block: two kernels (ours, g through DRAM) or one
(:mod:`gconv_expand`, g kept in shared memory), on one Hopper GPU.

1. correctness: the block computed with the one-kernel form (into a NaN-filled hidden buffer, so an element the
   kernel does not write fails) against the fp32 reference, at family and odd shapes, batch 1-3;
2. at batch 256, CUDA graphs, rotating inputs: the two layers as two kernels and as one, and the whole block as
   three launches (``unfused-triton``) and as two.

Rows with provenance go to ``--out``/gconv_expand.csv; append them to ``data/gconv_expand_<gpu>.csv`` with
:func:`convfirst.records.save_measurements`.

    python -m convfirst.kernels.compare_gconv_expand --out results/
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error
from convfirst.provenance import environment_info, with_provenance
from convfirst.timing import bench_ms, l2_rotation_count

from .gconv import grouped_conv3x3_gw8
from .gconv_expand import gconv_expand
from .gemm import matmul_bias_act
from .unfused import convfirst_block_gconv_expand, convfirst_block_unfused

CHECKS = ((256, 14, 14, 2), (256, 13, 11, 1), (384, 14, 14, 1), (512, 7, 7, 3), (64, 9, 15, 2),
          (128, 28, 28, 1), (192, 5, 3, 2))
TIMED = ((256, 14), (384, 14), (512, 7), (768, 7), (192, 28), (128, 28))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    rows = []

    def save():
        with_provenance(pd.DataFrame(rows), env, dtype="bfloat16", layout="channels_last").to_csv(
            out / "gconv_expand.csv", index=False)

    for c, h, w, n in CHECKS:
        case = BlockCase(BlockShape("convfirst", c, h, w), n, "bfloat16")
        x = case.inputs[0]
        hidden = torch.full((n * h * w, case.packed["we_t"].shape[1]), float("nan"), dtype=x.dtype, device=x.device)
        err = relative_error(convfirst_block_gconv_expand(x, case.packed, hidden), case.reference(x))
        rows.append({"part": "check", "C": c, "H": h, "W": w, "batch": n, "impl": "gconv-expand", "rel_err": err,
                     "passed": bool(err < TOLERANCE["bfloat16"])})
        # the two layers alone against our two kernels (the same bf16 rounding of g): which phase is wrong, if any
        p = case.packed
        g = grouped_conv3x3_gw8(x, p["w_taps"], p["b_g"])
        h_two = matmul_bias_act(g.permute(0, 2, 3, 1).reshape(-1, c), p["we_t"], p["b_e"], "silu")
        layer_err = relative_error(hidden, h_two.float())
        rows[-1]["layers_rel_err"] = layer_err
        print(f"check {c}@{h}x{w} N={n}: block rel err {err:.2e} {'ok' if rows[-1]['passed'] else 'FAILED'}; "
              f"layers against our two kernels {layer_err:.2e}", flush=True)
    save()

    for c, hw in TIMED:
        n = args.batch
        case = BlockCase(BlockShape("convfirst", c, hw, hw), n, "bfloat16",
                         n_inputs=l2_rotation_count(2 * 2 * n * hw * hw * c))
        p = case.packed
        sets = [(x,) for x in case.inputs]

        def two_kernels(x):
            g = grouped_conv3x3_gw8(x, p["w_taps"], p["b_g"])
            return matmul_bias_act(g.permute(0, 2, 3, 1).reshape(-1, c), p["we_t"], p["b_e"], "silu")

        impls = {("layers", "gconv + expand (2 kernels)"): two_kernels,
                 ("layers", "gconv-expand (1 kernel)"): lambda x: gconv_expand(x, p["w_taps"], p["b_g"], p["we_t"],
                                                                              p["b_e"]),
                 ("block", "unfused-triton (3 launches)"): lambda x: convfirst_block_unfused(x, p),
                 ("block", "gconv-expand + project (2 launches)"): lambda x: convfirst_block_gconv_expand(x, p)}
        for (part, impl), fn in impls.items():
            try:
                ms = bench_ms(fn, sets, cuda_graph=True)
                err = None
            except Exception as exc:  # a shape this kernel does not take, or too much shared memory
                ms, err = float("nan"), f"{type(exc).__name__}: {str(exc)[:160]}"
            rows.append({"part": part, "C": c, "H": hw, "W": hw, "batch": n, "impl": impl, "ms": ms,
                         "cuda_graph": True, "error": err})
            print(f"time  {c}@{hw}x{hw} b={n} {part:6s} {impl:38s} {ms:.4f} ms {err or ''}", flush=True)
            save()
        del case
        torch.cuda.empty_cache()
    d = pd.DataFrame(rows)
    t = d[d["part"] != "check"].pivot_table(index=["C", "H"], columns="impl", values="ms")
    print("\n" + t.round(4).to_string())
    print(f"checks: {int(d['passed'].fillna(False).sum())}/{int((d['part'] == 'check').sum())} passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
