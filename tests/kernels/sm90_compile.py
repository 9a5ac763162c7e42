"""Compile the Triton kernels for sm_90 (H100) without a GPU: frontend -> TTGIR -> PTX -> cubin (bundled ptxas).

Run as a script in a process where TRITON_INTERPRET is unset (``triton.jit`` must build real kernels):
``python -m tests.kernels.sm90_compile [--all]``. Prints one line per kernel and exits 1 if any kernel fails
to compile or needs more shared memory than an H100 block may use. Catches GPU-only errors (dot shapes,
layouts, register/shared-memory blow-ups) that the interpreter cannot see.
"""
import importlib
import os
import sys

SMEM_LIMIT = 227 * 1024  # H100 / H200 opt-in shared memory per block


def _compile(fn, sig, consts, warps, stages):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full = dict(sig)
    full.update({k: "constexpr" for k in consts})
    src = ASTSource(fn, full, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    return kernel.metadata.shared


def cases(everything: bool):
    import triton.language as tl

    dw = importlib.import_module("mednext_fast.kernels.dwconv_stats")
    nm = importlib.import_module("mednext_fast.kernels.norm_mlp")
    tl_of = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
    dtypes = ("bf16", "fp16", "fp32") if everything else ("bf16", "fp32")
    for dt in dtypes:
        cfg = dw._blocks(2, 32, 128 ** 3, False)
        blocks = dict(BS=cfg["BS"], BC=cfg["BC"])
        conv_sig = dict(x_ptr=f"*{dt}", w_ptr="*fp32", b_ptr="*fp32", y_ptr=f"*{dt}", s1_ptr="*fp32",
                        s2_ptr="*fp32", C="i32", DI="i32", HI="i32", WI="i32", SI="i32", DO="i32", HO="i32",
                        WO="i32", SO="i32", DQ="i32", HQ="i32", WQ="i32", TILES="i32")
        wgrad_sig = dict(a_ptr=f"*{dt}", b_ptr=f"*{dt}", dw_ptr="*fp32", C="i32", DA="i32", HA="i32", WA="i32",
                         SA="i32", DB="i32", HB="i32", WB="i32", SB="i32", TILES="i32")
        # Every conv launch as (name, STRIDE, TRANSPOSED, forward with bias + statistics?): the forward of each
        # mode and its dgrad (the transposed mapping: stride 1 flipped, down -> transposed, up -> stride 2).
        convs = (("stride1 fwd", 1, False, True), ("stride1 dgrad", 1, True, False),
                 ("down fwd", 2, False, True), ("down dgrad", 2, True, False),
                 ("up fwd", 2, True, True), ("up dgrad", 2, False, False))
        for k in ((3, 5, 7) if everything else (7,)):
            for name, stride, transposed, fwd in convs:
                yield (f"dwconv {name} {dt} k{k}", dw._dwconv_kernel, conv_sig,
                       dict(K=k, STRIDE=stride, TRANSPOSED=transposed, HAS_BIAS=fwd, STATS=fwd, **blocks),
                       cfg["warps"], 3)
            for stride in (1, 2):
                yield (f"dwconv wgrad stride{stride} {dt} k{k}", dw._wgrad_kernel, wgrad_sig,
                       dict(K=k, STRIDE=stride, NSUB=cfg["NSUB"], **blocks), cfg["warps"], 3)
        yield (f"dwconv grad-total {dt}", dw._grad_total_kernel,
               dict(gy_ptr=f"*{dt}", y_ptr=f"*{dt}", a_ptr="*fp32", b_ptr="*fp32", g_ptr=f"*{dt}", db_ptr="*fp32",
                    C="i32", S="i32", TILES="i32"), blocks, cfg["warps"], 3)
        for c in ((32, 64, 128, 256, 512) if everything else (32, 512)):
            act = tl_of[dt]
            elem = 4 if dt == "fp32" else 2
            cfg = nm._blocks(c, 4 * c, c, 10 ** 6, False, elem)
            common = dict(ACT=act, DOT=act, IEEE=dt == "fp32", BM=cfg["BM"], BCI=cfg["BCI"], BH=cfg["BH"])
            w = dict(scale_ptr="*fp32", shift_ptr="*fp32", w1_ptr=f"*{dt}", b1_ptr="*fp32", w2_ptr=f"*{dt}")
            yield (f"norm_mlp fwd {dt} C{c}", nm._fwd_kernel,
                   dict(y_ptr=f"*{dt}", **w, b2_ptr="*fp32", r_ptr="*fp32", out_ptr="*fp32", S="i32", C="i32",
                        RC="i32", CO="i32", TILES="i32"),
                   dict(HAS_RES=True, BCO=cfg["BCO"], **common), cfg["warps"], cfg["stages"])
            bco = max(16, nm.next_pow2(c))
            yield (f"norm_mlp dx {dt} C{c}", nm._dx_kernel,
                   dict(y_ptr=f"*{dt}", **w, go_ptr="*fp32", dy_ptr=f"*{dt}", a_ptr="*fp32", b_ptr="*fp32",
                        S="i32", C="i32", RC="i32", CO="i32", TILES="i32"),
                   dict(BCO=bco, **common), cfg["warps"], cfg["stages"])
            yield (f"norm_mlp dW {dt} C{c}", nm._dw_kernel,
                   dict(y_ptr=f"*{dt}", **w, go_ptr="*fp32", dw1_ptr="*fp32", db1_ptr="*fp32", dw2_ptr="*fp32",
                        S="i32", C="i32", RC="i32", CO="i32", TILES="i32", NT="i32", TPS="i32"),
                   dict(BCO=bco, **common), cfg["warps"], cfg["stages"])


def main(argv) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter builds no GPU kernels")
        return 2
    failed = 0
    for name, fn, sig, consts, warps, stages in cases("--all" in argv):
        try:
            shared = _compile(fn, sig, consts, warps, stages)
        except Exception as err:  # report every kernel, not only the first failure
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {str(err)[:800]}", flush=True)
            continue
        ok = shared <= SMEM_LIMIT
        failed += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {name}: shared memory {shared} B", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
