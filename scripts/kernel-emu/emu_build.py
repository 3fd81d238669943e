"""The build shared by the kernel emulation (check_kernels.py) and the emulated GPU
(emulated_gpu.py): where the CUDA headers are, and every kernels/*.cu compiled with g++ against
emu.h into one shared library."""

import os
import site
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "kernels")


def cuda_include(*headers):
    """The first folder holding every one of `headers`: nvcc's (NVCC), the nvidia-cuda wheels'
    in this Python, or /usr/local/cuda's. Exits with a message where there is none."""
    nvcc = os.environ.get("NVCC")
    candidates = []
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include"))
    dirs = list(sys.path) + site.getsitepackages()
    candidates += [os.path.join(d, "nvidia", "cu13", "include") for d in dirs]
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if all(os.path.isfile(os.path.join(c, h)) for h in headers):
            return c
    sys.exit(f"{' and '.join(headers)} not found (set NVCC, or pip install nvidia-cuda-nvcc nvidia-cuda-runtime)")


def compile_kernels(lib, headers, after=(), flags=()):
    """Compiles emu.h, every kernels/*.cu and then the files `after` (in this folder), as one
    translation unit, into the shared library `lib` (written whole or not at all); `headers` are
    the CUDA headers the unit needs, `flags` more options for g++."""
    unit = lib + ".cpp"
    with open(unit, "w") as f:
        f.write('#include "emu.h"\n')
        for name in sorted(os.listdir(KERNELS)):
            if name.endswith(".cu"):
                f.write(f'#include "{name}"\n')
        for name in after:
            f.write(f'#include "{name}"\n')
    subprocess.run(
        ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-psabi", "-x", "c++",
         f"-I{cuda_include(*headers)}", f"-I{HERE}", f"-I{KERNELS}", *flags, unit, "-o", lib + ".tmp"],
        check=True,
    )
    os.replace(lib + ".tmp", lib)
    return lib
