"""v2 (sliced) vs v3 (dense block-diagonal) grouped conv inside the fused ConvFirst kernel, on one GPU.

How the v2/v3 rows of ``NOTES_convfirst.md`` were measured, in one run:

1. correctness of both forms (fixed configs, NaN-poisoned outputs, fp32 reference) at the five ConvFirst
   family shapes (batch 2; the dense form only up to ``DENSE_MAX_CHANNELS``) and at odd sizes, batch 1;
2. every candidate config of both forms timed at batch 256 (each one checked before it is timed), so the
   best config per form is known per shape;
3. the fused impl timed again through the benchmark harness (:func:`convfirst.bench_blocks.time_case`,
   autotuning over the default candidates) for the block-benchmark CSV.

``compare_configs.csv`` carries the provenance columns; append it to ``data/convfirst_gconv_forms_<gpu>.csv``
with :func:`convfirst.records.save_measurements`.

    python -m convfirst.kernels.compare_gconv_forms --out results/
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

from . import convfirst_fused
from ._common import launch_kwargs

CHECK_SHAPES = [(BlockShape("convfirst", 64, 56, 56), 2), (BlockShape("convfirst", 96, 56, 56), 2),
                (BlockShape("convfirst", 192, 28, 28), 2), (BlockShape("convfirst", 384, 14, 14), 2),
                (BlockShape("convfirst", 768, 7, 7), 2), (BlockShape("convfirst", 64, 13, 11), 1),
                (BlockShape("convfirst", 96, 9, 15), 1), (BlockShape("convfirst", 80, 29, 31), 1),
                (BlockShape("convfirst", 64, 56, 56), 1)]
TIME_SHAPES = [BlockShape("convfirst", 64, 56, 56), BlockShape("convfirst", 96, 56, 56),
               BlockShape("convfirst", 192, 28, 28)]


def fixed_config(dense: bool, channels: int, npix: int) -> dict:
    """The kernel's heuristic tile with the grouped conv forced to one form."""
    return dict(convfirst_fused.heuristic_config(channels, npix), DENSE_GCONV=dense)


def candidate_configs(channels: int, npix: int) -> list[dict]:
    """Both forms' candidates that the autotuner's pruning keeps, the dense form at any width (to measure
    where it stops paying), as launch keyword dicts."""
    limit = convfirst_fused.DENSE_MAX_CHANNELS
    convfirst_fused.DENSE_MAX_CHANNELS = max(limit, channels)
    try:
        kept = convfirst_fused._prune(convfirst_fused._configs(include_dense=True), {"C": channels, "NPIX": npix, "HID": 4 * channels})
    finally:
        convfirst_fused.DENSE_MAX_CHANNELS = limit
    return [launch_kwargs(cf) for cf in kept]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit-s", type=float, default=270.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log_file = open(out / "compare_log.txt", "a")

    def log(*a):
        text = " ".join(str(x) for x in a)
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    # 1. correctness, fixed configs
    checks = []
    for shape, batch in CHECK_SHAPES:
        case = BlockCase(shape, batch, "bfloat16")
        x = case.inputs[0]
        ref = case.reference(x)
        for dense in (False, True):
            if dense and shape.C > convfirst_fused.DENSE_MAX_CHANNELS:
                continue
            err = relative_error(case.launch_poisoned(x, fixed_config(dense, shape.C, batch * shape.H * shape.W)), ref)
            checks.append({"shape": shape.label, "batch": batch, "form": "dense" if dense else "sliced",
                           "rel_err": err, "passed": err < TOLERANCE["bfloat16"]})
            log(f"check {shape.label:24s} N={batch} {'dense ' if dense else 'sliced'} rel_err={err:.2e} "
                f"{'ok' if err < TOLERANCE['bfloat16'] else 'FAILED'}")
        del case
    pd.DataFrame(checks).to_csv(out / "compare_checks.csv", index=False)

    # 2. every candidate config of both forms, batch 256
    rows = []
    for shape in TIME_SHAPES:
        batch = 256
        npix = batch * shape.H * shape.W
        case = BlockCase(shape, batch, "bfloat16", n_inputs=l2_rotation_count(2 * 2 * npix * shape.C))
        x0 = case.inputs[0]
        ref = case.reference(x0)
        for config in candidate_configs(shape.C, npix):
            if time.time() - start > args.limit_s * 0.7:
                log("out of time for config timing")
                break
            row = {"block": shape.block, "C": shape.C, "H": shape.H, "W": shape.W, "E": shape.E, "batch": batch,
                   "dtype": "bfloat16", "layout": "channels_last", "shape": shape.label,
                   "form": "dense" if config["DENSE_GCONV"] else "sliced", "config": str(config)}
            try:
                err = relative_error(case.launch_poisoned(x0, config), ref)
                k = convfirst_fused.LAST_COMPILED["convfirst"]
                row.update(rel_err=err, regs=k.n_regs, spills=k.n_spills, smem=k.metadata.shared)
                if err < TOLERANCE["bfloat16"]:
                    buf = torch.empty_like(x0)
                    p = case.packed

                    def fn(x, config=config, buf=buf, p=p):
                        return convfirst_fused.launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"],
                                                                      p["wp_t"], p["b_p"], buf, config=config)
                    row["ms"] = bench_ms(fn, [(x,) for x in case.inputs])
            except Exception as exc:  # e.g. too much shared memory
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            log(f"time  {shape.label:24s} {row['form']:6s} {row.get('ms', float('nan')):.4f} ms "
                f"err={row.get('rel_err', float('nan')):.1e} regs={row.get('regs')} {config} {row.get('error', '')}")
            with_provenance(pd.DataFrame(rows)).to_csv(out / "compare_configs.csv", index=False)
        del case
        torch.cuda.empty_cache()

    # 3. the harness' fused rows (autotuned over the default candidates) for the block benchmark
    from convfirst.ceilings import load_ceilings

    ceilings = load_ceilings("h100")
    bench = []
    for shape in TIME_SHAPES:
        for batch in (256, 32, 1):
            if time.time() - start > args.limit_s:
                log("out of time for the harness rows")
                break
            bench += time_case(shape, batch, ["fused"], "bfloat16", ceilings.to_dict(), log=log)
            rows_so_far = with_provenance(pd.DataFrame(bench), ceilings_date=ceilings["date"])
            rows_so_far.to_csv(out / "block_bench_fused.csv", index=False)

    # summary: best config per form and shape
    d = pd.DataFrame(rows)
    if "ms" in d:
        best = d.dropna(subset=["ms"]).sort_values("ms").groupby(["shape", "form"]).head(1)
        log("\nbest per form (batch 256, ms):")
        log(best[["shape", "form", "ms", "regs", "config"]].sort_values(["shape", "form"]).to_string(index=False))
    log(f"checks: {sum(c['passed'] for c in checks)}/{len(checks)} passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
