#!/usr/bin/env python3
"""The machine-code check of nvcc_check.sh: what the GEMM kernels are made of, read from their SASS.

Input: one argument, the folder of nvcc_check.sh's logs, where it has written one
`<file>.sm_<arch>.sass` per kernel file and architecture (the output of `cuobjdump -sass`).

Output (stdout): one row per GEMM kernel build (gemm_kernel, gemm_simt8_kernel, gemm_tc_kernel) with
its counts of
  HMMA     tensor-core multiply-accumulates (mma.sync),
  LDGSTS   asynchronous global -> shared copies (cp.async),
  LDSM     shared -> register matrix loads (ldmatrix),
  LDG.128  16-byte global loads,
  RCP      MUFU.RCP, the reciprocal at the heart of the integer-division subroutine;
then a summary line and one line per problem:
  - a tensor-core kernel without HMMA, LDGSTS or LDSM;
  - any other kernel with HMMA;
  - a convolution GEMM kernel with 10 or more MUFU.RCP (its index math must divide only in the
    prologue, if at all: the main loops carry their indices with adds).
Exit status 1 when there is a problem or no tensor-core kernel was found; 0 otherwise.
"""
import glob
import os
import re
import subprocess
import sys

COUNTED = {
    "HMMA": re.compile(r"\bHMMA\."),
    "LDGSTS": re.compile(r"\bLDGSTS\b"),
    "LDSM": re.compile(r"\bLDSM\b"),
    "LDG.128": re.compile(r"\bLDG\.E\S*\.128\b"),
    "RCP": re.compile(r"\bMUFU\.RCP\b"),
}
MAX_CONV_RCP = 9


def sass_counts(logs):
    """[(arch, mangled kernel name, {instruction: count})] over every .sass file in `logs`."""
    rows = []
    for path in sorted(glob.glob(os.path.join(logs, "*.sass"))):
        arch = os.path.basename(path).split(".")[1]
        name, counts = None, {}
        for line in open(path):
            m = re.search(r"Function : (\S+)", line)
            if m:
                name = m.group(1)
                counts[name] = dict.fromkeys(COUNTED, 0)
            elif name:
                for key, pattern in COUNTED.items():
                    if pattern.search(line):
                        counts[name][key] += 1
        rows += [(arch, mangled, c) for mangled, c in counts.items()]
    return rows


def short_name(full):
    short = full.replace("fastconv::cuda::kernels::", "").replace("(anonymous namespace)::", "")
    short = short.replace("fastconv::mma::", "").replace("gemm::", "")
    return re.sub(r"^void ", "", re.sub(r"\(.*\)$", "", short))


def main(logs):
    rows = sass_counts(logs)
    names = subprocess.run(["c++filt"], input="\n".join(r[1] for r in rows), capture_output=True,
                           text=True).stdout.splitlines()
    bad, tc = [], 0
    print(f"{'arch':<6} " + " ".join(f"{k:>7}" for k in COUNTED) + "  kernel")
    for (arch, _, c), full in zip(rows, names):
        short = short_name(full)
        is_tc = "gemm_tc_kernel" in full
        is_gemm = any(k in full for k in ("gemm_kernel", "gemm_simt8_kernel", "gemm_tc_kernel"))
        if is_gemm:
            print(f"{arch:<6} " + " ".join(f"{c[k]:>7}" for k in COUNTED) + f"  {short}")
        if is_tc:
            tc += 1
            for key in ("HMMA", "LDGSTS", "LDSM"):
                if c[key] == 0:
                    bad.append(f"{arch} {short}: no {key}")
        elif c["HMMA"]:
            bad.append(f"{arch} {short}: {c['HMMA']} HMMA in a kernel that should have none")
        if is_gemm and "Conv" in full and c["RCP"] > MAX_CONV_RCP:
            bad.append(f"{arch} {short}: {c['RCP']} MUFU.RCP (integer division) in a convolution GEMM")
    print(f"sass_check: {tc} tensor-core kernel builds, {len(bad)} problems")
    for b in bad:
        print("  " + b)
    return 1 if bad or tc == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
