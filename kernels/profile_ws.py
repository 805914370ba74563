"""Which part binds the warp-specialised fused ConvFirst kernel (v8, :mod:`convfirst_ws`): its products left out
in turn, the copies and barriers kept.

The kernel's profiling switch ``SKIP`` drops the grouped conv's products (1), the 1x1 chain's products (2), the
residual's loads (4), or several; the outputs are then wrong on purpose (``rel_err`` shows it) and only the times
count. If leaving a part out does not make the kernel faster, that part is not what binds it. How the v8 rows of
``NOTES_convfirst.md`` were read; results in ``data/convfirst_ws_parts_<gpu>.csv``.

    python -m convfirst.kernels.profile_ws --out results/
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from convfirst.bench_blocks import BlockCase, BlockShape, relative_error
from convfirst.provenance import with_provenance
from convfirst.timing import bench_ms, l2_rotation_count

from . import convfirst_fused, convfirst_ws

PARTS = {0: "nothing", 1: "grouped conv products", 2: "1x1 chain products", 3: "all products",
         4: "residual loads"}
SHAPES = ["64@56x56", "96@56x56", "128@28x28"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="ConvFirst shapes as C@HxW")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    rows = []
    cases = [(text, halo) for text in args.shapes for halo in sorted({convfirst_ws.HALO_VIEWS, False})]
    for text, halo in tqdm(cases, desc="kernel parts"):
        c, hw = text.split("@")
        h, w = hw.split("x")
        shape = BlockShape("convfirst", int(c), int(h), int(w))
        npix = args.batch * shape.H * shape.W
        case = BlockCase(shape, args.batch, "bfloat16", n_inputs=l2_rotation_count(4 * npix * shape.C))
        p, x0 = case.packed, case.inputs[0]
        ref = case.reference(x0)
        base = convfirst_ws.ws_configs(shape.C, halo=halo)[0]
        for skip, left_out in PARTS.items():
            config = dict(base, SKIP=skip)
            buf = torch.empty_like(x0)

            def fn(x, config=config, buf=buf):
                return convfirst_fused.launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"],
                                                              p["wp_t"], p["b_p"], buf, config=config)
            rows.append({"block": "convfirst", "C": shape.C, "H": shape.H, "W": shape.W, "E": shape.E,
                         "batch": args.batch, "dtype": "bfloat16", "config": str(base), "skip": skip,
                         "left_out": left_out, "rel_err": relative_error(case.launch_poisoned(x0, config), ref),
                         "ms": bench_ms(fn, [(x,) for x in case.inputs])})
        del case
    df = with_provenance(pd.DataFrame(rows), layout="channels_last")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ws_parts.csv", index=False)
    print(df.pivot_table(index=["C", "H", "config"], columns="left_out", values="ms").to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
