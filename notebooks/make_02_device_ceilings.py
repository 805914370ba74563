"""Writes notebooks/02_device_ceilings.ipynb (outputs stripped). Run: python notebooks/make_02_device_ceilings.py"""
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from convfirst.book import write_notebook

HERE = Path(__file__).resolve().parent

cells = [
    new_markdown_cell(r"""# Device ceilings

Every floor, efficiency and roofline in this book divides by two numbers of the GPU that produced the
timings: its peak arithmetic rate $P$ (FLOP/s) and its DRAM bandwidth $B$ (bytes/s). This chapter measures
both, the way the rest of the study measures everything, and records them with the software that ran.

**How they are measured** (`convfirst.ceilings`):

- $P$: a dense $8192 \times 8192 \times 8192$ matrix product on random data (never zeros), in bf16 and
  in fp16, through PyTorch's default library (cuBLAS); $2n^3$ FLOP divided by the median time of many
  repetitions (`triton.testing.do_bench`, warm-up first).
- $B$: a device-to-device copy of 4 GiB, counting the bytes read *plus* the bytes written, median time.
- The multiprocessor count, the L2 size and the memory size are read from the device.

These are achieved rates, not datasheet peaks: a datasheet quotes the arithmetic rate at the highest clock
and the raw memory interface rate, and no real kernel reaches either. Using achieved ceilings makes every
efficiency in the book a statement about what software could still gain on this machine. When the book is
built without a GPU, the numbers are replayed from `data/ceilings_<gpu>.csv`."""),
    new_code_cell("""mode = "auto"          # 'auto': measure if a CUDA GPU is present, else replay; 'replay'; 'measure'
gpu = "h100"           # whose recorded ceilings to replay (data/ceilings_<gpu>.csv)
dtype = "bfloat16"     # precision of P used for the ridge point: 'bfloat16' or 'float16'
channels = 96          # C of the layer-type markers on the roofline (ConvNeXt-T's first stage)
expansion = 4          # E of the 1x1 and block markers""", metadata={"tags": ["parameters"]}),
    new_code_cell("""from convfirst import counting, plotting
from convfirst.analysis import attainable_flops, ridge_intensity
from convfirst.ceilings import bandwidth_bytes_per_s, ceilings_for, peak_flops, recorded_ceilings
from convfirst.params import DTYPES, check_choice, check_positive_int, resolve_mode, show_mode

mode = resolve_mode(mode)
check_choice("dtype", dtype, DTYPES)
channels = check_positive_int("channels", channels)
expansion = check_positive_int("expansion", expansion)
ceilings, gpu = ceilings_for(mode, gpu)
show_mode(mode, gpu, [f"ceilings_{gpu}.csv"])"""),
    new_markdown_cell("""## The measured ceilings

The row the book uses (the most recent for this GPU), then every row recorded for it, so that drift between
runs, drivers or software versions stays visible."""),
    new_code_cell("""P = peak_flops(ceilings, dtype)
B = bandwidth_bytes_per_s(ceilings)
display(ceilings.to_frame(name="value"))
history = recorded_ceilings(gpu)
display(history[["date", "gpu", "driver", "torch", "cuda", "bf16_tflops", "fp16_tflops", "copy_tbps",
                 "sm_count", "l2_mb", "commit"]].round(3))"""),
    new_markdown_cell(r"""## The ridge point

A kernel with operational intensity $I$ (FLOP per DRAM byte) can at best run at $\min(P, I \cdot B)$.
The two roofs meet at the **ridge point** $I^* = P/B$: a kernel below it is paced by memory, above it by
arithmetic. On a modern data-center GPU the ridge sits at a few hundred FLOP per byte."""),
    new_code_cell("""ridge = ridge_intensity(P, B)
print(f"P = {P / 1e12:.0f} TFLOP/s ({dtype}), B = {B / 1e12:.2f} TB/s  ->  ridge point P/B = {ridge:.0f} FLOP/byte")
print(f"Time to stream 1 GB at B: {1e9 / B * 1e3:.3f} ms; arithmetic the GPU could do meanwhile: "
      f"{P * 1e9 / B / 1e9:.0f} GFLOP")"""),
    new_markdown_cell("""## Where the layer types of the study fall

The roofline of this GPU, with the intensity of each layer type of the study (per output pixel, counted by
`convfirst.counting.intensity_table` at the chosen width and expansion) placed at the best rate that
intensity allows. Each marker is an upper bound for a kernel computing that layer alone."""),
    new_code_cell("""layer_types = counting.intensity_table(channels=channels, expansion=expansion)
layer_types["best_tflops"] = attainable_flops(layer_types["intensity"], P, B) / 1e12
layer_types["share_of_peak"] = layer_types["best_tflops"] * 1e12 / P
display(layer_types[["layer", "intensity", "best_tflops", "share_of_peak"]].round(3))
points = layer_types.rename(columns={"best_tflops": "achieved_tflops"})
ax = plotting.plot_roofline(P, B, points, label_col="layer", points_label="layer type at its best rate",
                            title=f"{gpu.upper()} roofline, {dtype}: best rate of each layer type (C = {channels})")"""),
    new_markdown_cell("""The separate layers of a ConvNeXt or ConvFirst block sit far left of the ridge: even a perfect kernel
for a depthwise or grouped conv, or for a 1x1 conv on an early-stage width, can use only a small share of the
arithmetic rate. The fused ConvFirst block, which keeps its hidden tensor on chip, is the only entry that
reaches the ridge at this width. Chapter 3 measures how close real kernels come to these bounds, and
chapter 5 stacks them for whole networks."""),
]

write_notebook(cells, HERE / "02_device_ceilings.ipynb")
