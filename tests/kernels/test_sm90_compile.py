"""The kernels compile for an H100/H200 (sm_90) as the JIT builds them, fit its shared memory, and their default
configurations do not spill in an inner loop; checked on a machine without a GPU."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kernels_compile_for_sm90_without_spills():
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and not os.environ.get("TRITON_PTXAS_PATH"):
        pytest.skip("this triton install has no ptxas to compile for NVIDIA GPUs")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # bf16, the training dtype, at every MedNeXt-S level, k = 3 and 7 (k5 takes the k7 configurations; the full
    # report, `--kernels 3,5,7`, is in kernels/README.md; fp32's norm_mlp still spills there).
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.sm90_compile", "--dtypes", "bf16", "--kernels", "3,7"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("OK") for line in lines) >= 50, proc.stdout
    for kernel in ("conv fwd", "conv dgrad", "wgrad", "mlp dx"):
        assert any(f" {kernel} " in line for line in lines), (kernel, proc.stdout)


def test_spill_detection_counts_only_innermost_loops_and_sees_uniform_branches():
    from tests.kernels.sm90_compile import spills
    sass = """
        /*0010*/                   STL [R1], R2 ;
        /*0020*/                   FFMA R3, R4, R5, R3 ;
        /*0030*/                   LDL R6, [R1] ;
        /*0040*/                   STL [R1+0x4], R7 ;
        /*0050*/               @P0 BRA 0x30 ;
        /*0060*/                   LDL R8, [R1+0x8] ;
        /*0070*/                   BRA.U !UP0, 0x60 ;
        /*0080*/                   BRA 0x20 ;
        /*0090*/                   EXIT ;
    """
    # Loops [0x30, 0x50] and [0x60, 0x70] (a uniform branch) are innermost; [0x20, 0x80] holds them.
    assert spills(sass) == (2, 3)
