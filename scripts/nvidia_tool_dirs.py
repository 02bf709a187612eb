#!/usr/bin/env python3
"""Where the CUDA tools from pip packages are: for nvcc_check.sh to find cuobjdump and nvdisasm.

Input: none; it looks in this Python's site-packages folders (and the user's) for the `bin` folders
that NVIDIA's pip packages install (`nvidia/cu*/bin`, e.g. from nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm).

Output (stdout): those folders joined by `:` (a PATH fragment; an empty line when there are none).
"""
import glob
import os
import site

dirs = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(d for p in dirs for d in glob.glob(os.path.join(p, "nvidia", "cu*", "bin"))))
