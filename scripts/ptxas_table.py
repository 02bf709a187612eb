#!/usr/bin/env python3
"""The resource table of nvcc_check.sh: registers, shared memory, stack and spills per CUDA kernel.

Input: one argument, the folder of nvcc logs that nvcc_check.sh writes, one `<file>.sm_<arch>.log`
per kernel file and architecture (nvcc's output with -Xptxas -v; a failed compile ends its log with
a line `FAILED`).

Output (stdout): every log that failed, or has an error or a warning in it, in full; then one row per
kernel build (file, arch, registers, shared memory bytes, stack frame bytes, spill store/load bytes,
the demangled kernel name, via c++filt), then a summary line. Exit status 1 when a file failed to
compile, a kernel spills, or no kernel was found at all; 0 otherwise.
"""
import glob
import os
import re
import subprocess
import sys


def parse_logs(logs):
    """(rows, failed): one dict per kernel build in the logs, and the names of the logs that failed."""
    rows, failed = [], []
    for path in sorted(glob.glob(os.path.join(logs, "*.log"))):
        name = os.path.basename(path)[:-4]
        text = open(path).read()
        # ptxas's info lines name the kernels, whose mangled names may hold "error" (a type's name)
        diagnostics = "\n".join(line for line in text.splitlines() if not line.startswith("ptxas info")).lower()
        if "FAILED" in text or "error" in diagnostics or "warning" in diagnostics:
            failed.append(name)
            print(f"--- {name} ---\n{text}")
            continue
        kernel = None
        for line in text.splitlines():
            m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
            if m:
                kernel = dict(mangled=m.group(1), arch=m.group(2), file=name.split(".")[0])
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and kernel is not None:
                kernel.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
                continue
            m = re.search(r"Used (\d+) registers(.*)", line)
            if m and kernel is not None:
                smem = re.search(r"(\d+) bytes smem", m.group(2))
                kernel.update(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
                rows.append(kernel)
                kernel = None
    return rows, failed


def main(logs):
    rows, failed = parse_logs(logs)
    names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows), capture_output=True,
                           text=True).stdout.splitlines() if rows else []
    for r, n in zip(rows, names):
        n = re.sub(r"^void ", "", n).replace("fastconv::cuda::kernels::(anonymous namespace)::", "")
        r["name"] = re.sub(r"\(.*\)$", "", n)
    print(f"{'file':<14} {'arch':<6} {'regs':>4} {'smem B':>7} {'stack B':>7} {'spill st/ld B':>13}  kernel")
    for r in sorted(rows, key=lambda r: (r["file"], r["name"], r["arch"])):
        print(f"{r['file']:<14} {r['arch']:<6} {r['regs']:>4} {r['smem']:>7} {r['stack']:>7} "
              f"{r['spill_st']:>6}/{r['spill_ld']:<6}  {r['name']}")
    spills = [r for r in rows if r["spill_st"] or r["spill_ld"]]
    print(f"nvcc_check: {len(rows)} kernel builds, {len(spills)} with spills, {len(failed)} files failed to compile")
    return 1 if failed or spills or not rows else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
