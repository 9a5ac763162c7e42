// Python bindings of the fused CPU ops: module mednext_fast._C (wrapped by mednext_fast/cpp_ops.py).
#include <torch/extension.h>

#include "cpu_kernels.h"
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mednext-fast fused CPU inference kernels (fp32); use mednext_fast.cpp_ops";
  // The GIL is released while the kernels run so other Python threads can proceed.
  m.def("dwconv_stats", &mednext_fast::dwconv_stats, "depthwise conv3d + per-(n, c) sum / sum of squares",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("transposed"),
        py::arg("plane_begin") = 0, py::arg("plane_end") = -1, py::arg("out") = py::none(),
        py::arg("stats_only") = false, py::call_guard<py::gil_scoped_release>());
  m.def("norm_mlp", &mednext_fast::norm_mlp, "GroupNorm-apply + expansion + GELU + compression + residual",
        py::arg("y"), py::arg("s1"), py::arg("s2"), py::arg("gamma"), py::arg("beta"), py::arg("w_expand"),
        py::arg("b_expand"), py::arg("w_compress"), py::arg("b_compress"), py::arg("residual"), py::arg("eps"),
        py::arg("out") = py::none(), py::arg("bf16_gemms") = false, py::arg("count") = 0,
        py::call_guard<py::gil_scoped_release>());
  m.def("norm_mlp_tile", &mednext_fast::norm_mlp_tile, "voxels per norm_mlp tile for a hidden width",
        py::arg("rc"), py::arg("bf16") = false);
  m.def("set_mlp_fused", &mednext_fast::set_mlp_fused, py::arg("on"),
        "use the fused MLP kernel for narrow layers (default True); returns the previous setting");
  m.def("fma_peak_gflops", &mednext_fast::fma_peak_gflops,
        "measured fp32 multiply-add peak of torch.get_num_threads() threads (GFLOP/s, ~0.1-0.3 s)",
        py::call_guard<py::gil_scoped_release>());
  m.def("isa", []() { return std::string(mednext_fast::cpu::isa()); }, "ISA build the conv kernel uses");
  m.def("set_isa", [](const std::string& name) { return mednext_fast::cpu::set_isa(name.c_str()); },
        "force the conv kernel's ISA build ('avx512', 'avx2', 'default'); False if unsupported here");
}
