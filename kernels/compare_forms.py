"""The forms of the fused ConvFirst kernel, config by config, on one GPU.

Forms: ``sliced`` (v2/v4: per-tile weight reads, sliced grouped conv), ``dense`` (v3: dense block-diagonal
grouped conv), ``resident`` (v5: persistent programs whose 1x1 weights stay on chip), ``tma`` (v6: patches
of one image whose activation tiles are TMA box copies) and ``ws`` (v8, :mod:`convfirst_ws`: the warp-specialised
Gluon kernel). How the v3, v5 and v6 rows of ``NOTES_convfirst.md``
were measured, in one run:

1. correctness of each form (fixed configs, NaN-poisoned outputs, fp32 reference) at family shapes (batch 2;
   the dense form only up to ``DENSE_MAX_CHANNELS``, the resident one only where the weights fit) and at odd
   sizes, batch 1;
2. every candidate config of the asked forms timed at batch 256 (each one checked before it is timed), so the
   best config per form is known per shape;
3. the fused impl timed again through the benchmark harness (:func:`convfirst.bench_blocks.time_case`,
   autotuning over the default candidates) for the block-benchmark CSV.

``compare_configs.csv`` carries the provenance columns; append it to ``data/convfirst_forms_<gpu>.csv`` with
:func:`convfirst.records.save_measurements`.

    python -m convfirst.kernels.compare_forms --out results/ --forms sliced resident
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
                (BlockShape("convfirst", 64, 56, 56), 1), (BlockShape("convfirst", 32, 56, 56), 2),
                (BlockShape("convfirst", 48, 56, 56), 1)]
TIME_SHAPES = [BlockShape("convfirst", 64, 56, 56), BlockShape("convfirst", 96, 56, 56),
               BlockShape("convfirst", 192, 28, 28)]
FORMS = ("sliced", "dense", "resident", "tma", "ws")


def run_log(out: Path, name: str):
    """Create ``out`` and return ``log(*parts)``: each line printed and appended to ``out / name`` at once (a
    run cut by its time limit keeps what it logged)."""
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / name, "a")

    def log(*parts):
        text = " ".join(str(x) for x in parts)
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()
    return log


def form_of(config: dict) -> str:
    if "TAP_STAGES" in config:
        return "ws"
    if "TILE_H" in config:
        return "tma"
    if "PROGRAMS_PER_SM" in config:
        return "resident"
    return "dense" if config.get("DENSE_GCONV") else "sliced"


def applies(form: str, channels: int) -> bool:
    if form == "dense":
        return channels <= convfirst_fused.DENSE_MAX_CHANNELS
    if form == "resident":
        return convfirst_fused.resident_fits(channels, 4 * channels)
    if form == "ws":
        from .convfirst_ws import ws_block_supported
        from .gemm_ws import ws_available

        return ws_available(torch.device("cuda")) and ws_block_supported(channels, 4 * channels) is None
    return True


def fixed_config(form: str, channels: int, npix: int) -> dict:
    """The kernel's heuristic tile in one form."""
    if form == "resident":
        return convfirst_fused.resident_config(channels, 4 * channels)
    if form == "tma":
        return convfirst_fused.tma_config(channels)
    if form == "ws":
        from .convfirst_ws import ws_configs

        return ws_configs(channels)[0]
    return dict(convfirst_fused.heuristic_config(channels, npix), DENSE_GCONV=form == "dense")


def candidate_configs(channels: int, npix: int, forms=FORMS) -> list[dict]:
    """The candidates of ``forms`` that the autotuners' pruning keeps (the dense form at any width, to measure
    where it stops paying), as launch keyword dicts."""
    named = {"C": channels, "NPIX": npix, "HID": 4 * channels}
    kept = []
    if "sliced" in forms or "dense" in forms:
        limit = convfirst_fused.DENSE_MAX_CHANNELS
        convfirst_fused.DENSE_MAX_CHANNELS = max(limit, channels)
        try:
            kept += [cf for cf in convfirst_fused._prune(convfirst_fused._configs(include_dense="dense" in forms),
                                                         named)
                     if ("dense" if cf.kwargs["DENSE_GCONV"] else "sliced") in forms]
        finally:
            convfirst_fused.DENSE_MAX_CHANNELS = limit
    if "resident" in forms and applies("resident", channels):
        kept += convfirst_fused._prune_resident(convfirst_fused._resident_configs(), named)
    if "tma" in forms:
        side = round((npix / 256) ** 0.5)  # the timed shapes are square images at batch 256
        kept += convfirst_fused._prune_tma(convfirst_fused._tma_configs(), dict(named, H=side, W=side))
    out = [launch_kwargs(cf) for cf in kept]
    if "ws" in forms and applies("ws", channels):
        from .convfirst_ws import HALO_VIEWS, ws_configs

        out += ws_configs(channels)
        if HALO_VIEWS:  # the single-tap form as well, for the record
            out += ws_configs(channels, halo=False)
    return out


