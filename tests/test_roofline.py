"""benchmarks.roofline: the byte and FLOP counts of one block against a hand computation, and the bound."""
import pytest

from benchmarks import roofline

V = 2 * 128 ** 3  # level 0 of batch 2 at 128^3
C, HIDDEN, E = 32, 64, 2  # MedNeXt-S level 0: 32 channels, R = 2, bf16


def _by_name(kernels, where):
    return {k.name: k for k in kernels if k.where == where}


def test_one_stage_block_counts_match_a_hand_computation():
    ks = _by_name(roofline.model_kernels("S", 3, batch=2, size=128, dtype="bf16", mode="train"), "enc_block_0.0")
    assert sorted(ks) == ["dwconv_stats dgrad", "dwconv_stats fwd", "dwconv_stats wgrad", "norm_mlp bwd",
                          "norm_mlp fwd"]
    conv_weights = 4 * C * (27 + 1)
    # conv fwd: read x, write y (bf16), the fp32 weights and bias; 27 FMAs per channel and voxel
    assert ks["dwconv_stats fwd"].bytes == E * C * 2 * V + conv_weights
    assert ks["dwconv_stats fwd"].core_ops == 27 * C * V and ks["dwconv_stats fwd"].tensor_flops == 0
    # dgrad: read dy and the residual's gradient, write dx; wgrad: read x and dy
    assert ks["dwconv_stats dgrad"].bytes == E * C * 3 * V + conv_weights
    assert ks["dwconv_stats wgrad"].bytes == E * C * 2 * V + conv_weights
    assert ks["dwconv_stats dgrad"].core_ops == ks["dwconv_stats wgrad"].core_ops == 27 * C * V
    mlp_weights = 4 * (2 * C * HIDDEN + HIDDEN + C + 2 * C)
    # norm_mlp fwd: read y and the residual, write out; two GEMMs 32 -> 64 -> 32; GELU on 64 per voxel
    fwd = ks["norm_mlp fwd"]
    assert fwd.bytes == E * 3 * C * V + mlp_weights
    assert fwd.tensor_flops == 2 * V * (C * HIDDEN + HIDDEN * C)
    assert fwd.core_ops == roofline.GELU_FWD_OPS * HIDDEN * V
    # bwd: read dout and y, write dy; 5 GEMMs (recompute, dhidden, dy, dW2, dW3); weights and their grads
    bwd = ks["norm_mlp bwd"]
    assert bwd.bytes == E * 3 * C * V + 2 * mlp_weights
    assert bwd.tensor_flops == 2 * V * HIDDEN * (3 * C + 2 * C)
    assert bwd.core_ops == roofline.GELU_BWD_OPS * HIDDEN * V


def test_strided_and_transposed_convs_count_taps_of_the_smaller_side():
    down = roofline.dwconv_stats(32, 8 ** 3, 4 ** 3, 5, "fp32")
    up = roofline.dwconv_stats(64, 4 ** 3, 8 ** 3, 5, "fp32")
    assert down.core_ops == 125 * 32 * 4 ** 3 and up.core_ops == 125 * 64 * 4 ** 3
    assert down.bytes == 4 * 32 * (8 ** 3 + 4 ** 3) + 4 * 32 * 126


def test_kernel_time_is_the_max_of_its_three_limits_and_the_bound_their_sum():
    dev = roofline.Device("test", gbps=1000, fp32_tflops=2, tensor_tflops=100)
    memory = roofline.Kernel("m", "", 0, bytes=1e9, core_ops=1e9, tensor_flops=1e9)   # 1 ms, 1 ms, 0.01 ms
    fma = roofline.Kernel("f", "", 0, bytes=1e6, core_ops=4e9)                          # 4 ms of FMAs
    tensor = roofline.Kernel("t", "", 0, bytes=1e6, tensor_flops=3e11)                  # 3 ms on tensor cores
    assert memory.seconds(dev) == pytest.approx(1e-3)
    assert fma.seconds(dev) == pytest.approx(4e-3) and fma.limiter(dev) == "fma"
    assert tensor.seconds(dev) == pytest.approx(3e-3) and tensor.limiter(dev) == "tensor"
    assert roofline.bound_s([memory, fma, tensor], dev) == pytest.approx(8e-3)
    no_tc = roofline.Device("cpu-like", gbps=1000, fp32_tflops=2, tensor_tflops=None)
    assert tensor.seconds(no_tc) == pytest.approx(1e-6)


def test_fp32_gemms_run_on_the_fma_units():
    k = roofline.norm_mlp(32, 32, 2, 1000, "fp32")
    assert k.tensor_flops == 0 and k.core_ops == 2 * 1000 * 64 * 64 / 2 + roofline.GELU_FWD_OPS * 64 * 1000


def test_gpu_names_resolve_to_the_vendor_table():
    assert roofline.gpu("NVIDIA H200").name == "H200"
    assert roofline.gpu("NVIDIA H100 80GB HBM3").gbps == 3350
    assert roofline.gpu("NVIDIA H100 PCIe").gbps == 2000
    assert roofline.gpu("NVIDIA A100-SXM4-40GB").gbps == 1555
    assert roofline.gpu("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    with pytest.raises(KeyError):
        roofline.gpu("NVIDIA T4")


def test_step_bounds_of_s_on_h200_near_the_diagnosis_estimate(capsys):
    h200 = roofline.gpu("H200")
    bounds = {k: roofline.bound_s(roofline.model_kernels("S", k, glue="split"), h200) * 1e3 for k in (3, 5, 7)}
    for k, estimate in ((3, 12.2), (5, 18.5), (7, 33.7)):  # docs: benchmarks/README.md, "Roofline"
        assert 0.7 * estimate <= bounds[k] <= 1.3 * estimate, (k, bounds[k])
    fused = roofline.bound_s(roofline.model_kernels("S", 3), h200) * 1e3
    fwd = roofline.bound_s(roofline.model_kernels("S", 3, mode="fwd"), h200) * 1e3
    assert fwd < fused < bounds[3]
    assert roofline.main(["--variant", "S", "--kernel", "5", "--gpu", "H200"]) == 0
    out = capsys.readouterr().out
    assert "lower bound:" in out and "| dwconv_stats wgrad | 0 |" in out and "| norm_mlp bwd | 4 |" in out
