"""Writes notebooks/05_roofline_waterline.ipynb (outputs stripped). Run: python notebooks/make_05_roofline_waterline.py"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# Roofline and waterline

A network's forward pass is a sequence of GPU kernels. This chapter follows the time of one pass through
that sequence, kernel by kernel, and sets it against two lower bounds. The definitions are this study's
formalisation of the paper's tools (the paper's own forms were not available to us):

- The **roofline floor** of a kernel that does $W$ FLOP and must move $Q$ bytes through DRAM is
  $f = \max(W/P,\ Q/B)$, with $P$ and $B$ the ceilings measured in chapter 2 on the same GPU.
- The **waterline** of a sequence of kernels is their floors stacked in execution order; the
  **waterline latency** is $\sum_k f_k$. Here each layer (operator) counted by `convfirst.counting` is one
  kernel of the ideal unfused schedule, with BatchNorm folded into the conv before it.
- **Fusing** a residual block replaces the floors of its layers by one floor,
  $\max(\sum W / P,\ Q_\text{block} / B)$, where $Q_\text{block}$ counts only the block's input, weights
  and output. The drop from the waterline to this **fused floor** is what fusion can buy; the gap between the
  measured kernels and the waterline is what better kernels, one per layer, can buy.

**How kernels are joined to layers** (`convfirst.profiling`): `torch.profiler` records the GPU time of every
kernel of a forward pass (median of five passes after warm-up). In eager mode, and for the fused model,
forward hooks wrap every module call in a named range, so each kernel lands on the module that launched it.
Under `torch.compile` those ranges disappear; there the library calls (cuDNN convolutions, cuBLAS matrix
products) are matched one for one, in order, with the eager model's conv and linear layers, and the generated
kernels between two library calls are given the layers between them. Kernels that neither rule can place are
kept and labelled `unmapped`. Kernel times are summed without the gaps between launches, so the measured
totals here are a little below wall-clock latency (chapter 4 uses wall-clock times)."""),
    new_code_cell("""mode = "auto"          # 'auto': profile afresh on a CUDA GPU, else replay; 'replay'; 'measure'
gpu = "h100"           # whose recorded profiles to replay (data/kernel_profile_<gpu>.csv)
dtype = "bfloat16"     # precision of the profiled models
batch = 256            # images per forward pass (recorded: 1, 32, 256; compiled: 32, 256)
cases = [["convnext_tiny", "eager"], ["convnext_tiny", "compile-default"],
         ["efficientnet_b0", "compile-default"],
         ["convfirstnet_t", "eager"], ["convfirstnet_t", "fused"]]   # [model, variant] per waterline figure
x_axis = "flop"        # waterline x axis: 'flop' (cumulative GFLOP) or 'index' (kernel order)
top_kernels = 12       # rows of the per-kernel tables""", metadata={"tags": ["parameters"]}),
    new_code_cell("""import matplotlib.pyplot as plt
from convfirst import analysis, plotting, profiling
from convfirst.ceilings import bandwidth_bytes_per_s, ceilings_at, peak_flops
from convfirst.params import DTYPES, check_choice, check_positive_int, resolve_mode, show_mode

mode = resolve_mode(mode)
check_choice("dtype", dtype, DTYPES)
batch = check_positive_int("batch", batch)
check_choice("x_axis", x_axis, ["flop", "index"])
top_kernels = check_positive_int("top_kernels", top_kernels)
cases = profiling.check_cases(cases)
if mode == "measure":
    gpu = profiling.record_profiles(cases, batch, dtype)
profiles = profiling.load_kernel_profiles(gpu)
batch = profiling.check_recorded_batch(profiles, batch)
run_date = profiles.loc[profiles["batch"] == batch, "date"].max()
ceilings = ceilings_at(gpu, run_date)
P, B = peak_flops(ceilings, dtype), bandwidth_bytes_per_s(ceilings)
show_mode(mode, gpu, [f"kernel_profile_{gpu}.csv", f"ceilings_{gpu}.csv"])
print(f"Ceilings of this run ({ceilings['date']}): P = {P / 1e12:.0f} TFLOP/s, B = {B / 1e12:.2f} TB/s, "
      f"ridge {P / B:.0f} FLOP/byte")"""),
    new_markdown_cell("""## The waterline of each model

One table row per profiled case: the measured kernel time of one forward pass, the waterline (per-layer
floors), the fused floor, the ideal time $W/P$, and the two ratios: *kernels can buy* = measured / waterline,
*fusion can buy* = waterline / fused floor. For the timm baselines the fused floor is **hypothetical**: it
assumes a one-kernel version of their own blocks that no library provides (for EfficientNet it even ignores
that squeeze-excite needs the whole feature map before the block can finish). A case without a recorded
profile shows its floors only."""),
    new_code_cell("""results, summary = analysis.profile_waterlines(profiles, cases, batch, P, B, dtype=dtype)
display(summary.round(3))"""),
    new_code_cell("""n = len(cases)
fig, axes = plt.subplots((n + 1) // 2, 2, figsize=(13, 4.2 * ((n + 1) // 2)), squeeze=False)
for ax, (model, variant) in zip(axes.flat, cases):
    res = results[(model, variant)]
    hypothetical = "" if model.startswith(("convfirstnet", "mbconvnet")) else " (hypothetical)"
    missing = "" if res["table"] is not None else " (no profile recorded)"
    plotting.plot_waterline(res["table"], res["steps"], res["fused_steps"], ax=ax, x=x_axis,
                            fused_label="fused-block floor" + hypothetical, peak_flops=P,
                            title=f"{model}, {variant}, batch {batch}{missing}")
for ax in axes.flat[n:]:
    ax.set_visible(False)
fig.tight_layout()"""),
    new_markdown_cell("""Read each panel from the origin: a curve climbs by each kernel's time and moves right by its work. Steep
stretches are time spent without arithmetic: memory-bound layers (norms, activations, adds, depthwise and
grouped convs). Flat stretches are the matrix products, which move far right for little time. The red
(measured) curve ends well above the blue waterline for every model: even with one ideal kernel per layer,
the sequence would take that long, because most layers of these networks are memory-bound and each one
writes its output to DRAM for the next to read back. The green curve is what the same arithmetic costs when
each residual block is one kernel; for the ConvFirst network that is a kernel this study has
(chapter 3), for the baselines it is a bound no available library reaches."""),
    new_markdown_cell("""## Where the time goes, kernel by kernel

The kernel groups that take the most time in each profiled case: `time_us` is measured, `floor_us` the
roofline floor of the layers they compute, `fraction_of_floor` = floor / time (1.0 would be a perfect kernel;
above 1.0 a generated kernel fused several layers and so beat the sum of their separate floors). Library calls
launching a helper kernel (a memset, a layout change) are grouped with their main kernel."""),
    new_code_cell("""columns = ["first_index", "layers", "kind", "n_kernels", "time_us", "floor_us", "fraction_of_floor", "achieved_tflops",
           "achieved_gbps", "intensity", "bound", "mapping"]
for (model, variant), res in results.items():
    t = res["table"]
    if t is None:
        print(f"{model} {variant}: no profile recorded at batch {batch}")
        continue
    print(f"{model} {variant}: {len(t)} kernel groups, {int(t['n_kernels'].sum())} kernels")
    display(t.nlargest(top_kernels, "time_us")[columns].round(3))"""),
    new_markdown_cell("""## Time by layer kind

The same profiles summed by the kind of layer each group computes (for a group spanning several layers, the
kind of its layer with the most arithmetic): which kinds of layers the time goes to, and how far each kind runs from its floor."""),
    new_code_cell("""by_kind = analysis.time_by_layer_kind(results)
display(by_kind.round(3))"""),
    new_markdown_cell("""## The kernels on the roofline

Each kernel group of a profiled case as a point at its intensity (FLOP per compulsory byte of the layers it
computes) and its achieved rate, its area proportional to its time. Groups that do no arithmetic (norms,
activations, adds) have no place on a log axis and are left out; the tables above list them."""),
    new_code_cell("""present = [(case, res) for case, res in results.items() if res["table"] is not None]
fig, axes = plt.subplots((len(present) + 1) // 2, 2, figsize=(13, 4.5 * ((len(present) + 1) // 2)), squeeze=False)
for ax, ((model, variant), res) in zip(axes.flat, present):
    plotting.plot_roofline(P, B, res["table"], ax=ax, title=f"{model}, {variant}, batch {batch}")
for ax in axes.flat[len(present):]:
    ax.set_visible(False)
fig.tight_layout()"""),
    new_markdown_cell("""The largest circles, the kernels that take the most time, are the spatial convolutions: depthwise 7x7 in
ConvNeXt and grouped 3x3 in ConvFirstNet, at 25 to 36 FLOP per byte, and they run an order of magnitude
below the memory roof above them. The 1x1 convolutions and linear layers sit close to the roof: on the
memory slope in the early stages, at the compute roof (red) in the late ones. So the cuDNN spatial
convolutions are the kernels furthest from their floors, and the matrix products are already near theirs;
only fusion, which removes the traffic between them, can move the whole block up the roof."""),
    new_markdown_cell("""## Kernels no layer was matched to

Every kernel is kept. Those that could not be placed (for the compiled models: casts and copies before the
first library call, or library calls beyond the eager model's list) are listed here with their share of the
pass."""),
    new_code_cell("""for (model, variant), res in results.items():
    t = res["table"]
    if t is None:
        continue
    unmapped = t[t["mapping"] == "unmapped"]
    share = unmapped["time_us"].sum() / t["time_us"].sum()
    print(f"{model} {variant}: {len(unmapped)} unmapped group(s), {share:.2%} of the kernel time")
    if len(unmapped):
        display(unmapped[["first_index", "kernels", "time_us"]].head(top_kernels))"""),
    new_markdown_cell("""## What this shows

- **Better kernels alone cannot close the gap.** The waterline of ConvNeXt-T and EfficientNet-B0 is
  several times their ideal time $W/P$: with one perfect kernel per layer they would still be memory-bound.
- **Fusion lowers the waterline itself.** Replacing each residual block's floors by one floor brings the
  ConvFirst network's bound close to its ideal time, because its fused blocks sit at or above the ridge.
  That drop, not a faster version of each layer, is the room block fusion opens.
- **The measured kernels sit well above even the unfused waterline**, by different amounts per kind of
  layer (the table by layer kind): the spatial convolutions from cuDNN, and in eager ConvNeXt its
  LayerNorms, run furthest from their floors, while the matrix products and the activations run close to
  theirs. In eager mode the equal-shape ConvFirstNet also spends a large share of its time in BatchNorm
  kernels that folding the BatchNorm into the conv (as the waterline, `torch.compile` and the fused kernels
  do) removes altogether.
- The fused ConvFirstNet's own measured kernels are the missing curve wherever the panel says "no profile
  recorded": its profile is taken by running this chapter with `mode="measure"` on a GPU."""),
]

write_notebook(cells, HERE / "05_roofline_waterline.ipynb")
