"""Hardware counters of our kernels at benchmark shapes, read with Nsight Compute (``ncu``) on one GPU.

Where the time of a kernel goes cannot be read from its latency alone. This runs each case in its own
process under ``ncu`` (one profiled launch, after a warm-up launch that compiles it), with the sections
that answer "which limit is it near": speed of light (SM, L1, L2, DRAM throughput as % of peak), memory
workload (bytes per level, hit rates), occupancy and launch statistics (registers, shared memory, programs
per SM), warp-state statistics (what the warps wait on) and the compute workload (pipe utilisation). The
raw metrics of every case are written in long form (one row per case and metric) with provenance.

    python -m convfirst.kernels.ncu_report --out results/            # the default cases
    python -m convfirst.kernels.ncu_report --out results/ --cases "convfirst 64@56x56 256 BLOCK_M=64,BLOCK_H=32"
    python -m convfirst.kernels.ncu_report --out results/ --cases "pair 256@14x14 256 BH=64,STAGES=2,PINGPONG=1"

``ncu`` runs with ``--clock-control none`` (the clocks stay as the benchmark sees them). A case whose
profile fails is reported with its error and the others go on.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SECTIONS = ("SpeedOfLight", "MemoryWorkloadAnalysis", "Occupancy", "LaunchStats", "WarpStateStats",
            "ComputeWorkloadAnalysis", "SchedulerStats", "InstructionStats")
KERNEL_NAMES = {"convfirst": "convfirst_(block|resident|tma)_kernel", "mbconv": "mbconv_block_kernel",
                "gconv": "grouped3x3_kernel", "gemm": "gemm_(tma|epilogue)_kernel", "gemm-ws": "gemm_ws(_ordered)?_kernel",
                "pair": "pair_ws_kernel",
                "cublas": "nvjet|gemm|xmma"}
#: Keys of a case's config that choose the layer of a ``gemm``/``cublas`` case rather than a tile.
GEMM_KEYS = ("PROJECT", "ACT")

#: (block, shape, batch, config): the benchmark shapes' best autotuned configs (data/block_bench_h100.csv)
#: and the alternatives the notes discuss.
DEFAULT_CASES = (
    "convfirst 64@56x56 256 BLOCK_M=64,BLOCK_H=32,UNROLL_TAPS=0,num_warps=4,num_stages=2",
    "convfirst 64@56x56 256 BLOCK_M=64,BLOCK_H=32,UNROLL_TAPS=1,num_warps=4,num_stages=2",
    "convfirst 64@56x56 256 BLOCK_M=128,BLOCK_H=64,UNROLL_TAPS=0,num_warps=8,num_stages=2",
    "convfirst 96@56x56 256 BLOCK_M=64,BLOCK_H=64,UNROLL_TAPS=0,num_warps=4,num_stages=2",
    "mbconv 64@56x56 256 BLOCK_M=64,BLOCK_H=64,PROGRAMS_PER_SM=2,UNROLL_TAPS=0,num_warps=4,num_stages=2",
    "gconv 96@56x56 256 BLOCK_M=64,CK=32,UNROLL_TAPS=1,num_warps=4,num_stages=1",
)

def parse_config(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key] = bool(int(value)) if key in ("UNROLL_TAPS", "DENSE_GCONV", "JOINT_TAPS", "PERSISTENT", "ORDERED",
                                               "PINGPONG") \
            + GEMM_KEYS else int(value)
    return out


def launch_gemm(block: str, shape_text: str, batch: int, config: dict, launches: int = 2) -> None:
    """A 1x1 layer of a ConvFirst block as a matrix product: ``gemm`` = our TMA kernel with its epilogue
    (``ACT=1``: the expanding layer's SiLU; ``PROJECT=1``: the projecting layer, + residual), ``gemm-ws`` = the
    warp-specialised Gluon kernel with the same epilogue (its tile from the config: BLOCK_M, BLOCK_N, BLOCK_K,
    STAGES, GROUP_M; ``ORDERED=1`` for the ordered ping-pong kernel), ``cublas`` = ``torch.mm`` alone (no bias, no epilogue: the library's matmul as the
    reference point)."""
    import math

    import torch

    from convfirst.bench_blocks import parse_shape
    from convfirst.kernels import gemm

    shape = parse_shape(f"convfirst:{shape_text}")
    cfg = dict(config)
    project, act = cfg.pop("PROJECT", False), cfg.pop("ACT", True)
    m, c = batch * shape.H * shape.W, shape.C
    k, n = (shape.E * c, c) if project else (c, shape.E * c)
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    w_t = (torch.randn(k, n, device="cuda", generator=gen) / math.sqrt(k)).to(torch.bfloat16)
    bias = 0.1 * torch.randn(n, device="cuda", generator=gen)
    res = torch.randn(m, n, device="cuda", generator=gen).to(torch.bfloat16) if project else None
    for _ in range(launches):
        if block == "cublas":
            torch.mm(a, w_t)
        else:
            gemm.launch_matmul(a, w_t, bias, "silu" if act and not project else "none", res, config=cfg or None,
                               form="gluon-ws" if block == "gemm-ws" else "tma")
    torch.cuda.synchronize()


def launch_pair(shape_text: str, batch: int, config: dict, launches: int = 2) -> None:
    """Both 1x1 layers of a ConvFirst block as the pair kernel (:mod:`pair_ws`), its tile from the config (BH,
    STAGES, PINGPONG; the registers as the candidates have them)."""
    import torch

    from convfirst.bench_blocks import parse_shape
    from convfirst.kernels import pair_ws
    from convfirst.kernels.compare_pair import pair_case

    shape = parse_shape(f"convfirst:{shape_text}")
    y, we_t, b_e, wp_t, b_p, res = pair_case(batch * shape.H * shape.W, shape.C, expansion=shape.E)
    cfg = {"CONSUMER_REGS": 232, "maxnreg": 168, **config}
    out = torch.empty_like(y)
    for _ in range(launches):
        pair_ws.launch_pair(y, we_t, b_e, wp_t, b_p, res, out, cfg)
    torch.cuda.synchronize()


def launch(block: str, shape_text: str, batch: int, config: dict, launches: int = 2) -> None:
    """The child process: build the case and launch our kernel ``launches`` times (ncu profiles the last)."""
    import torch

    from convfirst.bench_blocks import BlockCase, parse_shape

    shape = parse_shape(f"{block}:{shape_text}")
    case = BlockCase(shape, batch, "bfloat16", seed=0)
    x = case.inputs[0]
    for _ in range(launches):
        case.launch_poisoned(x, dict(config))
    torch.cuda.synchronize()


def parse_raw_csv(text: str) -> list[dict]:
    """ncu ``--page raw --csv`` output -> one dict per profiled kernel: metric -> (value, unit)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if len(lines) < 3:
        return []
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    header, units, rows = table[0], table[1], table[2:]
    return [{name: (value, unit) for name, unit, value in zip(header, units, row)} for row in rows]


def profile_case(case: str, ncu: str, timeout_s: float) -> tuple[list[dict], str]:
    block, shape_text, batch, *rest = case.split()
    config = parse_config(rest[0] if rest else "")
    cmd = [ncu, "--clock-control", "none", "--csv", "--page", "raw", "--launch-skip", "1", "--launch-count", "1",
           "-k", f"regex:{KERNEL_NAMES[block]}"]
    for s in SECTIONS:
        cmd += ["--section", s]
    cmd += [sys.executable, "-m", "convfirst.kernels.ncu_report", "--child", block, shape_text, batch,
            json.dumps(config)]
    env = dict(os.environ, CONVFIRST_AUTOTUNE="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    kernels = parse_raw_csv(proc.stdout)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = []
    for k in kernels:
        for metric, (value, unit) in k.items():
            rows.append({"block": block, "shape": shape_text, "batch": int(batch), "config": rest[0] if rest else "",
                         "metric": metric, "unit": unit, "value": value})
    return rows, log


def summary(rows: list[dict]) -> str:
    """The short table printed at the end of a run: :func:`counter_table` of the rows."""
    import pandas as pd

    return counter_table(pd.DataFrame(rows)).round(2).to_string(index=False) if rows else "no profiles"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for ncu_metrics.csv and ncu_log.txt")
    ap.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES),
                    help='"block CxHxW-shape batch KEY=V,..." e.g. "convfirst 64@56x56 256 BLOCK_M=64,BLOCK_H=32"')
    ap.add_argument("--timeout-s", type=float, default=120.0, help="limit per case")
    ap.add_argument("--child", nargs=4, metavar=("BLOCK", "SHAPE", "BATCH", "CONFIG_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        block, shape_text, batch, config = args.child
        if block == "pair":
            launch_pair(shape_text, int(batch), json.loads(config))
            return 0
        (launch_gemm if block in ("gemm", "gemm-ws", "cublas") else launch)(block, shape_text, int(batch),
                                                                           json.loads(config))
        return 0
    if not args.out:
        ap.error("--out is required")
    ncu = shutil.which("ncu")
    if ncu is None:
        raise SystemExit("ncu (Nsight Compute) is not on the PATH; it is needed to read hardware counters")
    import pandas as pd
    from tqdm.auto import tqdm

    from convfirst.provenance import with_provenance

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows = []
    with open(out / "ncu_log.txt", "a") as log_file:
        for case in tqdm(args.cases, desc="ncu cases"):
            start = time.time()
            try:
                rows, log = profile_case(case, ncu, args.timeout_s)
            except subprocess.TimeoutExpired:
                rows, log = [], f"timed out after {args.timeout_s} s"
            log_file.write(f"=== {case} ({time.time() - start:.1f} s, {len(rows)} metrics)\n{log}\n")
            if not rows:
                print(f"{case}: no profile (see ncu_log.txt)\n{log[-800:]}", flush=True)
            all_rows += rows
            if all_rows:
                with_provenance(pd.DataFrame(all_rows)).to_csv(out / "ncu_metrics.csv", index=False)
    print(summary(all_rows))
    return 0


#: Counters of the chapter's table: (metric, column name, scale).
TABLE_METRICS = (
    ("gpu__time_duration.sum", "time_us", 1e-3),
    ("smsp__inst_executed.sum", "warp_instr_M", 1e-6),
    ("smsp__issue_active.avg.pct_of_peak_sustained_active", "issue_active_pct", 1.0),
    ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm_pct", 1.0),
    ("lts__throughput.avg.pct_of_peak_sustained_elapsed", "l2_pct", 1.0),
    ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "dram_pct", 1.0),
    ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active", "tensor_pipe_pct", 1.0),
    ("smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio", "stall_global_load", 1.0),
    ("smsp__average_warps_issue_stalled_wait_per_issue_active.ratio", "stall_fixed_latency", 1.0),
    ("smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio", "stall_smem_mufu", 1.0),
    ("launch__registers_per_thread", "regs", 1.0),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy_pct", 1.0),
)


def counter_table(df) -> "pd.DataFrame":
    """Recorded ncu rows (``data/kernel_ncu_<gpu>.csv``) -> one row per kernel version, block, shape and config,
    with the counters of :data:`TABLE_METRICS` (time in µs, instructions in millions of warp instructions,
    throughputs in % of peak, stalls in cycles per issued instruction)."""
    import pandas as pd

    names = {m: (col, scale) for m, col, scale in TABLE_METRICS}
    d = df[df["metric"].isin(names)].copy()
    d["value"] = pd.to_numeric(d["value"].astype(str).str.replace(",", ""), errors="coerce")
    d["column"] = d["metric"].map(lambda m: names[m][0])
    d["value"] = d["value"] * d["metric"].map(lambda m: names[m][1])
    version = d["kernel_version"] if "kernel_version" in d else ""
    d["kernel_version"] = version
    t = d.pivot_table(index=["kernel_version", "block", "shape", "config"], columns="column", values="value",
                      aggfunc="last")
    return t[[c for _, c, _ in TABLE_METRICS if c in t.columns]].reset_index()


if __name__ == "__main__":
    raise SystemExit(main())
