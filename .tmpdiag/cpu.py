import torch, time
from convfirst.bench_blocks import BlockCase, BlockShape
from convfirst.kernels import convfirst_fused as cf
s = BlockShape("convfirst", 64, 28, 28)
case = BlockCase(s, 8, "bfloat16")
x = case.inputs[0]; p = case.packed; buf = torch.empty_like(x)
op = case.ours("fused")
def per_call(f, n=300):
    f(); torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6
args = (x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"], buf)
v5cfg = cf.resident_config(64, 256); v4cfg = cf.heuristic_config(64, 8*784)
print("op (v5 autotuned) us", per_call(lambda: op(x)))
print("launch v5 autotuned us", per_call(lambda: cf.launch_convfirst_block(*args)))
print("launch v5 fixed us", per_call(lambda: cf.launch_convfirst_block(*args, config=v5cfg)))
print("launch v4 fixed us", per_call(lambda: cf.launch_convfirst_block(*args, config=v4cfg)))
cf.resident_preferred = lambda c, h: False
print("launch v4 autotuned us", per_call(lambda: cf.launch_convfirst_block(*args)))
print("op (v4 autotuned) us", per_call(lambda: op(x)))
print("empty kernel-free op overhead: check only us", per_call(lambda: cf.check_convfirst_inputs(x, *args[1:7])))
