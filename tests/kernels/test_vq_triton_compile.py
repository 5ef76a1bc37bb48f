"""The kernels compile for an H100 (sm_90) through ptxas, without a GPU.

The interpreter runs the kernels' maths but not Triton's GPU lowering (layouts, tl.dot
operand types, register and shared-memory limits), so a kernel can pass every interpreter
test and still fail to compile. This compiles each kernel ahead of time in a subprocess
(the test process has TRITON_INTERPRET=1, which makes kernels interpreted functions).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.kernels.conftest import kernels_runnable

ok, why = kernels_runnable()
pytestmark = pytest.mark.skipif(not ok, reason=why)

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vqlib.kernels import vq_triton as vt

    def compile_for_sm90(fn, types, constants, num_warps=4, num_stages=3):
        sig = {}
        for p in fn.params:
            sig[p.name] = "constexpr" if p.is_constexpr else types.get(p.name, "i32")
        src = ASTSource(fn=fn, signature=sig, constexprs=constants)
        options = {"num_warps": num_warps, "num_stages": num_stages}
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)

    ptrs = dict(codes_ptr="*u8", cb_ptr="*fp16", scale_ptr="*fp32", sign_ptr="*u8", bias_ptr="*fp32")
    for x, codes, v, sign, fp32 in [("fp16", "*u8", 4, False, False), ("bf16", "*i16", 8, True, False),
                                     ("fp32", "*u8", 3, True, True)]:
        types = dict(ptrs, x_ptr="*" + x, y_ptr="*" + x, codes_ptr=codes)
        for bm, bn, bk in [(16, 64, 64), (128, 128, 64)]:
            consts = dict(V=v, HAS_SCALE=True, HAS_SIGN=sign, HAS_BIAS=True, DOT_FP32=fp32,
                          BM=bm, BN=bn, BK=bk, GROUP_M=8)
            compile_for_sm90(vt._gemm_kernel, types, consts)
    compile_for_sm90(vt._dequant_kernel, dict(ptrs, codes_ptr="*i16", cb_ptr="*bf16", out_ptr="*fp16"),
                     dict(V=8, HAS_SCALE=True, HAS_SIGN=True, BN=32, BK=128))
    compile_for_sm90(vt._lut_build_kernel, dict(x_ptr="*bf16", cb_ptr="*fp16", lut_ptr="*fp32"),
                     dict(V=4, BJ=32, BC=64))
    compile_for_sm90(vt._lut_gather_kernel, dict(lut_ptr="*fp32", codes_ptr="*u8", scale_ptr="*fp16", bias_ptr="*fp32",
                     y_ptr="*fp16"), dict(HAS_SCALE=True, HAS_BIAS=True, BM=8, BN=64, BJ=32))
    print("compiled")
    """
)


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 4):
        pytest.skip(
            "the ahead-of-time compile API used here (ASTSource with 'constexpr' signatures) needs triton >= 3.4"
        )
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if run.returncode and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("no ptxas in this triton install")
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