def parse_configs(text: str) -> list[dict]:
    """Tiles given on the command line (a JSON list of launch dicts), with the v4 defaults filled in."""
    import json

    configs = json.loads(text)
    if not isinstance(configs, list) or not all(isinstance(c, dict) and ("BLOCK_M" in c or "TILE_H" in c)
                                                and ("BLOCK_H" in c or "TAP_STAGES" in c) for c in configs):
        raise SystemExit(f"--configs: expected a JSON list of dicts with BLOCK_M (or TILE_H, TILE_W) and BLOCK_H (or, "
                         f"for the warp-specialised form, TAP_STAGES), got {text!r}")
    out = []
    for c in configs:
        if "TILE_H" in c:  # a v6 patch or a v8 config
            out.append(c)
            continue
        defaults = {"UNROLL_TAPS": False}
        if "PROGRAMS_PER_SM" not in c:  # a v4 tile
            defaults["DENSE_GCONV"] = False
        out.append({**defaults, **c})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit-s", type=float, default=270.0)
    ap.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    ap.add_argument("--time-shapes", nargs="+", default=None,
                    help="ConvFirst shapes to time, as C@HxW (default: 64@56x56 96@56x56 192@28x28)")
    ap.add_argument("--harness-batches", nargs="*", type=int, default=[256, 32, 1])
    ap.add_argument("--no-checks", action="store_true", help="skip step 1 (each timed config is still checked)")
    ap.add_argument("--configs", default=None,
                    help="time these tiles instead of the candidates: a JSON list of launch dicts, e.g. "
                         "'[{\"BLOCK_M\": 64, \"BLOCK_H\": 32, \"num_warps\": 4, \"num_stages\": 4}]'")
    args = ap.parse_args()
    time_shapes = TIME_SHAPES
    if args.time_shapes:
        time_shapes = []
        for text in args.time_shapes:
            c, hw = text.split("@")
            h, w = hw.split("x")
            time_shapes.append(BlockShape("convfirst", int(c), int(h), int(w)))
    out = Path(args.out)
    start = time.time()
    log = run_log(out, "compare_log.txt")

    # 1. correctness, fixed configs
    checks = []
    for shape, batch in [] if args.no_checks else CHECK_SHAPES:
        case = BlockCase(shape, batch, "bfloat16")
        x = case.inputs[0]
        ref = case.reference(x)
        for form in args.forms:
            if not applies(form, shape.C):
                continue
            config = fixed_config(form, shape.C, batch * shape.H * shape.W)
            err = relative_error(case.launch_poisoned(x, config), ref)
            checks.append({"shape": shape.label, "batch": batch, "form": form, "config": str(config),
                           "rel_err": err, "passed": err < TOLERANCE["bfloat16"]})
            log(f"check {shape.label:24s} N={batch} {form:8s} rel_err={err:.2e} "
                f"{'ok' if err < TOLERANCE['bfloat16'] else 'FAILED'}")
        del case
    pd.DataFrame(checks).to_csv(out / "compare_checks.csv", index=False)

    # 2. every candidate config of both forms, batch 256
    rows = []
    for shape in time_shapes:
        batch = 256
        npix = batch * shape.H * shape.W
        case = BlockCase(shape, batch, "bfloat16", n_inputs=l2_rotation_count(2 * 2 * npix * shape.C))
        x0 = case.inputs[0]
        ref = case.reference(x0)
        configs = candidate_configs(shape.C, npix, args.forms) if args.configs is None else parse_configs(args.configs)
        for config in configs:
            if time.time() - start > args.limit_s * 0.7:
                log("out of time for config timing")
                break
            row = {"block": shape.block, "C": shape.C, "H": shape.H, "W": shape.W, "E": shape.E, "batch": batch,
                   "dtype": "bfloat16", "layout": "channels_last", "shape": shape.label,
                   "form": form_of(config), "config": str(config)}
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
            log(f"time  {shape.label:24s} {row['form']:8s} {row.get('ms', float('nan')):.4f} ms "
                f"err={row.get('rel_err', float('nan')):.1e} regs={row.get('regs')} {config} {row.get('error', '')}")
            with_provenance(pd.DataFrame(rows)).to_csv(out / "compare_configs.csv", index=False)
        del case
        torch.cuda.empty_cache()

    # 3. the harness' fused rows (autotuned over the default candidates) for the block benchmark
    from convfirst.ceilings import load_ceilings

    ceilings = load_ceilings("h100")
    bench = []
    for shape in time_shapes:
        for batch in args.harness_batches:
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
