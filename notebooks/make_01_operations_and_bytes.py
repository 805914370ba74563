"""Writes notebooks/01_operations_and_bytes.ipynb (outputs stripped). Run: python notebooks/make_01_operations_and_bytes.py"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# Operations and bytes

How long a network takes on a GPU is tied to how much arithmetic it does by one identity,
$T = W / (E \cdot P)$: $W$ is the work in floating-point operations (two per multiply-add), $P$ the peak
arithmetic rate of the device and $E$ the fraction of that peak the kernels reach. The best a kernel can
do is limited twice over: it cannot compute faster than $P$, and it cannot move its data faster than the
DRAM bandwidth $B$. With $Q$ the bytes a kernel must move between DRAM and the chip, its **roofline floor**
is $\max(W/P,\ Q/B)$ (this study's definition). Which term wins depends on the kernel's **operational
intensity** $I = W/Q$ in FLOP per byte: below the **ridge point** $P/B$ the kernel is memory-bound and its
arithmetic is nearly free; above it, it is compute-bound.

This chapter computes $W$ and $Q$ for every layer, block and model of the study from the model definitions
alone, on PyTorch's `meta` device (shapes without data), so it needs no GPU. Every number below comes from
`convfirst.counting`; none is typed in.

**How the counts are made** (conventions of this study):

- $W$ counts the multiply-adds of convolutions and matrix products, two FLOP each. Norms, activations,
  adds and pools count no FLOP but do move bytes.
- Inference form: a BatchNorm right after a conv is folded into the conv's weights and bias, so it costs
  nothing. LayerNorm, activations, residual adds and pools are separate layers with their own traffic.
- **Unfused** $Q$: each layer reads its inputs and its weights once and writes its output once, as a
  library running one kernel per layer at best does.
- **Fused** $Q$: a ConvFirst or MBConv block done as one kernel, depth-first, reads the block input and
  the weights and writes the block output; its wide hidden tensor never reaches DRAM. Other layers keep
  their unfused traffic.
- Weights are read once per batch, so at large batch the activations dominate."""),
    new_code_cell("""mode = "auto"          # 'auto' | 'replay' | 'measure'; this chapter only counts, on any machine
gpu = "h100"           # the GPU whose measured ceilings give the ridge point (data/ceilings_<gpu>.csv)
dtype_bytes = 2        # bytes per element of activations and weights (2: bf16 or fp16)
batch = 256            # images per forward pass
resolution = 224       # input size for every model in the model table
channels = 64          # C of the intensity table
expansion = 4          # E of the intensity table
models = ["convfirstnet_p", "convfirstnet_n", "convfirstnet_h", "convfirstnet_t", "convfirstnet_s",
          "mbconvnet_p", "mbconvnet_n", "mbconvnet_h", "mbconvnet_t", "mbconvnet_s",
          "convnext_nano", "convnext_tiny", "convnext_small", "efficientnet_b0", "efficientnet_b1",
          "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "resnet50", "mobilenetv3_large_100"]
block_shapes = [["convfirst", 64, 56], ["convfirst", 96, 56], ["convfirst", 192, 28], ["convfirst", 384, 14],
                ["convfirst", 768, 7], ["mbconv", 64, 56], ["mbconv", 128, 28], ["mbconv", 256, 14],
                ["convnext", 96, 56], ["convnext", 768, 7]]   # [block, C, H(=W)] or [block, C, H, E]""",
                  metadata={"tags": ["parameters"]}),
    new_code_cell("""from convfirst import counting, models as families, plot_counts
from convfirst.params import check_choice, check_choices, check_positive_int, resolve_mode, show_mode
from convfirst.provenance import DATA_DIR
from convfirst.records import load_cited, recorded_gpus

mode = resolve_mode(mode)
check_choice("gpu", gpu, recorded_gpus("ceilings") or [gpu])
check_choice("dtype_bytes", dtype_bytes, [1, 2, 4])
batch = check_positive_int("batch", batch)
resolution = check_positive_int("resolution", resolution)
channels = check_positive_int("channels", channels)
expansion = check_positive_int("expansion", expansion)
models = check_choices("models", models, counting.valid_model_names())
block_shapes = counting.check_block_shapes(block_shapes)
ridge, ridge_note = plot_counts.ridge_intensity(gpu)
show_mode("replay", gpu, ["cited_model_stats.csv"] + ([f"ceilings_{gpu}.csv"] if ridge else []))"""),
    new_markdown_cell("""## The ridge point

The ridge point divides memory-bound from compute-bound kernels. It is read from the ceilings measured
on the GPU named by the `gpu` parameter (chapter 2 measures them); without recorded ceilings the figures
are drawn without it."""),
    new_code_cell("print(ridge_note)"),
    new_markdown_cell(r"""## Intensity of the layer types

Per output pixel, counting only the compulsory activation traffic (read the input once, write the output
once, weights ignored), each layer type has an intensity that follows from its shape. The table counts
real layers and blocks on the meta device and puts the closed form beside each count; the two must agree.
With $b$ bytes per element, group width $g$, kernel $k$ and expansion $E$:
depthwise $k^2/b$, grouped $g k^2/b$, a 1x1 conv from $C$ to $EC$ channels $2EC/(b(1+E))$, and the
fused ConvFirst block $(g k^2 + 2EC)/b$."""),
    new_code_cell("""intensity = counting.intensity_table(channels=channels, expansion=expansion, dtype_bytes=dtype_bytes)
display(intensity[["layer", "flop_per_pixel", "bytes_per_pixel", "intensity", "closed_form",
                   "intensity_closed_form"]].round(2))"""),
    new_markdown_cell("""The depthwise and grouped convs have the same intensity at any width: their arithmetic and their traffic
both grow linearly in C. Only the 1x1 convs gain intensity with C, and at the widths of early stages they
too stay below a modern GPU's ridge point. The unfused ConvFirst block is *less* intense than its own 1x1
layers, because its wide hidden tensor (E times C channels) is written by the expansion, read and written
again by the activation, and read by the projection. Fused, the block keeps all its arithmetic but moves
only its input and output, so its intensity grows with C like a 1x1 layer's, without the dilution by
the hidden tensor's traffic."""),
    new_markdown_cell("""## Per-block accounting

The same accounting for whole blocks at the shapes of the study's benchmarks, for a batch of `batch` images,
weights included. `MB fused` is what a one-kernel block must move; `bytes saved x` is how much less that is
than one kernel per layer. The last columns say which side of the ridge point each form is on."""),
    new_code_cell("""blocks = counting.block_accounting_table(block_shapes, batch=batch, dtype_bytes=dtype_bytes)
display(plot_counts.block_table_for_display(blocks, ridge))"""),
    new_code_cell("""fig = plot_counts.plot_block_intensity(blocks, ridge, dtype_bytes)
plot_counts.show_text(plot_counts.describe_block_bounds(blocks, ridge))"""),
    new_markdown_cell("""The narrower the block, the further its unfused form sits below the ridge point: early-stage blocks,
which carry most of a convnet's activation traffic, are the ones paced by DRAM rather than by arithmetic.
Late-stage blocks are wide enough that their 1x1 layers approach the ridge on their own, so fusion buys
them less. The ConvNeXt rows show what fusing its block would buy, for comparison; no such kernel is part
of this study."""),
    new_markdown_cell("""## The model families

`convfirstnet_t` is the equal-shape control: ConvNeXt-T's stage widths and depths and expansion, with
ConvFirst blocks in place of ConvNeXt blocks. The other members, and the MBConv-gw8 family used for the
EfficientNet comparison, are sized by this study to span about 0.5 to 9 GMAC; the paper's own stage
tables were not available, so these shapes are ours. Every family member shares ConvNeXt's macro design
(a 4x4 stride-4 stem, 2x2 stride-2 downsampling between stages, a pooled linear head), with BatchNorm so
that it folds at inference."""),
    new_code_cell("display(families.family_table())"),
    new_markdown_cell("""One row per operator, in execution order, is what the counting produces for a model; the module path
and the order are kept so that later chapters can join these rows to the kernels a profiler records.
Here are the rows of the first block of `convfirstnet_t` (the BatchNorm rows are folded and cost nothing):"""),
    new_code_cell("""layers = counting.count_layers("convfirstnet_t", batch=batch, resolution=resolution, dtype_bytes=dtype_bytes)
first_block = layers[layers["fused_block"] == "stages.0.blocks.0"]
display(first_block[["order", "module", "op", "kind", "in_shape", "out_shape", "macs", "bytes", "bytes_fused",
                     "intensity", "folded"]])"""),
    new_markdown_cell("""## Whole models

Parameters, arithmetic (GMAC per image), activations (outputs of convs and matrix products, the way timm
counts them) and compulsory DRAM traffic per image, unfused and with every ConvFirst/MBConv block fused,
at `resolution` pixels and a batch of `batch`. For timm's models nothing is fused, so the two traffic
columns agree."""),
    new_code_cell("""table = counting.models_table(models, batch=batch, resolution=resolution, dtype_bytes=dtype_bytes,
                              progress=True)
display(plot_counts.model_table_for_display(table))"""),
    new_code_cell("""fig = plot_counts.plot_intensity_vs_gmac(table, ridge, dtype_bytes)
plot_counts.show_text(plot_counts.describe_model_bounds(table, ridge))"""),
    new_code_cell("""fig = plot_counts.plot_bytes_per_image(table, dtype_bytes)"""),
    new_markdown_cell("""Run one layer per kernel, the EfficientNet and MobileNet models, built from depthwise convs and
inverted residuals around a wide hidden tensor, have the lowest intensity of all the models counted here;
models with dense or wide 1x1 layers (ResNet-50, ConvNeXt) sit higher. Fusing the blocks of our families
leaves their arithmetic unchanged and divides their traffic; what remains is the blocks' inputs and
outputs, the weights, and the stem, downsampling layers and head, which block fusion does not touch."""),
    new_markdown_cell("""## Checking the counts against published numbers

timm publishes parameters, GMACs and activations for its models, counted with fvcore, which adds small
terms for norms and pooling to the conv and matrix-product MACs. Counted the same way, at each model's
published input size, our numbers agree with the published ones to within rounding
(the tests hold them to 2%). The study's $W$ is the conv-and-matmul count in the middle column."""),
    new_code_cell("""published = load_cited(DATA_DIR / "cited_model_stats.csv")
display(counting.compare_with_published(published).drop(columns="source").round(3))
print("source:", published["source"].iloc[0])"""),
    new_markdown_cell("""## What the counts do not say

Compulsory traffic is a lower bound. Real kernels move more: a grouped conv re-reads its halo, a GEMM
tiles its operands, and a block kernel may spill when its hidden tile does not fit on chip. Intensity also
says nothing about how close a kernel comes to its floor. Those are questions for measurement, which the
following chapters take up: the ceilings $P$ and $B$ of the GPU, then kernels and models timed against the
floors computed here."""),
]

write_notebook(cells, HERE / "01_operations_and_bytes.ipynb")
