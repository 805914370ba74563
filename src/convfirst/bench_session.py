"""One time-boxed GPU session that produces the block-fusion data: how data/block_bench_<gpu>.csv and
data/kernel_check_<gpu>.csv were recorded.

Each stage runs in its own Python process, so that a CUDA fault in one stage (an illegal memory access
poisons the whole CUDA context of its process) cannot take the other stages down, and each stage writes its
CSV after every row, so a stage cut off by the time limit still leaves its rows:

1. ``ceil``: the GPU's ceilings P and B (``convfirst.ceilings.measure_ceilings``);
2. ``cfg <block>``: every autotuning candidate of our kernel on odd shapes, into NaN-poisoned outputs;
3. ``sweep``: every family block shape at batch 1 with the fixed heuristic configs;
4. ``bench``: the timings, with autotuning restricted to the configs that passed stage 2, in priority order
   (batch 256 first, then torch.compile max-autotune, then batches 1 and 32) until the time is up.

Run on the GPU machine::

    python -m convfirst.bench_session --out results/ --limit-s 550

then append the CSVs to ``data/`` with :func:`convfirst.records.save_measurements`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from .bench_blocks import BlockShape as S

#: (shape, impls) at batch 256 first, in priority order, then the other batches.
SESSION_BLOCKS = (S("convfirst", 64, 56, 56), S("convfirst", 96, 56, 56), S("mbconv", 64, 56, 56),
                  S("mbconv", 128, 28, 28), S("mbconv", 256, 14, 14), S("convfirst", 192, 28, 28),
                  S("convfirst", 384, 14, 14), S("convfirst", 768, 7, 7))
SESSION_GCONVS = (S("gconv", 96, 56, 56), S("gconv", 64, 56, 56))
MAX_AUTOTUNE_FIRST = (S("convfirst", 64, 56, 56), S("mbconv", 64, 56, 56))
MAX_AUTOTUNE_LATER = (S("convfirst", 96, 56, 56), S("gconv", 96, 56, 56), S("mbconv", 128, 28, 28))


def _with_env(rows: list[dict]) -> pd.DataFrame:
    from .provenance import with_provenance

    return with_provenance(pd.DataFrame(rows), layout="channels_last")


def _stage_cfg(block: str, out: Path, log) -> None:
    from . import bench_blocks as bb

    rows = []
    for shape, batch in [(s, b) for s, b in bb.CONFIG_CHECK_SHAPES if s.block == block]:
        rows += bb.check_configs(shape, batch, "bfloat16", log=log)
        df = _with_env(rows)
        df["check"] = "every autotuning config"
        df.to_csv(out / f"cfg_{block}.csv", index=False)


def _stage_sweep(out: Path, deadline: float, log) -> None:
    from . import bench_blocks as bb

    os.environ["CONVFIRST_AUTOTUNE"] = "0"
    rows = []
    for shape in bb.family_check_shapes():
        if time.time() > deadline:
            log("sweep: out of time")
            break
        new = bb.check_case(shape, 1, "bfloat16", impls=("fused",))
        rows += new
        log(f"  check {shape.label:28s} rel_err={new[0]['rel_err']:.2e} {'ok' if new[0]['passed'] else 'FAILED'}")
        df = _with_env(rows)
        df["check"] = "family sweep (fixed heuristic config)"
        df["config"] = "heuristic (no autotune)"
        df.to_csv(out / "kernel_check.csv", index=False)


def _restrict_to_safe_configs(out: Path, log) -> None:
    """Autotune only among the configs every stage-2 check passed (a config never checked is left out)."""
    from convfirst.kernels import convfirst_fused, gconv, mbconv_fused
    from convfirst.kernels._common import launch_kwargs

    def key(cf):
        return str(launch_kwargs(cf))

    for block, module, attr in (("convfirst", convfirst_fused, "_configs"),
                                ("convfirst", convfirst_fused, "_resident_configs"),
                                ("mbconv", mbconv_fused, "_configs"), ("gconv", gconv, "_gconv_configs")):
        path = out / f"cfg_{block}.csv"
        if not path.exists():
            continue
        d = pd.read_csv(path)
        per = d.groupby("config")["passed"].agg(lambda v: bool(v.fillna(False).astype(bool).all()))
        counts = d.groupby("config").size()
        safe = {c for c in per.index if per[c] and counts[c] == counts.max()}
        kept = [cf for cf in getattr(module, attr)() if key(cf) in safe]
        log(f"{block}: {len(kept)} configs passed every check")
        if kept:
            setattr(module, attr, lambda kept=kept: kept)


def _stage_bench(out: Path, deadline: float, log) -> None:
    from . import bench_blocks as bb

    _restrict_to_safe_configs(out, log)
    ceilings = pd.read_csv(out / "ceilings.csv").iloc[0].to_dict()
    rows: list[dict] = []

    def left() -> float:
        return deadline - time.time()

    def run(shape, batch, impls):
        try:
            rows.extend(bb.time_case(shape, batch, impls, "bfloat16", ceilings, log=log))
        except Exception:  # recorded as missing; the next shape still runs
            log(traceback.format_exc()[-800:])
        _with_env(rows).to_csv(out / "block_bench.csv", index=False)

    for shape in SESSION_BLOCKS + SESSION_GCONVS:
        if left() < 150:
            break
        run(shape, 256, ["eager", "unfused-triton", "fused", "compile-default"])
    for shape in MAX_AUTOTUNE_FIRST:
        if left() < 110:
            break
        run(shape, 256, ["compile-max-autotune"])
    for batch in (1, 32):
        for shape in SESSION_BLOCKS + SESSION_GCONVS:
            if left() < 40:
                break
            run(shape, batch, ["eager", "unfused-triton", "fused"])
    for shape in MAX_AUTOTUNE_LATER:
        if left() < 30:
            break
        run(shape, 256, ["compile-max-autotune"])
    for batch in (1, 32):
        for shape in SESSION_BLOCKS[:5]:
            if left() < 10:
                break
            run(shape, batch, ["compile-default"])


def run_stage(argv: list[str], out: Path, deadline: float) -> None:
    def log(*a):
        text = " ".join(str(x) for x in a)
        print(text, flush=True)
        with open(out / "log.txt", "a") as f:
            f.write(text + "\n")

    stage = argv[0]
    if stage == "ceil":
        from .ceilings import measure_ceilings

        df = measure_ceilings()
        df.to_csv(out / "ceilings.csv", index=False)
        log(f"ceilings: {df.iloc[0]['bf16_tflops']:.1f} TFLOP/s bf16, {df.iloc[0]['copy_tbps']:.3f} TB/s")
    elif stage == "cfg":
        _stage_cfg(argv[1], out, log)
    elif stage == "sweep":
        _stage_sweep(out, deadline, log)
    elif stage == "bench":
        _stage_bench(out, deadline, log)
    else:
        raise SystemExit(f"unknown stage {stage!r}: ceil, cfg <block>, sweep, bench")


def run_session(out: Path, limit_s: float = 550.0, sweep_s: float = 100.0) -> None:
    """All stages, each in a child process, within ``limit_s`` seconds of wall time."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    end = start + limit_s

    def child(args: list[str], deadline: float, timeout: float) -> None:
        cmd = [sys.executable, "-m", "convfirst.bench_session", "--out", str(out), "--stage", *args,
               "--deadline", str(deadline)]
        try:
            rc = subprocess.run(cmd, timeout=max(timeout, 10)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"== stage {args}: {rc} at {time.time() - start:.0f} s", flush=True)

    child(["ceil"], end, 60)
    for block in ("convfirst", "mbconv", "gconv"):
        child(["cfg", block], end, 80)
    child(["sweep"], time.time() + sweep_s, sweep_s + 30)
    child(["bench"], end - 5, end - time.time())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convfirst.bench_session", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the CSVs and log.txt")
    ap.add_argument("--limit-s", type=float, default=550.0, help="wall-time budget of the whole session")
    ap.add_argument("--stage", nargs="+", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.stage:
        run_stage(args.stage, out, args.deadline)
    else:
        run_session(out, args.limit_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
