"""The cache the CPU ops take their output memory from (csrc/cpu/alloc.cpp, fastconv.backends.cpu_cache)."""
import io
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import fastconv.backends as fb
from conftest import FASTCONV_PATH

ops = torch.ops.fastconv

BIG = 1 << 18  # float32 elements: 1 MiB, well above the 64 KiB from which blocks are cached


def test_a_freed_output_is_reused():
    x = torch.randn(BIG)
    ops.relu(x)  # the output is freed at once: a free block
    before = fb.cpu_cache()
    assert before["free_bytes"] >= 4 * BIG
    z = ops.relu(x)
    after = fb.cpu_cache()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    torch.testing.assert_close(z, torch.relu(x), rtol=0, atol=0)


def test_empty_unmaps_free_blocks_and_ops_go_on():
    x = torch.randn(BIG)
    ops.relu(x)  # freed at once: a free block
    fb.empty_cpu_cache()
    assert fb.cpu_cache()["free_bytes"] == 0 and fb.cpu_cache()["free_blocks"] == 0
    torch.testing.assert_close(ops.relu(x), torch.relu(x), rtol=0, atol=0)


def test_outputs_are_ordinary_tensors(tmp_path):
    """Resized, saved and loaded, moved to shared memory, viewed: as any torch tensor."""
    x = torch.randn(BIG)
    y = ops.relu(x)
    y.resize_(2 * BIG)  # grows past the cached block: torch copies into a new one
    torch.testing.assert_close(y[:BIG], torch.relu(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(ops.relu(x), buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf), torch.relu(x), rtol=0, atol=0)
    s = ops.relu(x).share_memory_()
    assert s.is_shared()
    torch.testing.assert_close(s, torch.relu(x), rtol=0, atol=0)


def _python(code, **env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTCONV_CPU_CACHE")}
    env.update(env_vars, PYTHONPATH=FASTCONV_PATH)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tempfile.gettempdir(), capture_output=True,
                          text=True, timeout=120)


_USE = """
import torch, fastconv, fastconv.backends as fb
x = torch.randn(1 << 20)
for _ in range(3):
    y = torch.ops.fastconv.relu(x)
    assert torch.equal(y, torch.relu(x))
    del y
print(fb.cpu_cache())
"""


def test_cache_off():
    proc = _python(_USE, FASTCONV_CPU_CACHE_MB="0")
    assert proc.returncode == 0, proc.stderr
    stats = eval(proc.stdout.strip().splitlines()[-1])
    assert stats["cap_bytes"] == 0 and stats["free_bytes"] == 0 and stats["hits"] == 0


def test_cap_bounds_the_free_blocks():
    proc = _python(_USE, FASTCONV_CPU_CACHE_MB="1")  # a 4 MiB output does not fit: unmapped when freed
    assert proc.returncode == 0, proc.stderr
    stats = eval(proc.stdout.strip().splitlines()[-1])
    assert stats["cap_bytes"] == 1 << 20 and stats["free_bytes"] <= 1 << 20 and stats["hits"] == 0


def test_default_cap_reuses():
    proc = _python(_USE)
    assert proc.returncode == 0, proc.stderr
    stats = eval(proc.stdout.strip().splitlines()[-1])
    assert 0 < stats["cap_bytes"] <= 2 << 30 and stats["hits"] >= 2


@pytest.mark.parametrize("value", ["12MB"])
def test_bad_setting_is_a_clear_error(value):
    proc = _python(_USE, FASTCONV_CPU_CACHE_MB=value)
    assert proc.returncode != 0
    assert "FASTCONV_CPU_CACHE_MB must be a non-negative integer" in proc.stderr and value in proc.stderr
