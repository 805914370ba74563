"""Writes notebooks/04_efficiency_gap.ipynb (outputs stripped). Run: python notebooks/make_04_efficiency_gap.py"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# The efficiency gap

The paper's central identity ties a network's latency to its arithmetic:

$$T = \frac{W}{E \cdot P}$$

$W$ is the work of one forward pass in FLOP (two per multiply-add), $P$ the peak arithmetic rate of the GPU
(measured, chapter 2) and $E$ the **computational efficiency**, the fraction of that peak the whole pass
achieves. With $E = 1$ the pass would take the **ideal latency** $T^* = W/P$; the measured latency is
$1/E$ times longer, and this ratio $T / T^* = 1/E$ is the **efficiency gap** (the symbols $T^*$ and "gap"
are this study's names). Papers usually compare networks by $W$ alone, which assumes that $E$ is the same
for all of them. It is not, and this chapter measures by how much.

Two views of the same numbers (this study's rendering of the paper's efficiency-gap plot):

- **$\log W$ against $\log T$**, with diagonal **iso-efficiency lines** $T = W/(E P)$ for
  $E$ = 100 %, 50 %, 20 %, 10 %, 5 % and 1 %. On these axes every line has slope one, and a model's distance
  above the 100 % line is its gap.
- **Accuracy against latency**, each model drawn twice, at $T^*$ and at its measured $T$, joined by a
  line whose length on the log axis is its gap. Accuracy is cited (`data/cited_accuracy.csv`, each row with its
  source); latency is measured.

Latencies come from the model benchmark (`data/model_bench_<gpu>.csv`: wall-clock time of whole forward
passes, best of with and without CUDA graphs); cases it has not recorded come from this study's kernel
profiles (the sum of kernel times, which leaves out launch gaps and so flatters $E$ at small batch). The
`source` column says which. $W$ is counted by `convfirst.counting`."""),
    new_code_cell("""mode = "auto"          # 'auto': measure on a CUDA GPU, else replay; 'replay'; 'measure'
gpu = "h100"           # whose recorded data to replay
dtype = "bfloat16"     # precision of the timed models
batch = 256            # batch of the efficiency-gap and accuracy figures
batches = [1, 32, 256]  # batches of the efficiency table
models = ["convnext_tiny", "efficientnet_b0", "convfirstnet_t"]       # models of the table and gap figure
variants = ["eager", "compile-default", "fused"]                      # variants of the table and gap figure
accuracy_models = ["convnext_nano", "convnext_tiny", "convnext_small", "efficientnet_b0", "efficientnet_b1",
                   "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "resnet50",
                   "mobilenetv3_large_100"]                            # models of the accuracy figure""",
                  metadata={"tags": ["parameters"]}),
    new_code_cell("""from convfirst import analysis, plotting, profiling
from convfirst.bench_models import ALL_MODELS, BASELINES, VARIANTS as BENCH_VARIANTS
from convfirst.ceilings import ceilings_at, peak_flops
from convfirst.params import (DTYPES, check_choice, check_choices, check_positive_int, check_positive_ints,
                              resolve_mode, show_mode)
from convfirst.provenance import DATA_DIR
from convfirst.records import load_cited

mode = resolve_mode(mode)
check_choice("dtype", dtype, DTYPES)
batch = check_positive_int("batch", batch)
batches = check_positive_ints("batches", batches)
models = check_choices("models", models, ALL_MODELS)
variants = check_choices("variants", variants, BENCH_VARIANTS)
accuracy_models = check_choices("accuracy_models", accuracy_models, BASELINES)
if mode == "measure":
    gpu = profiling.record_latency(models, variants, batches, accuracy_models, batch, dtype)
latency = profiling.recorded_latency(gpu, dtype=dtype)
profile_date = profiling.load_kernel_profiles(gpu)["date"].max()
P = peak_flops(ceilings_at(gpu, profile_date), dtype)
show_mode(mode, gpu, sorted(set(latency["source"])) + [f"ceilings_{gpu}.csv", "cited_accuracy.csv"])"""),
    new_markdown_cell("""## Computational efficiency per model, variant and batch

$E = W / (T \\cdot P)$ for each recorded case, in percent. Each timing is divided by the peak rate measured in
its own run where the run recorded one (the model benchmark does), else by the ceilings recorded with the
kernel profiles."""),
    new_code_cell("""flop_per_image = analysis.layer_flop_totals(
    {m: analysis.count_model_layers(m, 1) for m in sorted(set(latency["model"]))})
table = analysis.efficiency_table(latency, flop_per_image, P)
chosen = analysis.select(table, model=models, variant=variants, batch=batches)
e_table = chosen.pivot_table(index="model", columns=["variant", "batch"], values="efficiency").mul(100).round(1)
display(e_table)
display(chosen[["model", "variant", "batch", "ms", "gflop", "ideal_ms", "efficiency", "gap", "source"]]
        .sort_values(["model", "variant", "batch"]).round(3).reset_index(drop=True))"""),
    new_markdown_cell("""Read across a row: every model's efficiency grows with the batch, because a larger batch gives each
kernel more parallel work and amortises the launch of ~150 to 400 kernels per pass. Read down a column: at
equal batch the models differ by several times in $E$, so their latencies are not in the ratio of their
arithmetic. EfficientNet-B0, with the least arithmetic, reaches only a few percent of peak; its
depthwise convs and squeeze-excite gates are memory-bound kernel after kernel."""),
    new_markdown_cell("""### Against the ranges the paper reports (cited)

The paper reports, per family, a range of computational efficiencies: EfficientNet 5-8%, ConvNeXt 19-35%,
ConvFirst 47-55% of peak (`data/cited_paper_efficiency.csv`, cited from a public summary of the paper: the
GPU, precision and the variable swept across each range are not stated there, so the comparison is
indicative). Beside them, the best variant of each model measured here at the largest batch of the table.
The `ConvFirst` rows are this study's ConvFirstNet members (its own design, not the paper's networks) under
their best measured variant: fused where the fused model was measured, PyTorch otherwise."""),
    new_code_cell("""from convfirst.bench_models import model_family

cited_e = load_cited(DATA_DIR / "cited_paper_efficiency.csv")
family_names = {"ConvFirstNet": "ConvFirst", "ConvNeXt": "ConvNeXt", "EfficientNet": "EfficientNet"}
display(analysis.efficiency_against_cited(table, cited_e, max(batches),
                                          lambda m: family_names.get(model_family(m), "other"))
        .drop(columns="source").round(1))"""),
    new_markdown_cell("""## Work against latency

Each point is one model under one variant at the chosen batch. The dashed diagonals are iso-efficiency
lines: a point on the 20 % line runs at one fifth of the GPU's peak rate."""),
    new_code_cell("""at_batch = analysis.select(table, model=models, variant=variants, batch=batch)
ax = plotting.plot_efficiency_gap(at_batch, P, title=f"{gpu.upper()}, batch {batch}, {dtype}: W against T")"""),
    new_markdown_cell("""A model lower and further right does more work in less time. The vertical distance from a point to the
100 % line is its gap; moving a model from one variant to another (eager to `torch.compile`, or to fused
blocks) moves it straight down, at constant $W$."""),
    new_markdown_cell("""## Accuracy against latency

Each model at its ideal latency $T^*$ (hollow) and at its fastest measured latency $T$ (filled, over the
variants recorded at this batch), joined by its gap. Models without a cited ImageNet accuracy are not
drawn: this study does not train ConvFirstNet on ImageNet (chapter 6 discusses what that leaves open).
Accuracies are published single-crop top-1 at the evaluation size their source states, which for some
models is larger than the 224x224 input timed here."""),
    new_code_cell("""accuracy = load_cited(DATA_DIR / "cited_accuracy.csv")
fastest = analysis.best_variant(analysis.select(table, model=accuracy_models, batch=batch))
points = analysis.accuracy_latency(fastest, accuracy)
missing = sorted(set(accuracy_models) - set(points["model"]))
if missing:
    print(f"no recorded latency at batch {batch} (or no cited accuracy) for: {missing}")
ax = plotting.plot_accuracy_latency(points, title=f"{gpu.upper()}, batch {batch}: accuracy against ideal and measured latency")
display(points[["model", "variant", "top1", "eval_img_size", "ideal_ms", "ms", "gap", "source_y"]]
        .rename(columns={"source_y": "accuracy source"}).round(3))"""),
    new_markdown_cell("""The same comparison in numbers: each model's work, ideal latency and measured latency as multiples of
ConvNeXt-T's at this batch."""),
    new_code_cell("""display(analysis.relative_to(points, "convnext_tiny").round(2))"""),
    new_markdown_cell("""Ordered by $T^*$, the models are spread as their arithmetic says: EfficientNet-B0 would be an order of
magnitude faster than ConvNeXt-T. Measured, the spread collapses, because the models with the least
arithmetic have the longest gaps; the latency advantage their operation count promises is mostly lost to
low efficiency. This is the paper's point: accuracy per operation is the wrong measure of an
architecture's cost on a GPU. Accuracy per unit of latency depends on the efficiency its layers can reach,
which is what block fusion (chapters 3, 5 and 6) changes."""),
]

write_notebook(cells, HERE / "04_efficiency_gap.ipynb")
