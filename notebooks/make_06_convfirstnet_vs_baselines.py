"""Writes notebooks/06_convfirstnet_vs_baselines.ipynb (outputs stripped).

Run: python notebooks/make_06_convfirstnet_vs_baselines.py
"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# ConvFirstNet against the baselines

The paper's headline is that ConvFirst networks with block-fusion kernels run about **4x as fast as
ConvNeXt** at equal ImageNet accuracy, with less arithmetic *and* a higher computational efficiency. This
chapter measures the half of that claim that can be measured on one GPU: latency, throughput and efficiency
of the ConvFirstNet family (with this study's fused kernels) and of the usual baselines on one GPU. The
tables rest on **one recorded run**: the most recent run with the fused kernels, with the peak rate $P$
measured at its start. PyTorch cases that run did not reach (eager and torch.compile variants) are filled
in from other recorded runs on the same GPU model, fused cases only from runs of the same commit (what
`fused` installs is fixed by the commit); every row keeps its own `date` and `commit`, and its $E$ uses the
$P$ of its own run.

For two models timed at the same batch on the same GPU, the latency identity $T = W / (E \cdot P)$ splits
every speed-up into two factors:

$$
\frac{T_\text{ConvNeXt}}{T_\text{ConvFirstNet}}
= \underbrace{\frac{W_\text{ConvNeXt}}{W_\text{ConvFirstNet}}}_\text{arithmetic ratio}
\times \underbrace{\frac{E_\text{ConvFirstNet}}{E_\text{ConvNeXt}}}_\text{efficiency ratio}.
$$

The efficiency ratio is a property of kernels and is measured here. The arithmetic ratio is a property of
the architectures; *which* ConvFirstNet member matches ConvNeXt-T's accuracy is a property of training,
which this study could not run (no ImageNet on these machines). So:

| | where it comes from |
|---|---|
| latency, throughput, $E$ of every model | measured in this chapter (`data/model_bench_<gpu>.csv`) |
| $W$ (GMAC per image) | counted from the model definitions (`convfirst.counting`) |
| top-1 of the baselines | cited, with sources (`data/cited_accuracy.csv`) |
| top-1 of ConvFirstNet | **not measured here** |

**How the run measures** (`convfirst.bench_models`, following the study's method):

- every model in inference mode with bf16 weights and activations, `torch.channels_last` set explicitly on
  model and input (torch.compile's own layout choice switches off for grouped convs), random weights with
  non-trivial BatchNorm statistics, 224x224 unless stated;
- variants: PyTorch **eager** (cuDNN), **compile-default** (`torch.compile`), **compile-max-autotune**
  (`max-autotune-no-cudagraphs`, only when asked for: see the end of the chapter), and for our families
  **fused** (`convfirst.kernels.fuse` with the block planner of chapter 3: one Triton kernel per residual
  block wherever the recorded block benchmark says the fused kernel beats the alternatives; every other
  block runs whichever of this study's unfused Triton sequence and its PyTorch layers was measured faster,
  and the `fused_blocks` column counts each kind; from commit 2a375ee on, `fuse` also folds the BatchNorm
  after the stem and downsampling convs into the conv; from commit 6fa51c7 on, those patchify convs
  (kernel = stride) run as one matmul kernel that reads the patches in place and adds the bias in its
  epilogue, and the unfused sequence's 1x1 layers run as matmuls with the bias, SiLU and residual in their
  epilogue (chapter 3; the section on the profile below shows both) and
  **fused-compile** (the same model under `torch.compile`, which compiles the unfused blocks); the
  fused model's output is checked against the unfused model before it is timed;
- median of many forward passes (`triton.testing.do_bench`), distinct random inputs rotated, with and
  without CUDA-graph replay at small batches, where CPU launch time dominates;
- $E = W / (T \cdot P)$ with $W = 2 \times$ MAC per forward pass and $P$ the bf16 matrix-product rate
  measured at the start of the same run."""),
    new_code_cell("""mode = "auto"              # 'auto': measure if a CUDA GPU is present, else replay; 'replay'; 'measure'
gpu = "h100"               # whose recorded run to replay (data/model_bench_<gpu>.csv)
plan = "budget"            # 'budget': the prioritised ~5-minute plan of the recorded run; 'full': every case (hours)
batches = [1, 8, 32, 64, 128, 256]
time_budget_s = 300        # measure mode: start no new measurement after this many seconds
max_autotune = False       # measure mode: also time torch.compile max-autotune-no-cudagraphs (minutes per model)
table_batches = [1, 256]   # batches of the latency columns of the table; the largest also sets img/s, E, speed-up""",
                  metadata={"tags": ["parameters"]}),
    new_code_cell("""import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import display

from convfirst import bench_models as bm
from convfirst import plotting
from convfirst.analysis import ideal_time_s
from convfirst.params import check_choice, check_choices, check_positive_int, check_positive_ints, resolve_mode, show_mode
from convfirst.records import data_path, load_cited, load_measurements

mode = resolve_mode(mode)
check_choice("plan", plan, ["budget", "full"])
batches = check_positive_ints("batches", batches)
time_budget_s = check_positive_int("time_budget_s", time_budget_s)
check_choice("max_autotune", max_autotune, [False, True])
table_batches = check_positive_ints("table_batches", table_batches)
runs, gpu = bm.benchmark_rows(mode, gpu, plan=plan, batches=batches, budget_s=time_budget_s,
                              max_autotune=max_autotune, log=None)
table_batches = check_choices("table_batches", table_batches, sorted(runs["batch"].unique()))
big = max(table_batches)
accuracy = load_cited(data_path("cited_accuracy.csv"))
show_mode(mode, gpu, [f"model_bench_{gpu}.csv", "cited_accuracy.csv"])"""),
    new_code_cell("""run = runs.iloc[0]
P = run["peak_tflops"] * 1e12
print(f"{run['gpu']} | driver {run['driver']} | torch {run['torch']} | triton {run['triton']} | CUDA {run['cuda']}")
print(f"most recent run: {run['date']} at commit {run['commit']}; "
      f"P = {run['peak_tflops']:.0f} TFLOP/s (bf16 matmul), B = {run['bandwidth_tbps']:.2f} TB/s measured in it")
display(runs.groupby(["date", "commit"]).agg(measurements=("ms", "size"), P_tflops=("peak_tflops", "first"),
                                             models=("model", "nunique")).reset_index())"""),
    new_markdown_cell("""The table above lists the runs the chapter draws on. The fused rows and ConvNeXt-T's reference rows
come from the most recent run; PyTorch rows of cases that run did not reach come from the latest earlier
run on the same GPU (each row keeps its own date, commit and the $P$ measured in its run)."""),
    new_markdown_cell("""## Accuracy, cost and speed of every model

One row per model (EfficientNets also at the resolution their cited accuracy belongs to). Latency is the
best setting measured at that batch (the variant, and whether CUDA graphs were on, is named beside it);
images/s, $E$ and the speed-up are at the largest batch. The speed-up divides by ConvNeXt-T's throughput
under its best torch.compile mode (default or max-autotune-no-cudagraphs, whichever was faster; the row's
`date` says which run measured it). Top-1 is cited, at the image size in
`top1_img_size`, which for some models is larger than the 224x224 timed here."""),
    new_code_cell("""table = bm.model_table(runs, table_batches, accuracy=accuracy)
shown = table.assign(**{f"efficiency_b{big}": (100 * table[f"efficiency_b{big}"]).round(1)})
display(shown.rename(columns={f"efficiency_b{big}": f"E_b{big} (%)"}).round(
    {"params_m": 1, "gmac": 2, **{f"ms_b{b}": 3 for b in table_batches}, f"img_per_s_b{big}": 0,
     f"speedup_vs_{bm.REFERENCE_MODEL}": 2}))"""),
    new_markdown_cell("""## Throughput against arithmetic

Images per second at the largest batch against GMAC per image, one line per family. Our families appear
twice: through PyTorch (best of eager and torch.compile) and through the fused kernels. Within a family,
throughput should fall in proportion to GMAC if efficiency stayed constant; a family whose line lies higher
does more work per second, not less work."""),
    new_code_cell("""points = bm.throughput_points(runs, big)
fig, ax = plt.subplots(figsize=(8, 5))
sns.lineplot(data=points, x="gmac", y="img_per_s", hue="family", style="implementation", markers=True, ax=ax)
for _, r in points.iterrows():
    ax.annotate(r["model"], (r["gmac"], r["img_per_s"]), fontsize=7, textcoords="offset points", xytext=(4, 2))
ax.set(xscale="log", yscale="log", xlabel="work per image (GMAC)", ylabel=f"throughput at batch {big} (images/s)",
       title=f"Throughput against arithmetic, {gpu.upper()}, bf16, 224x224")
ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
ax.grid(True, which="both", alpha=0.3)
plt.show()"""),
    new_markdown_cell("""## Latency against batch size

ConvNeXt-T and the two ConvFirstNet members the targets name, every variant measured, each at the faster of
with and without CUDA graphs. At batch 1 a forward pass is a few hundred small kernels and the CPU that
launches them sets the pace unless CUDA graphs replay them; from batch 32 on the GPU's work dominates for
the larger models. The smaller fused members can stay launch-bound even at batch 256: each Triton launch
costs tens of microseconds of Python, and a member whose blocks each take a fraction of a millisecond on the
GPU waits on the CPU between them unless CUDA graphs replay the pass (compare the two settings of
`convfirstnet_h` in `data/model_bench_<gpu>.csv`). How far depends on the host as well as the GPU: at commit
09a39b1, ConvFirstNet-T at batch 256 without graphs took 7.4 ms in one run and 21.9 ms in another on an H100
machine whose CPU was slower (ConvNeXt-T at batch 1 without graphs: 2.3 against 3.5 ms), while the runs with
graphs agreed within 1.5%. The tables therefore take the faster setting of each case."""),
    new_code_cell("""lat = bm.latency_by_batch(runs, [bm.REFERENCE_MODEL, bm.CONTROL_MODEL, bm.HALF_GMAC_MODEL])
fig, ax = plt.subplots(figsize=(8, 5))
sns.lineplot(data=lat, x="batch", y="ms", hue="model", style="variant", markers=True, ax=ax)
ax.set(xscale="log", yscale="log", xlabel="batch size (images)", ylabel="latency per batch (ms)",
       title=f"Latency against batch, {gpu.upper()}, bf16, 224x224")
ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
ax.grid(True, which="both", alpha=0.3)
plt.show()"""),
    new_markdown_cell("""## The efficiency gap of every model

Work per forward pass of a whole batch against its measured latency, on log axes; each dashed diagonal is a
constant computational efficiency $E = W / (T \\cdot P)$. A model's distance below the $E = 100\\%$ line is
its efficiency gap $T / T^*$. The second figure places the baselines by cited accuracy, each at its ideal
latency $T^* = W/P$ and at its measured latency."""),
    new_code_cell("""plotting.plot_efficiency_gap(points, P, label_col="model", hue_col="implementation",
                             title=f"Efficiency gap at batch {big}, {gpu.upper()} (P = {P / 1e12:.0f} TFLOP/s)")
plt.show()
cited = points[points["implementation"] != "fused kernels"].merge(accuracy[["model", "top1"]], on="model")
cited = cited.assign(ideal_ms=ideal_time_s(cited["gflop"] * 1e9, P) * 1e3)
plotting.plot_accuracy_latency(cited, title=f"Baselines: cited top-1 against latency at batch {big}")
plt.show()"""),
    new_markdown_cell("""## The 4x claim, decomposed

Each ConvFirstNet member under its best fused variant against ConvNeXt-T under its best torch.compile mode,
at the largest batch. `arithmetic_ratio` is $W_\\text{ConvNeXt-T} / W_\\text{member}$ (counted),
`efficiency_ratio` is $E_\\text{member} / E_\\text{ConvNeXt-T}$ (measured); their product is the
speed-up, and equals the measured throughput ratio by construction (same batch, same $P$)."""),
    new_code_cell("""four = bm.four_x_decomposition(runs, big)
display(four.round({"gmac": 2, "arithmetic_ratio": 2, "efficiency": 3, "efficiency_ratio": 2, "speedup": 2,
                    "measured_throughput_ratio": 2}))
reach = four.loc[four["reaches_4x"].astype(bool), "model"].tolist()
print("members at or above 4x ConvNeXt-T's best torch.compile throughput:", reach or "none")"""),
    new_markdown_cell("""**What rests on the paper's accuracy claim.** The speed-up above is measured for architectures of this
study's own design, with random weights; timing does not depend on the weights. The paper's "4x at equal
accuracy" needs one more fact: which ConvFirstNet has ConvNeXt-T's ImageNet top-1. The paper states that
ConvFirst reaches ConvNeXt's accuracy with less arithmetic; its stage tables were not available to us, so
the arithmetic ratio at equal accuracy is not known here. Read the table this way: *if* a member with the
arithmetic ratio shown matches ConvNeXt-T's accuracy (the paper's claim, not tested here), the measured
efficiency ratio turns it into the speed-up in the last column. The equal-shape control
(`convfirstnet_t`, ConvNeXt-T's widths and depths) needs no accuracy claim: its row is a pure kernel-and-
block comparison at the same arithmetic."""),
    new_markdown_cell("""## The speed targets

The targets this study set itself on H100 at batch 256: the fused equal-shape control at least 2.5x
ConvNeXt-T's best torch.compile throughput and at least 50% of the measured peak; the member with about half
of ConvNeXt-T's arithmetic at least 4x. `met` is empty where the run has no fused measurement. Where a
target is missed, the next two sections show where the time goes and which kernels hold the model back."""),
    new_code_cell("""targets = bm.speed_targets(runs, big)
display(targets.round({"measured": 3}))"""),
    new_markdown_cell("""$E$ divides by the $P$ measured in the same run, and $P$ is not the same on every machine of one GPU
model: the runs below, all of the equal-shape control on an H100 at the anchor's commit and the two commits
with such runs before it, measured $P$ up to a tenth apart. So the same latency gives a different $E$ on each
machine; the target table reads the anchor run only."""),
    new_code_cell("""same = load_measurements(data_path(f"model_bench_{gpu}.csv"))
ctrl = same[(same["model"] == bm.CONTROL_MODEL) & same["variant"].isin(["fused"]) & (same["batch"] == big)
            & same["cuda_graphs"].astype(bool) & ~same["commit"].astype(str).str.contains("dirty")]
recent = ctrl.groupby("commit")["date"].max().sort_values().index[-3:]
ctrl = ctrl[ctrl["commit"].isin(recent)].sort_values("date")
display(ctrl[["commit", "date", "ms", "peak_tflops", "efficiency"]].assign(
    efficiency=lambda d: (100 * d["efficiency"]).round(1)).rename(
    columns={"peak_tflops": "P measured (TFLOP/s)", "efficiency": "E (%)"}).round(3).reset_index(drop=True))"""),
    new_markdown_cell("""## Where the time goes: the waterline of the equal-shape control

The waterline (chapter 5) stacks the roofline floor of every kernel of one forward pass in execution order;
the measured kernels stacked beside it show where time goes. It uses the per-kernel profile recorded by
`convfirst.profiling` for the same GPU (the fused variant when one is recorded, otherwise the best
PyTorch variant recorded), at batch 256. The table lists the kernels with the most time above their
floor: the kernels that hold the model back."""),
    new_code_cell("""wl = bm.model_waterline_from_profile(gpu, bm.CONTROL_MODEL, 256)
if wl is None:
    print(f"no kernel profile of {bm.CONTROL_MODEL} recorded for {gpu}: run python -m convfirst.profiling on a GPU")
else:
    print(f"profile: {bm.CONTROL_MODEL} {wl['variant']}, batch 256, recorded {wl['date']}")
    print({k: round(v, 3) for k, v in wl["summary"].items()})
    plotting.plot_waterline(wl["table"], wl["steps"], wl["fused_steps"],
                            title=f"{bm.CONTROL_MODEL} ({wl['variant']}), batch 256, {gpu.upper()}")
    plt.show()
    display(bm.kernels_holding_back(wl["table"]).round(3))"""),
    new_markdown_cell("""Outside the blocks, `fuse` changes the stem and the three downsampling convs: their BatchNorm is folded
into the conv, and each one (a patchify conv: kernel equal to stride) runs as one matmul kernel reading the
patches where they lie and adding the bias in its epilogue. cuDNN ran the 3-channel stem at a small fraction
of its floor, and a conv *with* a bias as its conv plus a separate broadcast add, which made folding alone
a loss at the downsampling layers. The recorded comparison of the four ways to compute these layers
(`data/gemm_<gpu>.csv`, batch 256, CUDA graphs; `-t` rows are ConvFirstNet-T's layers, `-h` rows
ConvFirstNet-H's):"""),
    new_code_cell("""from convfirst.kernels import compare_gemm
from convfirst.records import data_path as _data_path, load_measurements as _load

if _data_path(f"gemm_{gpu}.csv").exists():
    patch = compare_gemm.comparison_tables(_load(_data_path(f"gemm_{gpu}.csv")))["patchify"]
    print(f"run of {patch.attrs['date']} at commit {patch.attrs['commit']}, batch {patch.attrs['batch']}")
    display(patch.round(4))
else:
    print(f"no patchify comparison recorded for {gpu}")"""),
    new_markdown_cell("""## Which fused kernels hold the model back

A whole-model time hides which blocks the fused kernels speed up and which they slow down. Chapter 3's
block benchmark (`data/block_bench_<gpu>.csv`) times each block shape on its own at batch 256: the fused
kernel, the best unfused implementation (eager, torch.compile, or this study's unfused Triton sequence)
and the block's roofline floor. Below, one row per stage of the two members the targets name: the time
per block, the stage total (blocks x time), the fused kernel's speed-up over the best unfused path
(`fused_speedup` below 1 means the fused kernel is slower) and the share of its roofline floor it reaches.
Shapes the block benchmark did not measure are empty."""),
    new_code_cell("""for name in (bm.CONTROL_MODEL, bm.HALF_GMAC_MODEL):
    stages = bm.stage_breakdown(gpu, name, 256)
    if stages is None:
        print(f"no block benchmark recorded for {gpu}: run chapter 3 on a GPU")
        break
    print(f"{name}: block benchmark of {stages.attrs['date']}, batch 256")
    display(stages.round(3))
    slow = stages[stages["fused_speedup"] < 1]
    if len(slow):
        print(f"  stages where the fused kernel is slower than the best unfused path: "
              f"{', '.join(f'C={c}@{h}x{h}' for c, h in zip(slow['C'], slow['H']))}; blocks alone: "
              f"{stages['stage_fused_ms'].sum():.2f} ms all fused, {stages['stage_best_ms'].sum():.2f} ms "
              f"with the faster path per stage")"""),
    new_markdown_cell("""## What the 14 x 14 and 7 x 7 matrix products leave on the table

The late stages run unfused, so the models' time there is that of our matrix products (chapter 3). Those
products trail cuBLAS's: chapter 3 times the 1x1 layers with their epilogue beside cuBLAS's matmul alone (no
bias, no epilogue; part `epilogue` of `data/gemm_<gpu>.csv`), and its counters show why (a third of the
instructions, warp specialisation). The table below is an **estimate built from those measurements**, not a
measurement: the time each model would save if the 1x1 layers of its unfused stages that were timed this way
(the expanding and projecting layers of the 14 x 14 and 7 x 7 stages; ours = the faster of the TMA kernel and
the ordered Gluon kernel below, as the models run them under CUDA graphs) ran in cuBLAS's matmul time with a free
epilogue (blocks x the difference), set against the model's measured fused time and the time its throughput
target needs. It says how far this one lever goes, and what it would take: cuBLAS's product alone, with the
SiLU, bias and residual added at no cost, which neither cuBLAS (it has no SiLU epilogue; a separate pass costs
more than it saves, the `cublas` rows of chapter 3) nor our Triton kernels deliver today. Stages whose
sequence blocks run both layers as one pair-kernel launch (the subsection after next; ConvFirstNet-H's
C = 256 stage) are left out: the model no longer runs those two products."""),
    new_code_cell("""from convfirst.params import ParameterError

if data_path(f"gemm_{gpu}.csv").exists():
    try:
        head = bm.matmul_headroom(runs, _load(data_path(f"gemm_{gpu}.csv")), batch=256)
    except ParameterError as exc:
        head = None
        print(f"no estimate: {exc}")
    if head is not None and len(head):
        display(head.round(4))
        for name, g in head.groupby("model", sort=False):
            r = g.iloc[0]
            verdict = "within" if r.model_ms_with_saving <= r.target_ms else "still short of"
            print(f"{name}: measured {r.model_ms:.2f} ms; estimate with cuBLAS-speed 1x1 layers "
                  f"({', '.join(dict.fromkeys(g['layer']))}) "
                  f"{r.model_ms_with_saving:.2f} ms ({g['saving_ms'].sum():.2f} ms saved), {verdict} the "
                  f"{r.target_ms:.2f} ms its throughput target needs")
    elif head is not None:
        print("no 1x1 layer of the models' unfused stages has epilogue rows recorded")
else:
    print(f"no matrix-product comparison recorded for {gpu}")"""),
    new_markdown_cell("""### The 1x1 layers on the ordered warp-specialised kernel

The estimate above pointed at the matrix products of the unfused stages. Chapter 3 (and `kernels/NOTES_gemm.md`,
v7) describes the kernel built for them: a Gluon kernel whose two consumer warp groups take turns on the tensor
cores while one loader warp keeps a four-stage ring full. The models' default GEMM form (`auto`) runs it inside
CUDA graphs where it was faster at the shape's first call, and the TMA kernel in eager calls, whose launches it
undercuts in host time. The table compares ConvFirstNet-H and -T with the default form and with the TMA
kernel alone, in one process per commit (`data/gemm_form_model_<gpu>.csv`; at commit 84d07c1, as at the anchor
run's commit 329e9ea, `auto` also ran the Gluon kernel eagerly, which on that host made the runs without CUDA
graphs slower: what led to the eager rule). At 7187ddc the eager calls of both forms launch the same kernels, so their rows without graphs differ
only by the host (at batch 1 the model is bound by host time, and the `auto` pass ran first in its process;
the cause of its slower batch-1 rows was not isolated)."""),
    new_code_cell("""def show_ab(name, column, a, b, batch=None):
    \"\"\"A recorded comparison of two paths in one process (data/<name>_<gpu>.csv): ms per commit, model, batch
    and CUDA graphs, one column per value of ``column``, and the ratio a / b.\"\"\"
    path = data_path(f"{name}_{gpu}.csv")
    if not path.exists():
        print(f"no {name} comparison recorded for {gpu}")
        return
    ab = _load(path)
    ab["cuda_graphs"] = ab["cuda_graphs"].astype(str).str.lower().isin(["true", "1"])
    if batch is not None:
        ab = ab[ab["batch"] == batch]
    table = ab.pivot_table(index=["commit", "model", "batch", "cuda_graphs"], columns=column, values="ms")
    table[f"{a} / {b}"] = table[a] / table[b]
    display(table.round(3))


show_ab("gemm_form_model", "gemm_form", "auto", "tma")"""),
    new_markdown_cell("""### Both 1x1 layers in one launch: the pair kernel

In a ConvFirst block the two 1x1 layers are adjacent (expand, SiLU, project, residual), so their E*C-wide hidden
activation need never reach DRAM. The pair kernel (`kernels/pair_ws.py`; `kernels/NOTES_gemm.md` has its versions)
runs both as one Gluon launch: per tile of 128 pixels, two consumer warp groups stream the weights chunk by
chunk, keep the SiLU output in registers as the next product's operand and accumulate the block's output in
registers. Its fp32 accumulator limits it to C <= 256, so of the two members the targets name only
ConvFirstNet-H's 14 x 14 stage (C = 256, eleven blocks) can take it; ConvFirstNet-T's sequence blocks (C = 384
and 768) keep the two GEMMs. The models' sequence blocks run it where it was timed faster at the shape's first
call (`CONVFIRST_SEQUENCE_GEMM=triton` keeps the two GEMMs); the block benchmark's `unfused-triton` line keeps
the two GEMMs, so it stays an unfused sequence. The estimate of the section above assumes the two GEMMs.

First the kernel beside the two GEMMs it replaces (part `pair` of `data/gemm_<gpu>.csv`, batch 256, CUDA
graphs, the latest run; `two-gemm auto` is what the sequence ran before; earlier runs of the kernel's
development are in the same file under their commits), then the two models with their sequence blocks on
each path (`data/sequence_gemm_model_<gpu>.csv`; ConvFirstNet-H's two rows at batch 256 come from two
processes of one commit, ConvFirstNet-T's from one)."""),
    new_code_cell("""import ast

if _data_path(f"gemm_{gpu}.csv").exists():
    g = _load(_data_path(f"gemm_{gpu}.csv"))
    pair = g[g["part"] == "pair"]
    if len(pair):
        print("the kernel's runs:", ", ".join(f"{c} ({d})" for d, c in
                                               pair[["date", "commit"]].drop_duplicates().values))
        pair = pair[pair["date"] == pair["date"].max()].copy()
        def _tile(impl, config):
            if not isinstance(config, str) or not config.startswith("{"):
                return f"{impl} {config}" if isinstance(config, str) and config else impl
            cf = ast.literal_eval(config)
            flags = [name.lower() for name in ("PINGPONG", "Y_REGS") if cf.get(name)]
            return " ".join([impl, f"BH={cf['BH']}", f"stages={cf['STAGES']}"] + flags)
        pair["name"] = [_tile(i, c) for i, c in zip(pair["impl"], pair["config"])]
        print(f"run of {pair['date'].iloc[0]} at commit {pair['commit'].iloc[0]}, batch {pair['batch'].iloc[0]}")
        display(pair.pivot_table(index="name", columns=["C", "H"], values="ms").round(4))
    else:
        print(f"no pair-kernel comparison recorded for {gpu}")
show_ab("sequence_gemm_model", "sequence_gemm", "pair", "triton", batch=big)"""),
    new_markdown_cell("""### The early stages on the warp-specialised block kernel

The fused blocks of the 56 x 56 and 28 x 28 stages have a third kernel form since commit f817fee: a Gluon kernel
whose warps only copy, only run the grouped conv or only run the 1x1 chain (`kernels/convfirst_ws.py`; chapter 3
and `kernels/NOTES_convfirst.md`, v8). It takes C <= 128 since f817fee and C <= 192 since b07647e (v8g: the
output columns as two accumulators of power-of-two widths), so in ConvFirstNet-H the 64@56 and 128@28 stages and
in ConvFirstNet-T the 96@56 and, since v8g, the 192@28 stage. The launcher times it against the best Triton form
per shape and keeps the faster. Both models with and without it in one process at f817fee, before v8g, when T's
192@28 stage still ran the Triton kernel (`data/ws_block_model_<gpu>.csv`, batch 256):"""),
    new_code_cell("""show_ab("ws_block_model", "ws_block", "on", "off")"""),
    new_markdown_cell("""### The late stages' grouped conv on the warp-specialised form

The sequence blocks of the 14 x 14 and 7 x 7 stages start with the standalone grouped conv. Since commit 9c3ee91
it has a warp-specialised Gluon form too (`kernels/gconv_ws.py`; chapter 3 and `kernels/NOTES_gconv.md`, v6),
which the launcher times against the Triton kernel at a shape's first call and runs inside CUDA graphs where it is
faster. At the stage shapes of the two targets' models (best tile per form, batch 256, CUDA graphs,
`data/gconv_forms_<gpu>.csv`, latest run):"""),
    new_code_cell("""if data_path(f"gconv_forms_{gpu}.csv").exists():
    gf = _load(data_path(f"gconv_forms_{gpu}.csv")).dropna(subset=["ms"])
    gf = gf[gf["form"].isin(["pixels", "ws", "cudnn"]) & gf["H"].isin([7, 14])]
    if (gf["form"] == "ws").any():
        last = gf.groupby("form")["date"].transform("max") == gf["date"]
        best = gf[last].sort_values("ms").groupby(["C", "H", "form"]).first()["ms"].unstack("form")
        best["pixels / ws"] = best["pixels"] / best["ws"]
        display(best.round(4))
    else:
        print(f"no warp-specialised grouped-conv run recorded for {gpu}")"""),
    new_markdown_cell("""ConvFirstNet-T runs nine 384@14 and three 768@7 grouped convs, ConvFirstNet-H eleven 256@14 ones. Against the
Triton kernel the first version of this form (eb7b7f6) predicted about 0.13 ms off T and 0.09 ms off H; the 8 x 16
patches of be24066 (`NOTES_gconv.md` v6c) about 0.04 ms more off T and 0.02 ms off H. The same commit reads the
stem's 12-value patch rows as padded 8-byte runs (the patchify table above, `triton-rowpad`): 0.125 -> 0.097 ms on
T, 0.117 -> 0.072 ms on H. Together the layer times predicted about 0.07 ms off each model; between the anchors T
moved 6.421 -> 6.358 ms and H 3.494 -> 3.432 ms. The rows of the control per commit above show each run beside
the runs before it, each with its own machine's $P$: two runs at be24066 on one machine, ten minutes apart, timed
T at 6.358 ms both times and measured $P$ at 753 and 701 TFLOP/s, so $E$ = 48.2% and 51.7% for the same latency.
The target table reads the later run (the anchor), where $E$ passes 50%; with the earlier run's $P$ it does not,
so this study does not count the 50% target as met."""),
    new_markdown_cell("""## The same comparison on a second GPU

The family plan was also run on an H200 (same Hopper SMs as the H100, 1.4x its memory bandwidth; chapter 3
compares the block kernels on both). The targets and the decomposition below are computed from that run's
recorded rows (`data/model_bench_h200.csv`, replayed whatever this page's mode), against ConvNeXt-T under
`torch.compile` default: max-autotune was not run on the H200. That run timed the fused models with CUDA
graphs at batch 1 only, so at batch 256 the smallest members (P, N) are bound by kernel-launch time there
(on the H100, ConvFirstNet-P takes 1.9 ms at batch 256 with graphs and 3.1-5.3 ms without)."""),
    new_code_cell("""from convfirst.records import data_path as _data_path

if gpu != "h200" and _data_path("model_bench_h200.csv").exists():
    other = bm.recorded_rows(bm.load_model_bench("h200"))
    print(f"H200 run: {other['date'].max()} at commit {other['commit'].iloc[0]}")
    display(bm.speed_targets(other, 256).round({"measured": 3}))
    display(bm.four_x_decomposition(other, 256)[["model", "gmac", "arithmetic_ratio", "efficiency",
                                                 "efficiency_ratio", "speedup"]].round(3))
else:
    print("no second GPU recorded beside this page's")"""),
    new_markdown_cell("""## What this run measured, and what it did not

The recorded run had about five minutes of GPU time, which cannot hold every model under every variant at
every batch (the fused rows shown come from the anchor run and, for the cases it did not reach, from the latest
run that measured them; the table after this paragraph counts the fused rows per commit, and the start of the
chapter gives every row's run): `torch.compile` compiles each new batch size afresh (10-20 s each on the H100 machine), the
fused kernels autotune their tile sizes for every new block shape and batch, and max-autotune benchmarks
Triton templates for every conv and matmul shape, minutes per model. The run therefore goes in priority
order: all batches for the comparison the chapter rests on, then every other model at batch 1 and 256, then
the other family members fused, a few baselines compiled at batch 256, and the EfficientNets at their native
resolutions; max-autotune is added with `max_autotune = True`. ConvNeXt-T under max-autotune-no-cudagraphs
at batch 256 was measured by a separate call on the same machine right after the recorded run
(`python -m convfirst.bench_models --models convnext_tiny --variants compile-max-autotune --batches 256`),
and enters the tables as a filled-in PyTorch row (a second attempt on a fresh machine, with no autotuning cache
from earlier runs, had not finished after 200 s and was stopped). The other baselines were not timed under max-autotune: for
EfficientNet-B0 its autotuning of the depthwise convolutions (Triton convolution templates at 40-240 ms per
candidate) was still running after seven minutes and was stopped, with no row recorded. The second table lists every planned case that is missing batches
in the shown rows: it was skipped when the time budget ran out, or failed (a failure is printed when the run
happens)."""),
    new_code_cell("""fused_rows = runs[runs["variant"].isin(bm.FUSED_VARIANTS)]
display(fused_rows.groupby(["commit", "date"]).agg(models=("model", lambda m: ", ".join(sorted(set(m)))),
                                                   rows=("ms", "size")).reset_index())"""),
    new_code_cell("""cases = bm.budget_plan(batches, max_autotune=max_autotune) if plan == "budget" else bm.full_plan(batches=batches)
coverage = bm.plan_coverage(runs, cases)
display(coverage[coverage["missing_batches"].map(len) > 0] if (coverage["missing_batches"].map(len) > 0).any()
        else "every planned case was measured at every planned batch")"""),
    new_markdown_cell("""## Re-measuring

On a machine with a CUDA GPU, `make measure` executes every notebook with `mode="measure"` and appends
its rows to `data/`; this chapter alone is

```bash
python -m convfirst.book --only 06 --mode measure --no-html       # or: python -m convfirst.bench_models --plan budget
```

and `-p plan full` measures every case (hours), `-p max_autotune True` adds torch.compile's
max-autotune mode."""),
]

write_notebook(cells, HERE / "06_convfirstnet_vs_baselines.ipynb")
