"""The grouped 3x3 gw8 conv, config by config, beside cuDNN, at every stage shape of the families, on one GPU.

In one run:

1. correctness of every candidate config at odd sizes, batch 1 and stage shapes (NaN-poisoned outputs, fp32
   reference);
2. every candidate config that the autotuner's pruning keeps, timed at batch 256 with CUDA graphs (each one
   checked before it is timed), beside cuDNN (PyTorch eager ``F.conv2d``);
3. the block-benchmark rows (:func:`convfirst.bench_blocks.time_case`: cuDNN and ours, autotuned) with and
   without CUDA graphs.

``compare_gconv.csv`` (step 2) and ``block_bench_gconv.csv`` (step 3) carry the provenance columns. The rows
of ``data/gconv_forms_h100.csv`` with form ``rows`` were measured with this tool at commit c4d144a, when a
second form of the kernel (a program walking down the rows of an image strip) was a candidate; it lost at every
shape and was removed (``NOTES_gconv.md``).

    python -m convfirst.kernels.compare_gconv --out results/ --shapes 96@56 256@14
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error, time_case
from convfirst.provenance import with_provenance
from convfirst.timing import bench_ms, l2_rotation_count

from . import gconv, gconv_ws
from ._common import LAST_COMPILED, launch_kwargs, packed_taps_rows
from .compare_forms import run_log

#: (C, H, W, batch): odd sizes, batch 1, and each stage's width at its own resolution.
CHECK_SHAPES = ((96, 13, 11, 2), (40, 7, 9, 1), (256, 14, 14, 3), (768, 7, 7, 2), (64, 56, 56, 1),
                (192, 28, 28, 2), (24, 29, 31, 1))
TIME_SHAPES = ("64@56", "96@56", "128@28", "192@28", "256@14", "384@14", "512@7", "768@7")


def candidate_configs(channels: int, height: int, width: int, batch: int) -> list[dict]:
    """The candidates that the autotuner's pruning keeps at this shape, as launch keyword dicts, then the
    warp-specialised form's configs where it can run here (:mod:`gconv_ws`)."""
    named = {"C16": packed_taps_rows(channels), "NPIX": batch * height * width}
    configs = [launch_kwargs(cf) for cf in gconv._prune_gconv(gconv._gconv_configs(), named)]
    if gconv_ws.HAVE_GLUON and torch.cuda.is_available() and gconv_ws.ws_available(torch.device("cuda")):
        configs += gconv_ws.ws_gconv_configs(channels)
    return configs


def form_of(config: dict) -> str:
    return "ws" if "TAP_STAGES" in config else "pixels"


def parse_shape(text: str) -> BlockShape:
    c, hw = text.split("@")
    h, _, w = hw.partition("x")
    return BlockShape("gconv", int(c), int(h), int(w or h))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="+", default=list(TIME_SHAPES), help="C@H or C@HxW, timed at --batch")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--harness-batches", nargs="*", type=int, default=[256, 1])
    ap.add_argument("--limit-s", type=float, default=420.0, help="stop timing configs after this many seconds")
    args = ap.parse_args()
    out = Path(args.out)
    start = time.time()
    log = run_log(out, "compare_gconv_log.txt")

    # 1. correctness: every candidate config at the check shapes
    checks = []
    for c, h, w, n in CHECK_SHAPES:
        case = BlockCase(BlockShape("gconv", c, h, w), n, "bfloat16")
        x = case.inputs[0]
        ref = case.reference(x)
        for config in candidate_configs(c, h, w, n):
            err = relative_error(case.launch_poisoned(x, config), ref)
            ok = err < TOLERANCE["bfloat16"]
            checks.append({"shape": f"{c}@{h}x{w}", "batch": n, "form": form_of(config), "config": str(config),
                           "rel_err": err, "passed": ok})
            log(f"check {c}@{h}x{w} N={n} rel_err={err:.2e} {'ok' if ok else 'FAILED'} {config}")
        del case
    with_provenance(pd.DataFrame(checks)).to_csv(out / "compare_gconv_checks.csv", index=False)

    # 2. every candidate config, batch 256, CUDA graphs
    torch.set_grad_enabled(False)
    rows = []
    shapes = [parse_shape(s) for s in args.shapes]
    for shape in shapes:
        batch = args.batch
        npix = batch * shape.H * shape.W
        case = BlockCase(shape, batch, "bfloat16", n_inputs=l2_rotation_count(2 * 2 * npix * shape.C))
        x0 = case.inputs[0]
        ref = case.reference(x0)
        p = case.packed
        buf = torch.empty_like(x0)
        eager_ms = bench_ms(case.module, [(x,) for x in case.inputs], cuda_graph=True)
        rows.append({"block": "gconv", "C": shape.C, "H": shape.H, "W": shape.W, "batch": batch,
                     "dtype": "bfloat16", "layout": "channels_last", "form": "cudnn", "config": "F.conv2d (eager)",
                     "cuda_graph": True, "ms": eager_ms})
        log(f"time  {shape.label:22s} cudnn  {eager_ms:.4f} ms")
        for config in candidate_configs(shape.C, shape.H, shape.W, batch):
            if time.time() - start > args.limit_s:
                log("out of time for config timing")
                break
            row = {"block": "gconv", "C": shape.C, "H": shape.H, "W": shape.W, "batch": batch, "dtype": "bfloat16",
                   "layout": "channels_last", "form": form_of(config), "config": str(config), "cuda_graph": True}
            try:
                err = relative_error(case.launch_poisoned(x0, config), ref)
                k = LAST_COMPILED["gconv"]
                row.update(rel_err=err, regs=getattr(k, "n_regs", None), spills=getattr(k, "n_spills", None),
                           smem=k.metadata.shared)
                if err < TOLERANCE["bfloat16"]:
                    def fn(x, config=config, buf=buf, p=p):
                        return gconv.launch_grouped_conv3x3(x, p["w_taps"], p["b_g"], buf, config=config)
                    row["ms"] = bench_ms(fn, [(x,) for x in case.inputs], cuda_graph=True)
            except Exception as exc:  # e.g. out of resources
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            log(f"time  {shape.label:22s} {row['form']:6s} {row.get('ms', float('nan')):.4f} ms "
                f"err={row.get('rel_err', float('nan')):.1e} regs={row.get('regs')} {config} {row.get('error', '')}")
            with_provenance(pd.DataFrame(rows)).to_csv(out / "compare_gconv.csv", index=False)
        del case, buf
        torch.cuda.empty_cache()

    # 3. block-benchmark rows: cuDNN and ours, autotuned
    from convfirst.ceilings import load_ceilings

    ceilings = load_ceilings("h100")
    bench = []
    for shape in shapes:
        for batch in args.harness_batches:
            for graphs in (False, True):
                bench += time_case(shape, batch, ["eager", "triton"], "bfloat16",
                                   ceilings.to_dict(), cuda_graph=graphs, log=log)
                with_provenance(pd.DataFrame(bench), ceilings_date=ceilings["date"]).to_csv(
                    out / "block_bench_gconv.csv", index=False)

    d = pd.DataFrame(rows)
    if "ms" in d:
        best = d.dropna(subset=["ms"]).sort_values("ms").groupby(["C", "H", "form"]).head(1)
        log("\nbest config and cuDNN (batch 256, CUDA graphs, ms):")
        log(best[["C", "H", "form", "ms", "config"]].sort_values(["H", "C", "form"]).to_string(index=False))
    log(f"checks: {sum(c['passed'] for c in checks)}/{len(checks)} passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
