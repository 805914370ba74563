import torch, time
from convfirst.bench_blocks import BlockCase, BlockShape, time_case
from convfirst.timing import bench_ms, l2_rotation_count
from convfirst.kernels import convfirst_fused as cf
ceil = {"peak_bf16_tflops": 700, "bandwidth_tbps": 3.0}
from convfirst.ceilings import load_ceilings
ceil = load_ceilings("h100").to_dict()
for (c, h, b) in [(64, 28, 32), (64, 28, 256), (64, 56, 32), (64, 56, 256)]:
    s = BlockShape("convfirst", c, h, h)
    npix = b * h * h
    case = BlockCase(s, b, "bfloat16", n_inputs=l2_rotation_count(2 * 2 * npix * c))
    fn = case.ours("fused"); fn(case.inputs[0])
    ins = [(x,) for x in case.inputs]
    a1 = bench_ms(fn, ins); a2 = bench_ms(fn, ins); g = bench_ms(fn, ins, cuda_graph=True)
    cfg = dict(cf.last_tuner().best_config.kwargs, num_warps=4, num_stages=2)
    if cf.last_tuner().best_config.maxnreg: cfg["maxnreg"] = cf.last_tuner().best_config.maxnreg
    p = case.packed; buf = torch.empty_like(case.inputs[0])
    d = bench_ms(lambda x: cf.launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"], buf, config=cfg), ins)
    t0 = time.perf_counter(); 
    for _ in range(200): fn(case.inputs[0])
    torch.cuda.synchronize(); cpu = (time.perf_counter() - t0) / 200 * 1e3
    print(f"{c}@{h} b{b}: harness {a1:.4f} {a2:.4f} graph {g:.4f} direct {d:.4f} back-to-back {cpu:.4f} ms cfg {cfg} n_inputs {len(ins)}", flush=True)
