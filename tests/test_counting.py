"""Analytic counting: against FlopCounterMode, timm's published numbers, and a block counted by hand."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from convfirst import counting
from convfirst.params import ParameterError
from convfirst.provenance import DATA_DIR
from convfirst.records import load_cited

MODELS = ["convfirstnet_p", "mbconvnet_p", "convnext_tiny", "efficientnet_b0", "resnet50",
          "mobilenetv3_large_100"]


@pytest.mark.parametrize("name", MODELS)
def test_conv_and_matmul_flop_equal_flop_counter_mode(name):
    model = counting.build_model_on_meta(name)
    x = torch.empty(2, 3, 224, 224, device="meta")
    with FlopCounterMode(display=False) as reference, torch.no_grad():
        model(x)
    layers = counting.count_layers(model, batch=2, resolution=224)
    assert int(layers["flop"].sum()) == reference.get_total_flops()


def _published_tolerance(value: float) -> float:
    """2%, or half a unit of the last published digit when rounding alone exceeds 2% (e.g. 0.23)."""
    decimals = len(f"{value:.2f}".rstrip("0").split(".")[1]) if "." in f"{value:.2f}".rstrip("0") else 0
    return max(0.02 * value, 0.5 * 10 ** -max(decimals, 2))


def test_timm_published_gmacs_params_and_activations():
    cited = load_cited(DATA_DIR / "cited_model_stats.csv")
    assert {"convnext_tiny", "efficientnet_b0"} <= set(cited["model"])
    for row in cited.itertuples():
        ours = counting.model_summary(row.model, resolution=int(row.img_size))
        assert abs(ours["gmac_fvcore"] - row.gmacs) <= _published_tolerance(row.gmacs), row.model
        assert abs(ours["params_m"] / row.param_count_m - 1) < 0.02, row.model
        assert abs(ours["activations_m"] / row.macts_m - 1) < 0.02, row.model
    tiny = cited.set_index("model").loc["convnext_tiny"]
    b0 = cited.set_index("model").loc["efficientnet_b0"]
    assert abs(counting.model_summary("convnext_tiny")["gmac_fvcore"] / tiny.gmacs - 1) < 0.02
    assert abs(counting.model_summary("efficientnet_b0")["gmac_fvcore"] / b0.gmacs - 1) < 0.02


def test_convfirst_block_counted_by_hand():
    n, c, h, w, e, g, k, b = 2, 16, 8, 8, 4, 8, 3, 2
    pixels = n * h * w
    x, hidden = pixels * c, pixels * e * c                      # activation elements
    w_g, w_e, w_p = c * g * k * k + c, e * c * c + e * c, c * e * c + c  # folded weights with biases
    macs = pixels * (c * g * k * k + 2 * e * c * c)
    unfused = ((x + w_g + x)                # grouped conv: read x and weights, write
               + (x + w_e + hidden)         # 1x1 expand
               + (hidden + hidden)          # SiLU
               + (hidden + w_p + x)         # 1x1 project
               + (x + x + x)) * b           # residual add: read two, write one
    fused = (x + w_g + w_e + w_p + x) * b
    got = counting.block_accounting("convfirst", c, h, w, e, batch=n, dtype_bytes=b)
    assert got["macs"] == macs and got["flop"] == 2 * macs
    assert got["bytes_unfused"] == unfused
    assert got["bytes_fused"] == fused
    assert got["weight_bytes"] == (w_g + w_e + w_p) * b
    assert got["operators_unfused"] == 5


def test_mbconv_and_convnext_blocks_flop():
    n, c, h, e = 1, 32, 14, 4
    mb = counting.block_accounting("mbconv", c, h, batch=n)
    assert mb["macs"] == n * h * h * (2 * e * c * c + e * c * 8 * 9)
    cn = counting.block_accounting("convnext", c, h, batch=n)
    assert cn["kernel_size"] == 7 and cn["group_width"] == 1
    assert cn["macs"] == n * h * h * (2 * e * c * c + c * 49)
    assert cn["bytes_fused"] < cn["bytes_unfused"]


def test_study_anchor_block_flop():
    """ConvFirst 64@56, N=256, E=4 (STUDY.md section 5): W = 2*N*H*W*C*(8*9 + 2*E*C)."""
    got = counting.block_accounting("convfirst", 64, 56, batch=256)
    assert got["flop"] == 2 * 256 * 56 * 56 * 64 * (72 + 2 * 4 * 64)
    assert got["bytes_fused"] - got["weight_bytes"] == 2 * 256 * 56 * 56 * 64 * 2


def test_intensity_table_agrees_with_closed_forms():
    table = counting.intensity_table(channels=64, expansion=4)
    closed = table.dropna(subset=["intensity_closed_form"])
    assert len(closed) >= 6
    assert (abs(closed["intensity"] - closed["intensity_closed_form"]) < 1e-9).all()
    by_layer = table.set_index("layer")["intensity"]
    assert by_layer["depthwise 3x3"] == 4.5 and by_layer["depthwise 7x7"] == 24.5
    assert by_layer["grouped 3x3, group width 8"] == 36.0
    assert by_layer["ConvFirst block, fused"] == 292.0
    assert by_layer["ConvFirst block, unfused"] < by_layer["1x1 C->4C"]


def test_layer_table_structure_and_fused_accounting():
    layers = counting.count_layers("convfirstnet_p", batch=2)
    assert list(layers["order"]) == list(range(len(layers)))
    assert layers["params"].sum() == layers.attrs["params_total"]
    assert (layers.loc[layers["folded"], ["bytes", "flop"]] == 0).all().all()
    inside = layers[layers["fused_block"] != ""]
    assert all(m.startswith(b) for m, b in zip(inside["module"], inside["fused_block"]))
    assert inside["fused_block"].nunique() == 18
    outside = layers[layers["fused_block"] == ""]
    assert (outside["bytes_fused"] == outside["bytes"]).all()
    assert layers["bytes_fused"].sum() < 0.6 * layers["bytes"].sum()
    kinds = set(layers["kind"])
    assert {"conv_grouped", "conv_pointwise", "conv_dense", "norm_bn", "act", "add", "linear"} <= kinds
    baseline = counting.count_layers("convnext_tiny")
    assert (baseline["bytes_fused"] == baseline["bytes"]).all()
    assert "conv_depthwise" in set(baseline["kind"])


def test_counting_a_real_model_leaves_it_untouched():
    from convfirst.blocks import ConvFirstBlock
    block = ConvFirstBlock(16)
    counting.count_layers(block, input_shape=(1, 16, 8, 8))
    assert block.conv_g.weight.device.type == "cpu"


def test_batch_scales_activation_bytes_not_weights():
    one = counting.block_accounting("convfirst", 64, 14, batch=1)
    four = counting.block_accounting("convfirst", 64, 14, batch=4)
    assert four["flop"] == 4 * one["flop"]
    assert four["bytes_fused"] - four["weight_bytes"] == 4 * (one["bytes_fused"] - one["weight_bytes"])
    assert four["weight_bytes"] == one["weight_bytes"]


def test_bad_inputs_are_named():
    with pytest.raises(ParameterError, match="convfirstnet_t"):
        counting.model_summary("convfirstnet_zz")
    with pytest.raises(ParameterError, match="block"):
        counting.block_accounting("resnet", 64, 14)
    with pytest.raises(ParameterError, match="dtype_bytes"):
        counting.count_layers("convfirstnet_p", dtype_bytes=3)
    with pytest.raises(ParameterError, match="batch"):
        counting.count_layers("convfirstnet_p", batch=0)


def test_chapter_figures_have_labelled_axes_with_units():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convfirst import plot_counts

    blocks = counting.block_accounting_table([("convfirst", 64, 56, 56, 4), ("mbconv", 64, 28, 28, 4)])
    models = counting.models_table(["convfirstnet_p", "efficientnet_b0"], resolution=64)
    figures = [plot_counts.plot_block_intensity(blocks, ridge=200.0),
               plot_counts.plot_intensity_vs_gmac(models, ridge=200.0),
               plot_counts.plot_bytes_per_image(models)]
    for fig in figures:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() is not None
        assert any(unit in ax.get_xlabel() + ax.get_ylabel() for unit in ("FLOP/byte", "MB", "GMAC"))
        plt.close(fig)
    text = plot_counts.describe_block_bounds(blocks, ridge=200.0)
    assert "2 of 2 shapes are memory-bound unfused" in text
    shown = plot_counts.block_table_for_display(blocks, ridge=200.0)
    assert list(shown["fused is"]) == ["compute-bound", "compute-bound"]
    assert plot_counts.ridge_intensity("no_such_gpu")[0] is None


def test_chapter_notebook_is_generated_by_its_script(tmp_path):
    """notebooks/01_operations_and_bytes.ipynb is what its builder script writes (no hand edits)."""
    import json
    import runpy
    import shutil

    nbformat = pytest.importorskip("nbformat")
    notebooks = DATA_DIR.parent / "notebooks"
    script = tmp_path / "make_01_operations_and_bytes.py"
    shutil.copy(notebooks / script.name, script)
    runpy.run_path(str(script), run_name="__main__")
    generated = json.loads((tmp_path / "01_operations_and_bytes.ipynb").read_text())
    committed = json.loads((notebooks / "01_operations_and_bytes.ipynb").read_text())
    assert [c["source"] for c in generated["cells"]] == [c["source"] for c in committed["cells"]]
    nb = nbformat.read(notebooks / "01_operations_and_bytes.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "mode = " in params[0].source and "gpu = " in params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
