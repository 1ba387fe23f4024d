"""Compiling Triton kernels to CUDA binaries on a machine without a GPU (test helper).

Triton's interpreter checks what a kernel computes but not whether it lowers to
the GPU; ``triton.compile`` with an explicit target runs the whole toolchain
(TTIR, TTGIR, LLVM, PTX, ptxas) with no device present. The triton wheel
that torch's Linux wheels pull in ships ptxas, so a missing toolchain is a
broken install and fails the test.
"""


def compile_for_cuda(fn, signature: dict, constexprs: dict, capability: int = 90, num_warps: int = 4, num_stages: int = 3):
    """``signature``: every argument in order, pointer/int types or "constexpr"; ``constexprs``: their values."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    args = list(signature)
    source = ASTSource(fn=fn, signature=signature, constexprs={(args.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    assert len(compiled.asm.get("cubin", b"")) > 0, fn
    return compiled
