# torch's figures timed the way `benches/qmm.rs --repeat N` times ours: N calls back to back between
# two CUDA events, divided by N (`python3 torch_repeat.py 8`). Otherwise the shared anchor script
# (../shared/bench/torch_anchor.py) unchanged, which times one call between its events.
# Anchor figures on the lent GPU: dense fp16/bf16 GEMV/GEMM (cuBLAS) and torch's int4 group-quantized
# matmul (tinygemm), on Llama-8B layer shapes, weights rotated so L2 never holds them.
import torch, sys, json
REPEAT = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.manual_seed(0)
dev = "cuda"
shapes = [(4096, 4096), (14336, 4096), (4096, 14336)]   # (N out, K in)
Ms = [1, 8, 32, 512]
def bench(fn, reps=50):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(REPEAT): fn()
        b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b) / REPEAT)
    ts.sort(); return ts[len(ts)//2]
rows = []
for (N, K) in shapes:
    copies = max(2, int(400e6 // (N*K*2)) + 1)
    Ws = [torch.randn(N, K, device=dev, dtype=torch.float16) for _ in range(copies)]
    # int4 tinygemm, group 64, bf16
    packed = []
    try:
        for W in Ws[:copies]:
            Wb = W.to(torch.bfloat16)
            g = Wb.view(N, K // 64, 64)
            mn = g.amin(-1, keepdim=True); mx = g.amax(-1, keepdim=True)
            scale = ((mx - mn) / 15).clamp(min=1e-6)
            q = ((g - mn) / scale).round().clamp(0, 15).to(torch.int32).view(N, K)
            qu8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            wp = torch.ops.aten._convert_weight_to_int4pack(qu8, 8)
            zero = mn + scale * 8   # tinygemm: w = (q - 8) * scale + zero
            sz = torch.stack([scale.view(N, K // 64).t(), zero.view(N, K // 64).t()], -1).contiguous().to(torch.bfloat16)
            packed.append((wp, sz))
    except Exception as e:
        print("int4 setup failed:", repr(e)[:300]); packed = []
    for M in Ms:
        x = torch.randn(M, K, device=dev, dtype=torch.float16)
        i = [0]
        def dense():
            i[0] = (i[0] + 1) % copies; return torch.nn.functional.linear(x, Ws[i[0]])
        t = bench(dense)
        rows.append(dict(kind="fp16 cuBLAS", N=N, K=K, M=M, ms=t, GBs=(N*K*2)/t/1e6, TFLOPs=2*M*N*K/t/1e9))
        if packed:
            xb = x.to(torch.bfloat16); j = [0]
            def q4():
                j[0] = (j[0] + 1) % len(packed); wp, sz = packed[j[0]]
                return torch.ops.aten._weight_int4pack_mm(xb, wp, 64, sz)
            try:
                t = bench(q4)
                rows.append(dict(kind="int4 g64 tinygemm", N=N, K=K, M=M, ms=t, GBs=(N*K*0.5 + N*K/64*4)/t/1e6, TFLOPs=2*M*N*K/t/1e9))
            except Exception as e:
                print("int4 mm failed:", repr(e)[:300]); packed = []
print(f"{'kind':20s} {'N':>6s} {'K':>6s} {'M':>4s} {'us':>9s} {'GB/s':>8s} {'TFLOP/s':>8s}")
for r in rows:
    print(f"{r['kind']:20s} {r['N']:6d} {r['K']:6d} {r['M']:4d} {r['ms']*1e3:9.1f} {r['GBs']:8.0f} {r['TFLOPs']:8.2f}")
