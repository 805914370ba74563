"""Writes notebooks/03_block_fusion.ipynb (outputs stripped). Run: python notebooks/make_03_block_fusion.py"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# Block fusion

The paper's central engineering claim is that a whole residual block can run as **one GPU kernel**,
depth-first, so that the wide hidden activation never travels to DRAM. This chapter builds such kernels for
the two blocks of the study and measures them against what PyTorch users get today.

- **ConvFirst**: grouped 3x3 conv (group width 8) -> 1x1 expand (x4) -> SiLU -> 1x1 project -> + x.
- **MBConv** (group width 8, no squeeze-excite): 1x1 expand -> SiLU -> grouped 3x3 -> SiLU -> 1x1 project -> + x.
- The **grouped 3x3 gw8 conv** alone, which both blocks need and which cuDNN runs far from its floor.

All three are Triton kernels in `kernels/` (package `convfirst.kernels`), registered as `torch.library`
custom ops so `torch.compile` traces models that use them; `convfirst.kernels.fuse(model)` swaps every
ConvFirst/MBConv block of a model for its fused module. The kernels are ours; the paper's own kernels were
not available.

**What is compared** (one run, one GPU, bf16, channels_last, batch 1 to 256): PyTorch eager (cuDNN convs),
`torch.compile` default and max-autotune-no-cudagraphs, our *unfused* sequence (our grouped conv kernel and
our matmul kernel for the 1x1 layers, with the bias, SiLU and residual in its epilogue; every intermediate,
the E*C-wide hidden activation included, goes through DRAM) and our *fused* kernel. Rows of the unfused
sequence before commit 6fa51c7 ran the 1x1 layers as cuBLAS matmuls followed by PyTorch's SiLU and add
kernels; the readers take the latest row of each case, and each row keeps its commit. The
baselines run the **folded** block (BatchNorm merged into the conv weights and biases, as inference engines
do), so every implementation does the same arithmetic. Each shape's roofline floor (our definition, see the
introduction) is $f = \max(W/P, Q/B)$, with $W$ and the one-kernel compulsory bytes $Q$ counted by
`convfirst.counting`, and $P$, $B$ measured in the same run."""),
    new_code_cell('''mode = "auto"            # 'auto': measure if a CUDA GPU is present, else replay; 'replay'; 'measure'
gpu = "h100"             # whose recorded data to replay (data/block_bench_<gpu>.csv)
dtype = "bfloat16"       # 'bfloat16' (recorded) or 'float16'
batches = [1, 32, 256]   # images per call
target_batch = 256       # batch of the speed targets and of the efficiency tables
shapes = ["convfirst:64@56", "convfirst:96@56", "convfirst:192@28", "convfirst:384@14", "convfirst:768@7",
          "mbconv:64@56", "mbconv:128@28", "mbconv:256@14", "gconv:96@56", "gconv:64@56"]
max_autotune_batches = [256]   # torch.compile max-autotune takes ~30 s per shape: measured at these batches''',
                  metadata={"tags": ["parameters"]}),
    new_code_cell('''import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from convfirst import bench_blocks, counting, models, planner
from convfirst.params import check_choice, check_positive_int, check_positive_ints, resolve_mode, show_mode
from convfirst.records import data_path, load_measurements, recorded_file

mode = resolve_mode(mode)
check_choice("dtype", dtype, list(bench_blocks.DTYPES))
batches = check_positive_ints("batches", batches)
target_batch = check_positive_int("target_batch", target_batch)
max_autotune_batches = check_positive_ints("max_autotune_batches", max_autotune_batches)
block_shapes = [bench_blocks.parse_shape(s) for s in shapes]
show_mode(mode, gpu, [f"block_bench_{gpu}.csv", f"kernel_check_{gpu}.csv"])'''),
    new_markdown_cell(r"""## How the fused kernels walk a tile

**ConvFirst.** One program owns a tile of `BLOCK_M` consecutive pixels (n, h, w flattened, so a tile is a
run of about one image row at 56x56) and all C channels:

1. *Grouped 3x3.* For each of the 9 taps it loads the tile shifted by (dy, dx) straight from the block input
   (pixels outside the image masked to zero, so no padded copy exists), views the `[BLOCK_M, C]` tile as
   C/16 slices of 16 channels and multiplies each slice by that tap's 16x16 block-diagonal weight (two groups
   of 8) in one batched tensor-core product. Result: g `[BLOCK_M, C]`, rounded to bf16.
2. *Hidden loop.* For each slice of `BLOCK_H` of the E*C hidden channels: h = SiLU(g @ We[:, slice] + b),
   cast to bf16 in registers, then acc += h @ Wp[slice, :]. The E*C-wide hidden tensor exists only one slice
   at a time, on chip. The channel and hidden widths are compile-time constants, so the loop is unrolled and
   no channel masks are computed; SiLU is evaluated as h/2 + (h/2)·tanh(h/2) with the hardware tanh (three
   instructions per element instead of about eleven for the exp-and-divide form).
3. *Epilogue.* out = acc + bias + x, one store of C channels per pixel.

DRAM sees the block input once (plus halo re-reads that hit L2) and the output once: 4C bytes per pixel.

**The same block on 2D patches, moved by the TMA (v6).** A second form of the kernel gives each program an
8 x 8 patch of one image instead of a run of pixels. Each of the 9 tap tiles is then one box of the NHWC
tensor (1 x 8 x 8 x C at the shifted position), copied into shared memory by the Tensor Memory Accelerator,
which writes zeros for every part of the box outside the image, negative coordinates included: the 'same'
padding costs no address or mask arithmetic, and the copies run ahead of the products in a software
pipeline. Where C is held as two parts (96 = 64 + 32), both parts' boxes of a tap are copied in one pipeline
stage, so a patch waits 9 times rather than 18. The residual and the output are box copies as well; the hidden
loop is the one above. The launcher
autotunes both forms (and the persistent one of the notes) per shape and keeps the fastest: on the H100 the
patch form wins at 56 x 56 (a 56-wide image is exactly 7 x 7 patches); at 28 x 28 the 8 x 8 patches overhang the
image by 30% and the run-of-pixels form stays faster.

**The same block with warps that only copy (v8, Gluon).** A third form (`kernels/convfirst_ws.py`) splits a
program into five partitions: a warp that issues the input copies, a warp that issues the weight copies, a warp
group that runs the grouped conv, and two warp groups that run the 1x1 chain, joined by rings of shared-memory
stages with a barrier per stage. A program walks pairs of 8 x 8 (or 4 x 16) patches, one per chain warp group,
so each weight chunk read from L2 serves 128 pixels. Per 32-channel box and kernel column the input warp copies
the patch's rows with their halo once (10 rows for an 8-row patch); the three kernel rows are views of those rows
that start whole image rows in. The grouped conv writes g to shared memory; each chain warp group then runs
S = g @ We_j, P = SiLU(S + b) in registers and O += P @ Wp_j, as the pair kernel of the later stages does, and adds
bias and residual. Its fp32 accumulators, [64, C] or, where C is not a power of two, [64, 128] + [64, 64] at
C = 192 (two power-of-two widths), must fit under the 128-register cap of a 16-warp program, which limits it to
C <= 192. The launcher times it against the best Triton form at each shape's first call and keeps the faster.

**MBConv.** The grouped conv runs on the *expanded* tensor, so each tile needs the expansion of its halo,
shifted in space, and registers cannot be shifted. Recomputing the expansion per tap would cost 9x the
expand arithmetic; instead, per hidden slice the program expands its tile *and* its halo rows (the 2W + 2
pixels before and after the run), writes that slice to a small per-program scratch buffer that stays in L2
(the grid is persistent, a few programs per SM), synchronises, and reads it back 9 times shifted for the
grouped conv, then projects. The cost is recomputing the expansion of the halo rows and the scratch traffic
through L2.

The figure shows, on a 56-wide image, one 64-pixel ConvFirst tile of each form and the input pixels its 9 taps read: a run of pixels (left), an 8 x 8 patch (middle), and for v8 the one copy it makes per kernel column, here the left one (right): the patch's 10 rows shifted one pixel left, whose three kernel rows are the views starting 0, 1 and 2 image rows in."""),
    new_code_cell('''W_img, rows_shown = 56, 12
fig, (ax_run, ax_patch, ax_ws) = plt.subplots(1, 3, figsize=(15, 3.2))

def draw(ax, in_tile, in_halo, title):
    for r in range(rows_shown):
        for c in range(W_img):
            color = "tab:blue" if in_tile(r, c) else ("lightsteelblue" if in_halo(r, c) else "white")
            ax.add_patch(plt.Rectangle((c, -r), 1, 1, facecolor=color, edgecolor="0.85", linewidth=0.3))
    ax.set_xlim(0, W_img); ax.set_ylim(-rows_shown + 1, 1); ax.set_aspect("equal")
    ax.set_xlabel("image column w (pixels)"); ax.set_ylabel("image row h")
    ax.set_yticks([0.5 - r for r in range(0, rows_shown, 2)], range(0, rows_shown, 2))
    ax.set_title(title, fontsize=9)

start, length = 2 * W_img + 20, 64          # a run of 64 pixels in flattened (h, w) order
run = lambda r, c: start <= r * W_img + c < start + length
draw(ax_run, run, lambda r, c: any(run(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                                   if 0 <= c + dc < W_img),
     "run of pixels (v4): 64 consecutive pixels (dark), taps read (light)")
h0, w0 = 2, 16                               # an 8 x 8 patch
patch = lambda r, c: h0 <= r < h0 + 8 and w0 <= c < w0 + 8
draw(ax_patch, patch, lambda r, c: h0 - 1 <= r <= h0 + 8 and w0 - 1 <= c <= w0 + 8,
     "8 x 8 patch (v6): one TMA box per tap; the 10 x 10 halo (light)")
draw(ax_ws, patch, lambda r, c: h0 - 1 <= r <= h0 + 8 and w0 - 1 <= c <= w0 + 6,
     "8 x 8 patch (v8): one copy per kernel column, dx = -1 shown (light)")
plt.tight_layout(); plt.show()'''),
    new_markdown_cell("""## Bytes moved: fused vs unfused

Per block at the target batch, counted analytically by `convfirst.counting.block_accounting` (bf16;
weights read once): *unfused* = every layer reads its inputs and writes its output (the hidden tensor,
E = 4 times wider than the block, crosses DRAM several times); *fused* = block input, weights and block
output only."""),
    new_code_cell('''acc = counting.block_accounting_table([(s.block, s.C, s.H, s.W, s.E) for s in block_shapes if s.block != "gconv"],
                                      batch=target_batch)
acc["shape"] = [f"{b} {c}@{h}" for b, c, h in zip(acc["block"], acc["C"], acc["H"])]
acc["unfused_MB"], acc["fused_MB"] = acc["bytes_unfused"] / 1e6, acc["bytes_fused"] / 1e6
acc["bytes_saved_x"] = acc["bytes_unfused"] / acc["bytes_fused"]
display(acc[["shape", "flop", "unfused_MB", "fused_MB", "bytes_saved_x", "intensity_unfused", "intensity_fused"]].round(2))
ax = acc.melt(id_vars="shape", value_vars=["unfused_MB", "fused_MB"], var_name="form", value_name="MB").pipe(
    lambda d: sns.barplot(data=d, x="shape", y="MB", hue="form"))
ax.set_ylabel(f"DRAM bytes per call (MB), batch {target_batch}"); ax.set_xlabel("block shape")
ax.tick_params(axis="x", rotation=30); plt.show()'''),
    new_markdown_cell("""## The measurements

Every timed kernel of ours is first checked against the fp32 reference on the same inputs (a wrong kernel is
never timed). Times are medians of `triton.testing.do_bench` over rotating distinct random inputs (more sets
than fit in L2); `torch.compile` is warmed up (compiled and autotuned) before timing."""),
    new_code_cell('''results, gpu = bench_blocks.measure_or_replay(mode, gpu, block_shapes, batches, dtype,
                                              max_autotune_batches=max_autotune_batches)
prov = results[["gpu", "driver", "torch", "triton", "cuda", "commit", "date"]].drop_duplicates()
display(prov)
print(f"{len(results)} timings; ceilings used: P = {results['peak_tflops'].iloc[0]:.1f} TFLOP/s ({dtype}), "
      f"B = {results['bandwidth_tbps'].iloc[0]:.3f} TB/s")'''),
    new_markdown_cell("""### Latency against batch

At batch 1 every implementation takes 0.05-0.2 ms whatever its arithmetic: these calls are bound by host-side
dispatch and launch overhead (Python, the custom-op and autotuner dispatch for ours), not by the GPU; the
comparison that matters for the kernels is at large batch. No CUDA-graph timings were recorded."""),
    new_code_cell('''g = sns.relplot(data=results, x="batch", y="ms", hue="impl", col="shape", col_wrap=5, kind="line", marker="o",
                height=2.6, facet_kws={"sharey": False})
g.set(xscale="log", yscale="log")
for ax in g.axes.flat:
    ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
g.set_axis_labels("batch (images)", "latency (ms)")
g.set_titles("{col_name}", size=8)
plt.show()'''),
    new_markdown_cell("""### Achieved rate and distance to the floor at the target batch

`useful_tflops` counts only the block's own FLOP (not the kernel's redundant work); `dram_tbps` is the
one-kernel compulsory bytes over the time; `pct_of_floor` = floor / time."""),
    new_code_cell('''eff = bench_blocks.efficiency_table(results, target_batch, dtype)
display(eff.round(3))
ax = sns.barplot(data=eff[eff["impl"].isin(["fused", "triton", "compile-default", "compile-max-autotune", "eager"])]
                 .assign(shape=lambda d: d["block"] + " " + d["C"].astype(str) + "@" + d["H"].astype(str)),
                 x="shape", y="pct_of_floor", hue="impl")
ax.set_ylabel("roofline floor / measured time (%)"); ax.set_xlabel("block shape")
ax.tick_params(axis="x", rotation=30); plt.show()'''),
    new_markdown_cell("""### Speed-ups over the best torch.compile mode and over eager"""),
    new_code_cell('''speed = bench_blocks.speedup_table(results)
display(speed[speed["batch"] == target_batch].round(3))'''),
    new_markdown_cell("""## The speed targets

The targets set for this study (H100, bf16, batch 256): ConvFirst 64@56 and 96@56 fused at least 3x faster
than the best `torch.compile` mode *and* at least 50% of the floor; MBConv 64@56 to 256@14 at least 2.5x the
best `torch.compile` mode; our grouped conv at least 2x cuDNN at 96@56. `ours_needed_ms` is the time that
would meet the target, `shortfall_x` how much faster our kernel would have to be."""),
    new_code_cell('''targets = bench_blocks.target_table(results, target_batch, dtype)
display(targets.round(3))
for t in targets.itertuples():
    verdict = "met" if t.met else f"missed: needs {t.ours_needed_ms:.3f} ms, {t.shortfall_x:.2f}x faster than now"
    print(f"{t.target}: {t.measured:.2f} (required {t.required}) -> {verdict}")'''),
    new_markdown_cell("""### What the hardware counters say

One launch of each kernel at batch 256 was profiled with Nsight Compute (`python -m convfirst.kernels.ncu_report`;
the counters are recorded in `data/kernel_ncu_<gpu>.csv` and shown here in both modes, since they need `ncu`
on the GPU machine). Five versions of the fused kernels are recorded: **v2**; **v4**, which computes SiLU
on the hardware tanh and makes the channel and hidden widths compile-time constants; **v5**, the ConvFirst
kernel as persistent programs that load the two 1x1 weight matrices once and keep them in shared memory for
all their tiles (a candidate where those weights take 40-64 KB, C = 48 and 64: there the launcher autotunes
both kernels and keeps the faster); **v6**, the 8 x 8 patches moved by TMA, which the models ran at 56 x 56 until v8;
and **v6c**, v6 with both channel parts of 96@56 in one tap loop (the default). Columns: time (µs),
instructions executed (millions of warp instructions), the share of cycles a scheduler issued an
instruction, SM / L2 / DRAM / tensor-pipe throughput as % of peak, the three largest stall reasons in
cycles per issued instruction (waiting on a global load, on a fixed-latency dependency, on shared memory or
the special-function unit), registers per thread and achieved occupancy."""),
    new_code_cell('''from convfirst.kernels import ncu_report

counters = ncu_report.counter_table(load_measurements(recorded_file("kernel_ncu", gpu)))
display(counters.round(2))
v2 = counters[(counters["kernel_version"] == "v2") & (counters["block"] == "convfirst") & (counters["shape"] == "64@56x56")]
v4 = counters[(counters["kernel_version"] == "v4") & (counters["block"] == "convfirst") & (counters["shape"] == "64@56x56")]
if len(v2) and len(v4):
    a, b = v2.sort_values("time_us").iloc[0], v4.sort_values("time_us").iloc[0]
    print(f"ConvFirst 64@56, fastest profiled config of each version: {a.time_us:.0f} -> {b.time_us:.0f} us; "
          f"instructions x{b.warp_instr_M / a.warp_instr_M:.2f}; issue active {a.issue_active_pct:.0f}% -> "
          f"{b.issue_active_pct:.0f}%; L2 throughput {a.l2_pct:.0f}% -> {b.l2_pct:.0f}% of peak; "
          f"global-load stall {a.stall_global_load:.1f} -> {b.stall_global_load:.1f} cycles per issue")
v5 = counters[(counters["kernel_version"] == "v5") & (counters["block"] == "convfirst") & (counters["shape"] == "64@56x56")]
if len(v4) and len(v5):
    a, b = v4.sort_values("time_us").iloc[0], v5.sort_values("time_us").iloc[0]
    print(f"ConvFirst 64@56, v4 -> v5 (resident weights): {a.time_us:.0f} -> {b.time_us:.0f} us; L2 throughput "
          f"{a.l2_pct:.0f}% -> {b.l2_pct:.0f}% of peak; global-load stall {a.stall_global_load:.1f} -> "
          f"{b.stall_global_load:.1f}; achieved occupancy {a.occupancy_pct:.0f}% -> {b.occupancy_pct:.0f}%")
v6 = counters[(counters["kernel_version"] == "v6") & (counters["shape"] == "96@56x56")]
v6c = counters[(counters["kernel_version"] == "v6c") & (counters["shape"] == "96@56x56")]
if len(v6) and len(v6c):
    a, b = v6.iloc[0], v6c.iloc[0]
    print(f"ConvFirst 96@56, v6 -> v6c (one tap loop): {a.time_us:.0f} -> {b.time_us:.0f} us; instructions "
          f"x{b.warp_instr_M / a.warp_instr_M:.2f}; issue active {a.issue_active_pct:.0f}% -> {b.issue_active_pct:.0f}%; "
          f"tensor pipe {b.tensor_pipe_pct:.0f}% and L2 {b.l2_pct:.0f}% of peak; occupancy {b.occupancy_pct:.0f}% "
          f"(about {b.occupancy_pct / 100 * 64 / 4:.0f} 4-warp programs of an SM's 64 warp slots)")'''),
    new_markdown_cell("""### Why the targets are met or missed

**The grouped conv kernel meets its target**: loading each shifted tile as whole cache lines and running the
16x16 block-diagonal slices on the tensor cores takes it to about 40% of its (memory) floor, over 2x cuDNN (the
target table's rows). The warp-specialised form measured at the end of this chapter goes further, to about
two thirds of the floor at 96@56 and 4x cuDNN, by keeping many tap copies in flight.

**The fused ConvFirst kernel is the fastest implementation at every early- and mid-stage shape** (64@56,
96@56, 192@28). The v2 counters showed a kernel bound by neither roof but by instruction issue: a scheduler
issued on more than half of the cycles, and the SiLU alone (an exp with a denormal guard and an IEEE
reciprocal, about eleven instructions per hidden element) was about a third of all instructions. v4 halves
the instruction count (table above) and the time fell by about a quarter at 64@56 and by more at 96@56,
where v2 also held a 256-register tile. Against `torch.compile`, v4 passed 3x at 64@56 and missed it at 96@56;
the target table above shows where the later versions below leave each target. Both shapes stay far under 50% of
the floor.

**What limits v4** is the L2: its throughput is the highest of the kernel's units, and waiting on global
loads is now the largest stall. Counted from the kernel's loads, every 64-pixel tile at C = 64 reads from
L2 both 1x1 weight matrices (2·E·C² bf16 values, 64 KB), nine shifted input tiles (72 KB), the packed
grouped-conv weights (18 KB) and its input again for the residual (8 KB), through `cp.async` copies that
bypass L1: about 2.5 KB per pixel, against 256 B per pixel of compulsory DRAM traffic. Larger tiles amortise
the weights but halve the programs per SM (the `BLOCK_M = 128` rows of the table); single-stage tiles, whose
plain loads would hit L1, faulted at C = 80 on this Triton version and are not candidates.

**v5 tested that diagnosis, and it was only part of the story.** Keeping the weights on chip (the compiler
places loop-invariant dot operands in shared memory once, before a persistent program's tile loop) took the
L2 throughput from about 70% to under 50% of peak at 64@56, but the time fell by only 5-7% (v4 -> v5 line
above). The 64 KB of resident weights allow three 4-warp programs per SM instead of four, and with the L2
pressure gone the warps still wait mostly on the nine shifted input loads: the kernel is bound by latency
with too few warps to hide it, not by L2 bandwidth. The per-config timings (`data/convfirst_forms_<gpu>.csv`)
show the same: v5 runs 2.1x faster with three programs per SM than with one. At C = 96 the weights
(144 KB) leave room for a single program per SM, which also spills, and v5 is about 1.5x slower than v4; at
C = 32 v4 fits five programs per SM and is about 10% faster. A third pipeline stage in v4 (two shifted taps in
flight instead of one) bought the same at 64@56 without any resident weights, and 3-6% at 96@56: with both
kernels autotuned per shape, v4's three-stage tiles beat v5 at every shape of the block benchmark of commit
6caa08a, by 1-2%. A tap loop walked by kernel rows with plain loads (three in flight, two of them L1 hits) was
slower at every shape where it ran (and faulted at C = 32 and 96 on this Triton version); it is not kept.

**v6 took the address arithmetic away, and gained less than predicted.** Moving each tap tile as one TMA box
of an 8 x 8 patch removes every per-pixel offset and mask from the program (98-124 registers without spills
in the sm_90 compile) and lets the copy engine run the loads ahead of the products. Predicted 10-18% at
96@56 (written down before the run, `kernels/NOTES_convfirst.md`); measured 6% at 96@56 (0.587 -> 0.551 ms for
the best config of each form in one run) and 2-3% at 64@56: the programs per SM, and with them the latency
each tap wait exposes, did not change. With v6 among the candidates the block benchmark's 96@56 row was 2.91x
the best `torch.compile` mode, 3% short of 3x. Its counters (the v6 rows above) show where a 96@56 tile's time
goes. Four 4-warp programs share an SM (a quarter of its warp slots), and a scheduler issues on about half of
the cycles. The tensor pipe is active less than a third of the time and the L2 runs at about 70% of peak. Per
issued instruction, the warps wait about 2 cycles on global loads and 1 on shared memory or the
special-function unit. That is a latency-bound kernel with too few warps to hide it, the same picture as v4
and v5. Two smaller changes followed (commits bcb1c4f and cf01342).
Running both channel parts in one tap loop halves a patch's waits at 96@56 (18 to 9). It gained 2.7% with the
best tile and 4-8% with the others, against the 5-10% predicted. Under the profiler it ran 9% fewer
instructions (the v6c row above). It is the default now, and with it the 96@56 row
is 3.02x this run's best `torch.compile` mode (0.533 against 1.607 ms). That meets 3x by less than the spread
between runs: the same kernel took 0.548 ms under CUDA graphs. The other change moved the residual and the output
to pointer loads and stores. The box copies are each waited on at once, but the pointer epilogue was 1-6% slower
and was removed. A persistent form of v6, whose tile loop Triton flattens with
the tap loop so that the next patch's copies are in flight during the 1x1 chain, gave wrong outputs or
illegal addresses for some tiles on the H100 (the interpreter passed every case) and was slower where it was
right; it was removed, and its rows stay in `data/convfirst_forms_<gpu>.csv`. Patches of 128 pixels (8 x 16 and
16 x 8, 8 warps, two programs per SM), which read each weight once per 128 pixels instead of 64, were 41-43%
slower (commit 8910292): at 96@56 the weights are about 60% of the bytes a tile reads from L2, so this was the
test of whether those bytes bind. They do not; the latency of each tap wait does.

**The fused MBConv kernel** gained from the same change (fewer instructions, 168 instead of 255 registers,
three programs per SM), but it still recomputes the expansion of the halo rows (3x at 56x56 with 64-pixel
tiles) and reads the expanded slice nine times through the L2 scratch buffer, with two CTA-wide barriers per
hidden slice: its counters show the L2 as the busiest unit with less than a third of the instruction issue
slots used. It stays far from 2.5x `torch.compile`, and the planner keeps it only where it beats our unfused
sequence. At late stages (C = 384, 768) the fused ConvFirst kernel's [pixels, C] fp32 accumulator does not
fit in registers at any useful tile size, and those blocks are compute-bound anyway: fusion has little to
save there.

**What the Triton forms left open** (notes in `kernels/NOTES_*.md`): more work in flight per SM rather than fewer
bytes, since v5 removed most of the weight traffic and gained little, and v6 most of the address work: a
warp-specialised pipeline in which warps that only copy run ahead of the products, and the input halo staged
once. v8, below, is that pipeline. Gluon's views of a staged tile may still start only at a multiple of their own
length (checked by compiling for sm_90 with Triton 3.6 and 3.8, `python -m convfirst.kernels.compile_report
gluon-shift`), so v8 stages the halo once per kernel column, not once per tile, and takes the kernel rows as
reinterpreted views, which Triton 3.6 compiles and 3.8 refuses (there v8 makes one copy per tap). For MBConv the
same would need 2D tiles and a rolling halo buffer. A Gluon kernel is in the repository for the
1x1 matmuls (below); it shows the register limit that shapes such designs on Hopper: an accumulator lives in
the registers of the warp group that issues the products, so overlapping one tile's epilogue with the next
tile's products costs a second accumulator."""),
    new_markdown_cell("""### v8: warps that only copy

Each version of the warp-specialised kernel was compiled for sm_90 on the CPU first and then checked and timed
on the H100, every config against the fp32 reference (`python -m convfirst.kernels.compare_forms --forms ws`;
rows in `data/convfirst_forms_<gpu>.csv`, the form names the version). The table gives the best config of each
version per shape (ms, batch 256) beside the best Triton form timed in the first run; the notes give each
version's prediction."""),
    new_code_cell('''forms = load_measurements(recorded_file("convfirst_forms", gpu))
ws_versions = ["ws-v8-one-group", "ws-v8b-gconv-group", "ws-v8c-32ch-boxes", "ws-v8d-halo", "ws-v8e-pingpong",
               "ws-v8f-res-smem", "ws", "ws-taps", "ws-v8g", "ws-v8g-taps"]
first_run = forms[forms["form"] == "ws-v8-one-group"]["commit"].iloc[0] if (forms["form"] == "ws-v8-one-group").any() else None
mask = forms["form"].isin(ws_versions) | ((forms["form"] == "tma") & (forms["commit"] == first_run))
best = (forms[mask].dropna(subset=["ms"]).assign(shape=lambda d: d["C"].astype(str) + "@" + d["H"].astype(str))
        .groupby(["form", "shape"])["ms"].min().unstack("shape"))
best = best.reindex([f for f in ["tma"] + ws_versions if f in best.index])
best.index = [("v6c (Triton, same run as v8)" if f == "tma" else f) for f in best.index]
display(best.round(3))'''),
    new_markdown_cell("""The first version gave each chain warp group its own grouped conv; the two then waited on the same stages in
lockstep, both in their many small grouped-conv products while the tensor cores had no 1x1 work, and it was
slower than the Triton form everywhere. With the grouped conv in a warp group of its own (v8b) the time did not
move when every product was left out: the copies bound it, 2 KB boxes of 32-byte rows. Boxes of 32 channels
(v8c), the halo staged once per kernel column (v8d) and the chain warp groups taking turns (v8e) brought it below
the Triton forms at 64@56 and 96@56 (and below the run-of-pixels kernel at 128@28 in the block benchmark); copying the residual into shared memory as well (v8f) was slower and was removed.

Which part binds the kept kernel is read by leaving each part's products out in turn, the copies and barriers
kept (`python -m convfirst.kernels.profile_ws`, `data/convfirst_ws_parts_<gpu>.csv`; the outputs are then
wrong on purpose, only the times count):"""),
    new_code_cell('''parts = load_measurements(recorded_file("convfirst_ws_parts", gpu))
parts = parts[parts["config"].str.contains("'HALO': True")] if parts["config"].str.contains("'HALO': True").any() else parts
parts = parts.assign(shape=parts["C"].astype(str) + "@" + parts["H"].astype(str))
table = parts.pivot_table(index="shape", columns="left_out", values="ms")
display(table.round(3))
for shape, row in table.iterrows():
    print(f"{shape}: with every product left out the kernel keeps {row['all products'] / row['nothing']:.0%} of its "
          f"time; leaving out the grouped conv's products saves {1 - row['grouped conv products'] / row['nothing']:.0%}, "
          f"the 1x1 chain's {1 - row['1x1 chain products'] / row['nothing']:.0%}")'''),
    new_markdown_cell("""So v8 is bound by its copies and the waits around them, no longer by the products: per pair of patches at 96@56
it reads about 90 KB of input rows and 144 KB of weight chunks through L2, and the weights are the larger share.
The next step would halve those weight bytes, by letting two SMs of a cluster share each chunk (TMA multicast) or
by covering 256 pixels per chunk, which the 128-register limit of a 16-warp program rules out at C >= 96.

The same limit kept v8 from C = 192 (ConvFirstNet-T's 28 x 28 stage) while it held the output columns as one
[64, 256] accumulator, zero-padded past C: 128 registers for the accumulator alone. v8g holds them as two
accumulators of power-of-two widths (192 = 128 + 64, 96 = 64 + 32), each with its own product on a column slice
of the staged weight: 96 registers at C = 192, and no products on padding columns at C = 96. At C = 192 the
hidden chunk must then be 32 wide and the grouped-conv ring one stage deep (two do not fit in shared memory);
what each of those costs, measured at narrower widths in the same run, is the second table (rows
`ws-v8g-g-stages`)."""),
    new_code_cell('''v8g = forms[forms["form"].isin(["ws-v8g", "ws-v8g-taps"])].dropna(subset=["ms"])
if len(v8g):
    best_v8g = v8g.sort_values("ms").groupby(["C", "H"], as_index=False).first()
    before = forms[forms["form"].isin(["ws", "ws-taps"])].dropna(subset=["ms"]).groupby(["C", "H"])["ms"].min()
    best_v8g["v8 as kept before (ms)"] = [before.get((c, h), float("nan")) for c, h in zip(best_v8g["C"], best_v8g["H"])]
    display(best_v8g[["C", "H", "ms", "v8 as kept before (ms)", "config", "commit"]].round(4))
stages = forms[forms["form"] == "ws-v8g-g-stages"].dropna(subset=["ms"])
if len(stages):
    stages = stages.assign(G_STAGES=stages["config"].str.extract(r"'G_STAGES': (\d)")[0],
                           BH=stages["config"].str.extract(r"'BH': (\d+)")[0],
                           shape=stages["C"].astype(str) + "@" + stages["H"].astype(str))
    display(stages.pivot_table(index=["shape", "BH"], columns="G_STAGES", values="ms").round(4))'''),
    new_markdown_cell("""### The grouped conv at every stage shape

Where a model runs a block unfused (the 14 x 14 and 7 x 7 stages) its grouped conv is this kernel, so it was
timed at each stage's width and resolution (`python -m convfirst.kernels.compare_gconv`: every candidate tile,
checked first, beside cuDNN through `F.conv2d`; batch 256, CUDA graphs). The table gives the best tile per
shape and form, and cuDNN.

A second form was tried and removed, because the nine shifted reads looked like the limit: the pixel-run kernel
reads each input pixel from L2 nine times. In the **rows** form a program walks down the rows of an image
strip (a few images x 8-64 columns), so each input row comes from L2 about once and its other eight uses hit
L1. It was slower at every shape, and the counters (one launch each at 256@14, kernel versions `v4` and
`v5-rows` of block `gconv`) show why the premise was wrong: the pixel-run kernel uses half the L2's throughput
and a quarter of DRAM's, so neither binds it. It issues on about 40% of cycles, and its warps wait mostly
on loads, with a third of the warp slots filled. The rows form halves the L2 traffic but has fewer programs
in flight (a program's rows are serial), so the same per-tap latency is hidden less.

The form that answers it is **ws**, warp-specialised in Gluon like the fused block's v8 (`kernels/gconv_ws.py`,
`kernels/NOTES_gconv.md` v6): per program two consumer warp groups, each fed by a loader warp of its own that
issues TMA copies of the patch's rows with their halo several stages ahead, so many loads are in flight without
any warp waiting on them; the products are the same 16 x 16 block-diagonal slices (wgmma), and the output leaves
through a staging tile and a TMA store, which clips at the image border. A consumer takes `QB` 32-channel boxes
per step (v6b: four accumulators in flight instead of two), and a program keeps the weights of its channels on
chip, splitting C among programs where they would not fit (`CS`). `ws-v6` is the first version, one box per
step. Since v6c a patch may also be 8 x 16 pixels (128 rows per product, half the products and waits per pixel),
which won at 96@56, 256@14 and 384@14 by 6-9%; `ws-dyacc`, one set of accumulators per kernel row so that each
chain of dependent products is three long instead of nine, was timed in the same run and removed: it gained
nothing at any shape, so the length of that chain is not what binds a consumer. The launcher times ws against the Triton kernel by GPU time at a shape's first call and runs the faster
inside CUDA graphs; eagerly it keeps the Triton kernel, since building the four TMA descriptors of a launch costs
more host time than ws saves at the 14 x 14 stages."""),
    new_code_cell('''if data_path(f"gconv_forms_{gpu}.csv").exists():
    gforms = load_measurements(data_path(f"gconv_forms_{gpu}.csv")).dropna(subset=["ms"])
    best = (gforms.sort_values("ms").groupby(["C", "H", "form"], as_index=False).first()
            .pivot_table(index=["C", "H"], columns="form", values="ms"))
    best["cudnn / pixels"] = best["cudnn"] / best["pixels"]
    if "rows" in best:
        best["rows / pixels"] = best["rows"] / best["pixels"]
    if "ws" in best:
        best["cudnn / ws"] = best["cudnn"] / best["ws"]
        best["pixels / ws"] = best["pixels"] / best["ws"]
    display(best.sort_index(level=["H", "C"], ascending=[False, True]).round(4))
    prov = gforms[["gpu", "commit", "date"]].drop_duplicates()
    print("ms, batch 256, bf16, CUDA graphs; best tile per form;", ", ".join(
        f"{r.gpu} at {r.commit} ({r.date})" for r in prov.itertuples()))
gc = counters[(counters["block"] == "gconv") & (counters["shape"] == "256@14x14")]
for r in gc.itertuples():
    print(f"gconv 256@14 {r.kernel_version:8s} {r.time_us:5.1f} us: L2 {r.l2_pct:.0f}%, DRAM {r.dram_pct:.0f}% of peak; "
          f"issue active {r.issue_active_pct:.0f}%; global-load stall {r.stall_global_load:.1f} cycles per issue; "
          f"occupancy {r.occupancy_pct:.0f}%; {r.warp_instr_M:.1f} M warp instructions")'''),
    new_markdown_cell("""### The unfused sequence's 1x1 layers: epilogues fused into the matmul

Where the fused kernel loses (the 14x14 and 7x7 stages) a model runs the unfused sequence, so its speed
matters as much as the fused kernel's. The kernel profile of ConvFirstNet-T (chapter 6) showed where its
time went when the 1x1 layers were cuBLAS matmuls: at 384@14 a block took about 0.40 ms, of which 0.10 ms
was PyTorch's SiLU re-reading and re-writing the 154 MB hidden activation and 0.035 ms the residual add.
`convfirst.kernels.gemm` computes `act(A @ W + bias) [+ residual]` in one Triton kernel: the bias, SiLU and
residual are applied to the fp32 accumulator before its single store, and the tiles are moved by the Tensor
Memory Accelerator (`triton-tma`; a form with ordinary pointer loads, `triton-pointer`, is kept for
comparison). One recorded run of `python -m convfirst.kernels.compare_gemm` (`data/gemm_<gpu>.csv`, replayed
in both modes): each 1x1 layer on its own (`cublas` = `addmm` then SiLU or add), then the whole sequence with
each backend, at batch 256 with CUDA graphs."""),
    new_code_cell('''from convfirst.kernels import compare_gemm

if data_path(f"gemm_{gpu}.csv").exists():
    gemm_tables = compare_gemm.comparison_tables(load_measurements(data_path(f"gemm_{gpu}.csv")))
    for part in ("gemm", "sequence"):
        t = gemm_tables[part]
        print(f"{part}: run of {t.attrs['date']} at commit {t.attrs['commit']}, batch {t.attrs['batch']}")
        display(t.round(4))
    seq = gemm_tables["sequence"]
    print("sequence speed-up over the cuBLAS form:",
          (seq["cublas"] / seq.drop(columns="cublas").min(axis=1)).round(2).to_dict())
else:
    print(f"no GEMM comparison recorded for {gpu}")'''),
    new_markdown_cell("""The fused epilogue wins wherever the layer writes a wide output (the expanding layer: the SiLU pass is
gone) and at every narrow shape; cuBLAS stays slightly faster on the long-K projecting layers of the 7x7
stage, where the matmul itself dominates (at 768@7 in the recorded run about 520 TFLOP/s for our tiles
against 580 for cuBLAS and its add). The whole sequence got 1.1-1.6x faster (last line above), in three
launches instead of five. The sequence rows of the benchmark above come from this kernel from commit 6fa51c7 on.

The most recent `gemm` run (commit b668293) also timed two warp-specialised kernels written in Gluon, Triton's
explicit-layout dialect, against the TMA kernel: `gluon-pingpong` (two consumer warp groups taking alternate
128 x 128 tiles, each fed by its own TMA loader warp, so that one tile's epilogue overlaps the other's
products; kept as the opt-in form `gluon-ws`), `gluon-epilogue` (one 8-warp partition on 128 x 256 tiles
handing each tile to a separate epilogue warp group; removed after this run) and `auto` (per shape, the faster
of the TMA kernel and the Gluon tiles by a quick timing; also removed, since its choice did not always hold
under the benchmark's conditions). The ping-pong kernel is 2-7% faster on the expanding layers and 3-20% slower
on the projecting ones, so the models kept the TMA kernel (`kernels/NOTES_gemm.md`, v5) until v7 below. The reason given at
the time, that a warp group holds at most a 128 x 128 accumulator, which reads a third more bytes from L2 per
FLOP than a 128 x 256 tile, is put in doubt by the run below, where cutting the L2 reads changed nothing."""),
    new_markdown_cell("""A later, smaller run (commit 461bd98) tested why the 14 x 14 expanding layer runs well below the
tensor cores' rate: the idea was that the autotuned TMA tile (128 x 128, persistent) reads its weight slice from
L2 again for every row tile, half of the bytes it reads. A weight-resident form (`triton-resident`) kept one [K, 128] or
[K, 256] slice of W in shared memory for a program's whole life and streamed the row tiles of A past it. The
table below is that run: the autotuned forms side by side, then each resident tile on its own. It was slower
at every layer it ran, and ConvFirstNet-H did not move when its 14 x 14 expanding layers used it
(`data/gemm_resident_model_<gpu>.csv`), so L2 reads are not what holds that layer back; the form was removed
again (`kernels/NOTES_gemm.md`, v6)."""),
    new_code_cell('''import ast

if data_path(f"gemm_{gpu}.csv").exists() and "gemm-configs" in gemm_tables:
    tiles = gemm_tables["gemm-configs"]
    run = load_measurements(data_path(f"gemm_{gpu}.csv"))
    run = run[(run["part"] == "gemm") & (run["date"] == tiles.attrs["date"])]
    print(f"run of {tiles.attrs['date']} at commit {tiles.attrs['commit']}, batch {tiles.attrs['batch']}, ms")
    display(run.pivot_table(index=["block", "C", "H", "layer"], columns="impl", values="ms").round(4))
    def tile_label(text):
        c = ast.literal_eval(text)
        return (f"{c['BLOCK_M']} x {c['BLOCK_N']}, {c['PROGRAMS_PER_SM']} per SM, {c['num_warps']} warps, "
                f"{c['num_stages']} stage(s)")
    display(tiles.rename(index=tile_label, level="config").round(4))
    path = data_path(f"gemm_resident_model_{gpu}.csv")
    if path.exists():
        ab = load_measurements(path)
        print("ConvFirstNet-H, batch 256, CUDA graphs, in order of measurement:")
        display(ab[ab["cuda_graphs"]].sort_values("date")[["model", "gemm_form", "ms", "date", "commit"]])'''),
    new_markdown_cell("""What does hold that layer back was measured next: the expanding layers with and without their SiLU,
beside cuBLAS's matmul alone (part `epilogue`), and one launch of each under Nsight Compute (rows `gemm-tma`
and `cublas` of the counter table above). The SiLU epilogue costs a sixth of the 14 x 14 layer's time, and
without it our product still trails cuBLAS's; cuBLAS's warp-specialised kernel issues about a third of the
instructions and keeps the tensor pipe and DRAM busier. Running the SiLU's tanh on fp16 pairs (half the
special-function operations) changed nothing (rows with `silu_tanh` = f16x2; removed again): the epilogue
costs its latency, with the tensor cores idle, not the special-function unit's throughput.

The latest run (commit 0a6dc75) times the projecting layers the same way: ours with the residual add, ours
without it, cuBLAS's `mm` alone, and `addmm` followed by `add_` (`cublas`). The residual costs ours 10-15% of
the 14 x 14 projecting layer, and without it ours still trails cuBLAS's `mm` by 7-9%. At 7 x 7, where ours
loses to `addmm` + `add_` at 768 channels, the gap is the main loop itself. The counters of that run add the
Gluon ping-pong kernel (`gemm-ws`, v5): its warp-specialised loop issues about half the instructions of
the TMA kernel, yet it is only a few per cent faster and keeps the tensor pipe hardly busier. cuBLAS's kernel
(named `nvjet_sm90_tst_256x128_64x4_1x2_..._coopA` in the profile) differs in shape: 256 x 128 tiles, split
between two consumer warp groups that work on the same tile, in clusters of two CTAs."""),
    new_code_cell('''if data_path(f"gemm_{gpu}.csv").exists():
    epi = load_measurements(data_path(f"gemm_{gpu}.csv"))
    epi = epi[epi["part"] == "epilogue"].copy()
    if len(epi):
        epi["silu_tanh"] = epi.get("silu_tanh", pd.Series(index=epi.index, dtype=object)).fillna("f32")
        for (date, commit, tanh), run in epi.groupby(["date", "commit", "silu_tanh"], sort=True):
            print(f"run of {date} at commit {commit}, SiLU tanh {tanh}, ms:")
            display(run.pivot_table(index=["block", "C", "H", "layer"], columns="impl", values="ms").round(4))
mm = counters[counters["kernel_version"].isin(["gemm-tma", "gemm-ws", "cublas"])]
if len(mm):
    for r in mm.itertuples():
        print(f"{r.kernel_version:8s} {r.config[:40]:40s} {r.time_us:6.1f} us, {r.warp_instr_M:5.1f} M warp instructions, "
              f"tensor pipe {r.tensor_pipe_pct:.0f}%, DRAM {r.dram_pct:.0f}% of peak, issue active {r.issue_active_pct:.0f}%")'''),
    new_markdown_cell("""**v7, the ordered ping-pong.** Those counters suggested that the Gluon kernel's warps wait: each of its
two consumers has a ring of only two stages (two rings of four do not fit beside the staging tiles), so a copy
is issued one product ahead, and both consumers run their main loops at once. v7 (`gemm_ws_ordered_kernel`)
gives both consumers one four-stage ring, filled by one loader warp in the order the tiles are consumed, and
lets their main loops take turns (a pair of mbarriers), so one consumer's products run alone while the other
finishes its epilogue, as in the ping-pong matrix products of the Hopper libraries. The run below (commit
9e29e27; all 614 checks passed, every tile checked at odd sizes with each epilogue) times it as
`gluon-ws-ordered` beside the other forms at the 14 x 14 and 7 x 7 layers: 5-24% faster than the TMA kernel on
the expanding layers and 0-4% on the projecting ones. At 384@14's expanding layer it comes within about 1% of
cuBLAS's matmul alone (`cublas-mm` in the epilogue table above), with its bias and SiLU included. The models
run it through the default form `auto`, which returns with a narrower rule than the `auto` above: the choice
per shape is timed at its first eager call but used only inside CUDA graph captures, where a launch's host time
is paid once; eager calls run the TMA kernel, whose launch costs less host time. Chapter 6 shows the models
with and without it."""),
    new_code_cell('''if data_path(f"gemm_{gpu}.csv").exists():
    g = load_measurements(data_path(f"gemm_{gpu}.csv"))
    v7 = g[(g["part"] == "gemm") & g["date"].isin(g.loc[g["impl"] == "gluon-ws-ordered", "date"])]
    for (date, commit), run in v7.groupby(["date", "commit"]):
        print(f"run of {date} at commit {commit}, batch 256, CUDA graphs, ms:")
        t = run.pivot_table(index=["block", "C", "H", "layer"], columns="impl", values="ms")
        t["ordered / tma"] = t["gluon-ws-ordered"] / t["triton-tma"]
        display(t.round(4))'''),
    new_markdown_cell("""### The same kernels on a second GPU

The H200 has the H100's Hopper SMs (132 of them, measured peak bf16 rate within a few per cent) but 1.4x its
memory bandwidth (4.3 against 3.0 TB/s measured by `convfirst.ceilings`) and a larger L2. A kernel bound by
DRAM bandwidth should speed up by up to that factor on it; a kernel bound by latency on chip should not. The
table puts the recorded batch-256 rows of both GPUs side by side (replayed from `data/block_bench_<gpu>.csv`,
whatever this page's mode; the H200 run has no max-autotune rows, so its best `torch.compile` is the default
mode)."""),
    new_code_cell('''per_gpu = []
for g in ("h100", "h200"):
    if not data_path(f"block_bench_{g}.csv").exists():
        continue
    s = bench_blocks.speedup_table(bench_blocks.load_results(g))
    s = s[(s["batch"] == target_batch) & (s["dtype"] == dtype)]
    per_gpu.append(s.assign(gpu=g)[["gpu", "block", "C", "H", "ours_ms", "best_compile_ms", "speedup_vs_compile",
                                    "pct_of_floor"]])
if len(per_gpu) > 1:
    both = pd.concat(per_gpu).pivot_table(index=["block", "C", "H"], columns="gpu",
                                          values=["ours_ms", "best_compile_ms", "speedup_vs_compile"]).dropna()
    display(both.round(3))
    ratio = both["ours_ms"]["h100"] / both["ours_ms"]["h200"]
    comp = both["best_compile_ms"]["h100"] / both["best_compile_ms"]["h200"]
    print("H100 time / H200 time, our kernel:", ratio.round(2).to_dict())
    print("H100 time / H200 time, best torch.compile:", comp.round(2).to_dict())
else:
    print("only one GPU recorded")'''),
    new_markdown_cell("""In the recorded runs our fused kernels take the same time on both GPUs (first line of ratios near 1), as a
latency-bound kernel should. `torch.compile`, which moves the hidden activation through DRAM between its
kernels, runs faster on the H200 at the bandwidth-heavy early- and middle-stage shapes and the same at the
compute-bound late-stage ones (second line). The fused kernels' advantage therefore shrinks on the H200. Our
unfused MBConv sequence gains in the same way: on the H200 it is faster than the fused MBConv kernel at 64@56
and 128@28. At 256@14 the latest H200 run (commit e6ef31b, timed without CUDA graphs, where the sequence's three
launches from Python weigh) put it behind the fused kernel, and `torch.compile` ahead of both. So the planner of
that GPU keeps every MBConv block unfused (chapter 6 uses the planner of the GPU it runs on). The H200's
`torch.compile` rows come from its first run (commit 2d79a88), our kernels' rows from the latest."""),
    new_code_cell('''check_all = load_measurements(recorded_file("kernel_check", gpu))
check = check_all[check_all["commit"] == check_all.sort_values("date")["commit"].iloc[-1]]  # the latest sweep
print(f"correctness sweep of commit {check['commit'].iloc[0]} ({check['date'].min()}); "
      f"{len(check_all) - len(check)} rows of earlier sweeps are kept in the file")
per_config = check[check["check"] == "every autotuning config"]
display(per_config[["block", "C", "H", "W", "config", "rel_err", "regs", "spills"]].round(4))'''),
    new_markdown_cell("""## Correctness

Every kernel is compared with the plain-PyTorch reference (`convfirst.reference`) computed in fp32 from the
same bf16 inputs and weights, on fresh random inputs, with the output filled with NaN before the launch (an
element the kernel does not write fails). Tolerance: relative error below 1e-2 in bf16 (3e-3 in fp16). The
GPU sweep covers every distinct block shape of both model families (plus odd spatial sizes and the grouped
conv at every ConvFirst width) at batch 1 with a fixed configuration, and every autotuning configuration on
odd shapes (above). The same tests run on CPU in Triton's interpreter at tiny sizes (`tests/test_kernels.py`)."""),
    new_code_cell('''summary = check.groupby(["check", "block"]).agg(shapes=("rel_err", "size"), max_rel_err=("rel_err", "max"),
                                                  all_passed=("passed", "all"))
display(summary)'''),
    new_markdown_cell("""## Fuse or not: the planner

`convfirst.planner` decides per block shape and batch: where the shape was measured it picks the faster of
the fused kernel and the best unfused implementation; elsewhere it uses the roofline model (ideal fused time
`max(W_exec/P, Q_fused/B)` with the kernel's real executed work, ideal unfused time = the layers' summed
floors), **calibrated** by the efficiency each path reached on the nearest shape of the same block type
where both paths were measured; where only the fused kernel was timed, its measured time is set against the
modelled unfused time. `fuse(model, planner=planner.block_planner(gpu, batch), input_size=(3, 224, 224))`
applies it. The table covers every block shape of both families. The planner compares with the unfused
sequence as the block benchmark times it (two GEMMs for the 1x1 layers); the sequence blocks it installs in a
ConvFirst model run the two layers as one pair-kernel launch where that was faster at the shape (C <= 256,
chapter 6), so at those shapes the models' sequence is faster than the table's `unfused_ms`."""),
    new_code_cell('''decisions = planner.plan(models.family_block_shapes(), batches, gpu, dtype=dtype)
table = decisions.assign(decision=lambda d: d["choice"] + " (" + d["speedup"].map("{:.2f}x".format) + ")")
display(table.pivot_table(index=["block", "C", "H"], columns="batch", values="decision", aggfunc="first"))
display(decisions[decisions["batch"] == max(batches)][["block", "C", "H", "source", "fused_ms", "unfused_ms",
                                                        "best_unfused", "choice"]].round(4))'''),
    new_markdown_cell("""Reading the table (recorded H100 data): the fused ConvFirst kernel pays off where H*W is large (the 56x56 and
28x28 stages), where the unfused path moves several times more bytes; at the 14x14 and 7x7 stages it does not.
The MBConv kernel pays off only by small margins, at some of the narrower shapes (the table says which); at
C >= 128 on 28x28 and at the wider late-stage shapes our unfused sequence is faster. Speed-ups in parentheses are unfused time / fused time; "measured" rows come
from the benchmark above, the others from the calibrated model.

A model has to run *something* for the blocks it does not fuse. `fuse` can install this study's unfused
kernel sequence there (`unfused-triton`: the Triton grouped conv and the epilogue-fused 1x1 matmuls), or keep the
block's PyTorch layers. The model benchmark of chapter 6 plans each block among the fused kernel and what
that model would really run instead: eager PyTorch or `unfused-triton` for the `fused` variant,
torch.compile or `unfused-triton` for `fused-compile`. The implementation each block shape gets at the
largest batch, for the uncompiled `fused` variant:"""),
    new_code_cell('''uses = planner.plan(models.family_block_shapes(), [max(batches)], gpu, dtype=dtype,
                    alternatives=("eager", "unfused-triton"))
display(uses[["block", "C", "H", "source", "fused_ms", "unfused_ms", "use"]].round(4))'''),
]

write_notebook(cells, HERE / "03_block_fusion.ipynb")
