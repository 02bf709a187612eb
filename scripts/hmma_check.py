#!/usr/bin/env python3
"""The tensor-core check of nvcc_check.sh: each tensor-core GEMM kernel must contain HMMA instructions.

Input: one argument, the folder of nvcc_check.sh's logs, where it has written one
`<file>.sm_<arch>.sass` per kernel file and architecture (the output of `cuobjdump -sass`).

Output (stdout): one row per tensor-core kernel build (a kernel whose name has `gemm_tc_kernel`:
arch, its number of HMMA instructions, its demangled name, via c++filt), a summary line, and then
one line per problem: a tensor-core kernel without HMMA, or any other (SIMT) kernel with HMMA.
Exit status 1 when there is a problem or no tensor-core kernel was found; 0 otherwise.
"""
import glob
import os
import re
import subprocess
import sys


def hmma_counts(logs):
    """[(arch, mangled kernel name, number of HMMA instructions)] over every .sass file in `logs`."""
    rows = []
    for path in sorted(glob.glob(os.path.join(logs, "*.sass"))):
        arch = os.path.basename(path).split(".")[1]
        name, counts = None, {}
        for line in open(path):
            m = re.search(r"Function : (\S+)", line)
            if m:
                name = m.group(1)
                counts[name] = 0
            elif name and re.search(r"\bHMMA\.", line):
                counts[name] += 1
        rows += [(arch, mangled, n) for mangled, n in counts.items()]
    return rows


def main(logs):
    rows = hmma_counts(logs)
    names = subprocess.run(["c++filt"], input="\n".join(r[1] for r in rows), capture_output=True,
                           text=True).stdout.splitlines()
    bad, tc = [], 0
    for (arch, _, n), full in zip(rows, names):
        short = re.sub(r"\(.*\)$", "", full.replace("fastconv::cuda::kernels::", "").replace("(anonymous namespace)::", ""))
        short = re.sub(r"^void ", "", short)
        if "gemm_tc_kernel" in full:
            tc += 1
            print(f"{arch:<6} {n:>3} HMMA  {short}")
            if n == 0:
                bad.append(f"{arch} {short}: no HMMA")
        elif n:
            bad.append(f"{arch} {short}: {n} HMMA in a kernel that should have none")
    print(f"nvcc_check: {tc} tensor-core kernel builds, {len(bad)} problems")
    for b in bad:
        print("  " + b)
    return 1 if bad or tc == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
