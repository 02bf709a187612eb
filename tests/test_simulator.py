"""The SIMT simulator itself: planted bugs are caught with a useful report, correct kernels give the
same bits in every thread order, and fastconv.simulate() routes the ops to the CUDA kernels.

The self-test kernels live in csrc/sim/selftest.cu; torch.ops.fastconv._sim_selftest(name, n) runs
one on n floats (initialised to NaN) and returns them.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from conftest import FASTCONV_PATH, NO_SIMULATOR, assert_bitwise_equal

# the simulator's runtime: run by the sanitizer on the sim backend too
pytestmark = [pytest.mark.sanitize_sim, pytest.mark.skipif(not fastconv._build_info.simulator, reason=NO_SIMULATOR)]

ops = torch.ops.fastconv
SELFTEST_CU = Path(__file__).resolve().parents[1] / "csrc" / "sim" / "selftest.cu"
ORDERS = [dict(order="forward"), dict(order="reverse"), dict(order="random", seed=1), dict(order="random", seed=2)]
ORDER_IDS = ["forward", "reverse", "random1", "random2"]


def selftest(name, n, **settings):
    with fastconv.simulate(**settings):
        return ops._sim_selftest(name, n)


def value_of(i):
    return ((i * 37) % 101) * 0.25 - 12.0


def line_of(fragment):
    """The line number of the one line of selftest.cu that holds `fragment`."""
    lines = [n for n, text in enumerate(SELFTEST_CU.read_text().splitlines(), 1) if fragment in text]
    assert len(lines) == 1, (fragment, lines)
    return lines[0]


# ------------------------------------------------------------------------------- correct kernels

def _expected(name, n):
    if name == "ok_reduce":
        return torch.tensor([sum(value_of(b * 256 + t) for t in range(256)) for b in range(n // 256)])
    if name == "ok_warp_ops":
        scan = [sum(j % 3 for j in range(32 * (t // 32), t + 1)) for t in range(64)]
        return torch.tensor(scan + [16.0, 16.0, float(sum(t % 5 == 0 for t in range(64)))])
    if name == "ok_warp_exchange":
        return torch.tensor([value_of(31 - lane) + 2 * value_of(63 - lane) for lane in range(32)])
    if name == "ok_dynamic_shared":
        return torch.tensor([value_of(n - 1 - t) for t in range(n)])
    raise KeyError(name)


OK_CASES = [("ok_reduce", 2048), ("ok_warp_ops", 67), ("ok_warp_exchange", 32), ("ok_dynamic_shared", 160)]


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("name,n", OK_CASES, ids=[c[0] for c in OK_CASES])
def test_correct_kernels_give_exact_results_in_every_order(name, n, settings):
    out = selftest(name, n, **settings)
    expected = _expected(name, n)
    # the values are multiples of 1/4 far below 2^22: every partial sum is exact in float32
    assert_bitwise_equal(out[:expected.numel()], expected.to(torch.float32))


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
def test_integer_atomics_across_blocks(settings):
    out = selftest("ok_atomics", 50, **settings)  # 50 blocks of 96 threads add 1 each
    assert out[:1].view(torch.int32).item() == 50 * 96


def test_shuffle_from_an_inactive_lane_returns_poison():
    out = selftest("ok_shfl_inactive_source", 32)
    bits = out.view(torch.int32)
    assert torch.isnan(out[:16]).all()
    assert (bits[:16] == 0x7FC0DEAD).all(), "the value of a lane outside the mask must be the poison NaN"
    assert not (bits[16:] == 0x7FC0DEAD).any()


# ---------------------------------------------------------------------------------- planted bugs

# name, n, a pattern every order's report matches, the source fragment of the line it must name
BUGS = [
    ("bug_reduce_missing_syncthreads", 2048, r"shared-memory race: thread \(\d+,0,0\).* (reads|writes) 4 bytes of "
     r"static shared memory .* that thread \(\d+,0,0\).* (wrote|read) in the same barrier interval",
     "partial[t] += partial[t + half]"),
    ("bug_warp_exchange_missing_syncwarp", 32, r"shared-memory race: .*no __syncthreads\(\) or __syncwarp\(\) "
     r"orders them", "const float first = slot[31 - lane];"),
    ("bug_divergent_barrier", 64, r"(exits while 32 thread\(s\) of its block wait at __syncthreads\(\)|reaches "
     r"__syncthreads\(\) at \S+ after thread \(\d+,0,0\).* has exited).*barrier divergence", "if (t < 32) __syncthreads();"),
    ("bug_early_exit_barrier", 200, r"(exits while \d+ thread\(s\) of its block wait at __syncthreads\(\)|reaches "
     r"__syncthreads\(\) at \S+ after thread \(\d+,0,0\).* has exited).*barrier divergence",
     "__syncthreads();  // the threads that returned early never arrive"),
    ("bug_shfl_mask_excludes_caller", 32, r"calls __shfl_sync at \S+ with mask 0xffff, which excludes the calling lane "
     r"(1[6-9]|2\d|3[01])$", "__shfl_sync(0x0000ffffu, value_of(t), 0)"),
    ("bug_shfl_exited_lanes", 32, r"(exits while lanes 0x[0-9a-f]+ of its warp wait for it at __shfl_xor_sync|names "
     r"lanes 0x[0-9a-f]+ that have exited)", "__shfl_xor_sync(0xffffffffu, value_of(t), 1)"),
    ("bug_shfl_vs_barrier", 32, r"(wait for it at __shfl_sync|deadlock: every live thread waits)",
     "v = __shfl_sync(0xffffffffu, v, 0);"),
    ("bug_out_of_bounds_write", 100, r"out-of-bounds global write of 4 bytes at 0x[0-9a-f]+ by thread \(\d+,0,0\).*: "
     r"it starts 0 bytes past the end of 'out' \(400 bytes", "if (t <= n) out[t] = value_of(t);"),
    ("bug_uninitialised_shared", 64, r"thread \((3[2-9]|[4-5]\d|6[0-3]),0,0\).* reads 4 bytes of static shared memory "
     r".* that no thread of this block has written", "out[t] = tile[t];"),
]


def _report_line_numbers(report):
    return {int(n) for n in re.findall(r"selftest\.cu:(\d+)", report)}


def _planted_bug_report(name, n, pattern, settings):
    """The report of self-test `name`, checked for the pattern, the kernel's coordinates and the order;
    returns the report and the kernel's name."""
    with pytest.raises(RuntimeError) as info:
        selftest(name, n, **settings)
    report = str(info.value)
    first_line = report.splitlines()[0]
    assert first_line.startswith("fastconv simulator: "), report
    assert re.search(pattern, report, re.S | re.M), report
    kernel = re.search(r"in kernel (.+), block \((\d+),0,0\) of grid \((\d+),1,1\), block size \((\d+),1,1\), (\w+) order",
                       report)
    assert kernel, report
    assert kernel.group(5) == settings["order"]
    return report, kernel.group(1)


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("name,n,pattern,fragment", BUGS, ids=[b[0] for b in BUGS])
def test_planted_bug_is_reported(name, n, pattern, fragment, settings):
    report, _ = _planted_bug_report(name, n, pattern, settings)
    # the line of the bug itself (or of the barrier / collective it trips over) is named
    target = line_of(fragment)
    assert target in _report_line_numbers(report), (target, report)


def test_unknown_selftest_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="no self-test kernel named 'nope'"):
        ops._sim_selftest("nope", 8)
    with pytest.raises(ValueError, match="order must be one of"):
        with fastconv.simulate(order="sideways"):
            pass
    assert not fastconv.simulator.is_enabled()


# ------------------------------------------------------------------------------- tensor-core mma

MMA_K = {"f16": 16, "bf16": 16, "tf32": 8}


def _mma_expected(k):
    """D = A B + C of the mma self-test (csrc/sim/selftest.cu, mma_tile), exact in float64."""
    a = torch.tensor([[value_of(r * k + j) for j in range(k)] for r in range(16)], dtype=torch.float64)
    b = torch.tensor([[value_of(1000 + j * 8 + n) for n in range(8)] for j in range(k)], dtype=torch.float64)
    c = torch.tensor([[value_of(2000 + r * 8 + n) for n in range(8)] for r in range(16)], dtype=torch.float64)
    return (a @ b + c).reshape(-1)


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("kind", list(MMA_K))
def test_mma_fragment_layouts_give_the_exact_product(kind, settings):
    """Lanes that pack their registers by the PTX ISA's fragment layouts get D = A B + C, exactly."""
    out = selftest(f"ok_mma_{kind}", 128, **settings)
    assert_bitwise_equal(out, _mma_expected(MMA_K[kind]).to(torch.float32))


@pytest.mark.parametrize("kind", ["f16", "tf32"])
def test_mma_with_a_fragment_index_slip_gives_a_wrong_product(kind):
    """Swapping two A registers (rows g + 8 <-> columns + 8) is a layout bug the simulated mma exposes."""
    out = selftest(f"bug_mma_{kind}_swapped_registers", 128)
    expected = _mma_expected(MMA_K[kind]).to(torch.float32)
    wrong = (out != expected).sum().item()
    assert wrong >= 64, f"only {wrong} of 128 outputs changed"


def test_mma_reached_by_half_a_warp_is_reported():
    with pytest.raises(RuntimeError) as info:
        selftest("bug_mma_divergent", 128)
    report = str(info.value)
    assert re.search(r"(exits|exited).*mma\.sync at \S*selftest\.cu:\d+", report, re.S), report


# ------------------------------------------------------------------------------ the ops under it

def test_simulate_routes_ops_to_the_cuda_kernels_and_restores():
    x = torch.randn(4, 3, 8, 8)
    before = fastconv.simulator.stats()
    FF.relu(x)
    assert fastconv.simulator.stats() == before, "outside simulate() the CPU kernel runs"
    with fastconv.simulate(order="reverse") as s:
        assert s.enabled and s.order == "reverse"
        with fastconv.simulate(order="random", seed=5):
            assert fastconv.simulator.settings().order == "random"
        assert fastconv.simulator.settings().order == "reverse"
        FF.relu(x)
        FF.max_pool2d(x, 2)
    after = fastconv.simulator.stats()
    assert after["launches"] == before["launches"] + 2
    assert after["threads"] > before["threads"]
    assert not fastconv.simulator.is_enabled() and fastconv.simulator.settings().order == "forward"


def test_every_op_has_a_simulated_cuda_kernel():
    x, w = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    lin = torch.randn(3, 5, requires_grad=True)
    with fastconv.simulate():
        before = fastconv.simulator.stats()
        y = FF.conv2d(x, w, torch.randn(4, requires_grad=True), padding=1)
        after_forward = fastconv.simulator.stats()
        y.sum().backward()  # grad input, grad weight, bias grad
        after_backward = fastconv.simulator.stats()
        FF.linear(torch.randn(2, 5), lin).sum().backward()
        after_linear = fastconv.simulator.stats()
    assert after_forward["launches"] == before["launches"] + 1
    assert after_backward["launches"] >= after_forward["launches"] + 3
    assert after_linear["launches"] >= after_backward["launches"] + 2


def test_environment_variable_simulates_a_whole_process():
    code = ("import torch, fastconv, fastconv.functional as FF\n"
            "FF.relu(torch.randn(100))\n"
            "s = fastconv.simulator.settings()\n"
            "print(fastconv.simulator.stats()['launches'], s.enabled, s.order, s.seed)\n")
    env = dict(os.environ, PYTHONPATH=FASTCONV_PATH, FASTCONV_SIMULATE="1", FASTCONV_SIM_ORDER="random",
               FASTCONV_SIM_SEED="9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.split() == ["1", "True", "random", "9"], out
    env["FASTCONV_SIMULATE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.split()[:2] == ["0", "False"], out


def _ops_run():
    """Every simulated op forward and backward on odd shapes; returns all results."""
    torch.manual_seed(3)
    x = torch.randn(3, 5, 13, 11, requires_grad=True)
    y = FF.relu(x)
    p, idx = FF.max_pool2d(y, 3, 2, 1, ceil_mode=True, return_indices=True)
    d = FF.dropout(p, 0.3)
    logits = d.flatten(1)[:, :37]
    weight = torch.rand(37)
    loss = FF.cross_entropy(logits, torch.tensor([0, 36, 5]), weight=weight, label_smoothing=0.1)
    wide = torch.randn(2, 1500, requires_grad=True)  # the block-per-row path of cross-entropy
    loss2 = FF.cross_entropy(wide, torch.tensor([1499, 3]), reduction="sum")
    gx, gw = torch.autograd.grad(loss + loss2, (x, wide))
    return [y, p, idx, d, loss, loss2, gx, gw]


@pytest.mark.parametrize("settings", ORDERS[1:], ids=ORDER_IDS[1:])
def test_ops_give_the_same_bits_in_every_order(settings):
    with fastconv.simulate(order="forward"):
        reference = _ops_run()
    with fastconv.simulate(**settings):
        results = _ops_run()
    for a, b in zip(results, reference):
        assert_bitwise_equal(a.detach(), b.detach())


def test_ops_under_the_simulator_match_torch():
    with fastconv.simulate():
        y, p, idx, d, loss, loss2, gx, gw = _ops_run()
    torch.manual_seed(3)
    x = torch.randn(3, 5, 13, 11, requires_grad=True)
    ry = torch.relu(x)
    rp, ridx = F.max_pool2d(ry, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert_bitwise_equal(y.detach(), ry.detach())
    assert_bitwise_equal(p.detach(), rp.detach())
    assert torch.equal(idx, ridx)
    kept = d != 0
    torch.testing.assert_close(d[kept], (rp / 0.7)[kept])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_sixteen_bit_kernels_round_to_nearest_even_like_torch(dtype):
    """The simulator's __half / __nv_bfloat16 conversions (float -> 16 bits, round to nearest even,
    subnormals, overflow to infinity) against torch's, through kernels that compute in float and
    round: dropout scales by 1 / (1 - p), so almost every kept product needs rounding."""
    torch.manual_seed(11)
    finfo = torch.finfo(dtype)
    mags = torch.logspace(math.log10(finfo.tiny) - 3, math.log10(finfo.max), 20000, dtype=torch.float64)
    signs = torch.where(torch.rand(mags.shape) < 0.5, -1.0, 1.0).to(torch.float64)
    x = (mags * signs).to(dtype)[torch.randperm(mags.numel())]
    assert (x.abs() < finfo.tiny).any() and torch.isinf(x * 1.5).any()  # subnormals and overflow are exercised
    seed = torch.tensor([123456789], dtype=torch.int64)
    cpu = ops.dropout(x, 0.3, seed)
    with fastconv.simulate():
        sim = ops.dropout(x, 0.3, seed)
        relu = FF.relu(x)
        pooled = FF.max_pool2d(x.reshape(1, 4, 50, 100), 3, 2, 1)
    assert_bitwise_equal(sim, cpu)
    assert_bitwise_equal(relu, torch.relu(x))
    assert_bitwise_equal(pooled, F.max_pool2d(x.reshape(1, 4, 50, 100).float(), 3, 2, 1).to(dtype))


# --------------------------------------------------------------------- cp.async and ldmatrix

RING_THREADS, RING_TILE, RING_BLOCKS, RING_TILES = 64, 320, 2, 7  # 7 tiles: the 3-stage ring wraps round twice
RING_N = 2 * RING_BLOCKS * RING_TILES * RING_TILE  # the source, then the output


def _ring_expected():
    """The output half of the cp.async ring (csrc/sim/selftest.cu, cp_async_ring): the source, with
    zeros where thread t's copy of tile k zero-fills (16 bytes: (k + t) % 5 == 0; 4 bytes:
    (3k + t) % 7 == 0)."""
    out = []
    for block in range(RING_BLOCKS):
        for k in range(RING_TILES):
            base = (block * RING_TILES + k) * RING_TILE
            for p in range(RING_TILE):
                wide = p < 4 * RING_THREADS
                t = p // 4 if wide else p - 4 * RING_THREADS
                zero = (k + t) % 5 == 0 if wide else (3 * k + t) % 7 == 0
                out.append(0.0 if zero else value_of(base + p))
    return torch.tensor(out)


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("name", ["ok_cp_async_ring", "ok_cp_async_ring_dynamic"])
def test_cp_async_ring_streams_every_element_in_every_order(name, settings):
    """A 3-stage ring of 16- and 4-byte cp.async copies, some zero-filled, with wait_group 1 and a
    barrier before each stage is read and refilled: the output is the source, element by element."""
    out = selftest(name, RING_N, **settings)
    source = torch.tensor([value_of(i) for i in range(RING_N // 2)])
    expected = _ring_expected()
    assert (expected == 0).sum() > 100 and (source == 0).sum() < 50  # zero-filled copies are exercised
    assert_bitwise_equal(out[:RING_N // 2], source.to(torch.float32))
    assert_bitwise_equal(out[RING_N // 2:], expected.to(torch.float32))


def _ldmatrix_expected():
    """Lane l's 12 registers of the ldmatrix self-test (selftest.cu, ldmatrix_tile), by the PTX ISA's
    layout: element (r, c) of the tile is r << 8 | c; matrix j of the x4 loads is the quadrant at rows
    8 (j % 2), columns 8 (j // 2); register j of lane l holds matrix j's row l // 4, columns 2 (l % 4)
    and 2 (l % 4) + 1 (the lower column in the low half), with .trans its rows 2 (l % 4) and
    2 (l % 4) + 1 of column l // 4; the x2 loads hold matrices 0 and 1."""
    def pair(lo, hi):
        return (lo[0] << 8 | lo[1]) | (hi[0] << 8 | hi[1]) << 16

    regs = []
    for lane in range(32):
        g, c = lane // 4, 2 * (lane % 4)
        x4 = [pair((8 * (j % 2) + g, 8 * (j // 2) + c), (8 * (j % 2) + g, 8 * (j // 2) + c + 1)) for j in range(4)]
        x4t = [pair((8 * (j % 2) + c, 8 * (j // 2) + g), (8 * (j % 2) + c + 1, 8 * (j // 2) + g)) for j in range(4)]
        regs += x4 + x4[:2] + x4t + x4t[:2]
    return torch.tensor(regs, dtype=torch.int64)


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
def test_ldmatrix_fragments_follow_the_ptx_layout(settings):
    """x4, x2, x4.trans and x2.trans: every lane's registers equal plain shared loads of the documented
    layout (gathered by the kernel) and the layout computed here."""
    bits = selftest("ok_ldmatrix", 768, **settings).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    expected = _ldmatrix_expected()
    assert torch.equal(bits[384:], expected), "the kernel's plain loads disagree with the layout"
    assert torch.equal(bits[:384], expected)


RING_LOAD_K = "load(k);  // the prologue"
RING_EARLY_LOAD = "load(next);  // the bugs: before the barrier"
RING_READ = "const float4 wide = *reinterpret_cast<const float4*>(stage + 4 * u);"
STAGE_REUSED = r"\(no __syncthreads\(\) orders them: a stage reused too early"

# name, n, kernel, a pattern every order's report matches, the fragments of the lines it must name
ASYNC_BUGS = [
    ("bug_cp_async_missing_wait", RING_N, "cp_async_ring",
     r"read of shared memory that a cp\.async has not finished writing: no cp\.async\.wait_group covers the copy "
     r"issued at \S*selftest\.cu:\d+ by thread \(\d+,0,0\).*; thread \(\d+,0,0\).* reads 4 bytes of static shared "
     r"memory", [RING_LOAD_K, RING_READ]),
    # the refill behind a __syncwarp: the other warp's reads come first, and the copy is reported
    ("bug_cp_async_stage_reused_early", RING_N, "cp_async_ring",
     r"shared-memory race: thread \(\d+,0,0\).*'s cp\.async writes 16 bytes of static shared memory \(offset "
     r"0x[0-9a-f]+\) that thread \(\d+,0,0\).* read in the same barrier interval " + STAGE_REUSED,
     [RING_EARLY_LOAD, RING_READ]),
    # the refill with no meeting point before it: the read that comes after the copy is reported
    ("bug_cp_async_refill_races_read", RING_N, "cp_async_ring",
     r"shared-memory race: thread \(\d+,0,0\).* reads 4 bytes of static shared memory \(offset 0x[0-9a-f]+\) that a "
     r"cp\.async of thread \(\d+,0,0\).*, issued in the same barrier interval, is writing " + STAGE_REUSED,
     [RING_EARLY_LOAD, RING_READ]),
    ("bug_cp_async_exit_in_flight", RING_N, "cp_async_ring",
     r"thread \(\d+,0,0\).* exits with 4 cp\.async copies in flight \(the oldest issued at \S*selftest\.cu:\d+\): "
     r"no cp\.async\.wait_group covers them", ["if (!kEarly && refill) load(next);"]),
    ("bug_ldmatrix_misaligned", 768, "ldmatrix_tile",
     r"ldmatrix\.x4 at \S*selftest\.cu:\d+: lane 5, thread \(5,0,0\), supplies 0x[0-9a-f]+ as the address of row 5 "
     r"of matrix 0, which is not 16-byte aligned", ["async::ldmatrix_x4(x4, row);"]),
    ("bug_ldmatrix_in_flight", 768, "ldmatrix_tile",
     r"read of shared memory that a cp\.async has not finished writing: no cp\.async\.wait_group covers the copy "
     r"issued at \S*selftest\.cu:\d+ by thread \(3,0,0\); thread \(3,0,0\) reads 16 bytes of static shared memory",
     ["async::cp_async<16>(&tile[3][0], nullptr, false);", "async::ldmatrix_x4(x4, row);"]),
]


@pytest.mark.parametrize("settings", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("name,n,kernel,pattern,fragments", ASYNC_BUGS, ids=[b[0] for b in ASYNC_BUGS])
def test_cp_async_and_ldmatrix_bug_is_reported(name, n, kernel, pattern, fragments, settings):
    report, kernel_name = _planted_bug_report(name, n, pattern, settings)
    assert kernel in kernel_name, report
    for fragment in fragments:
        assert line_of(fragment) in _report_line_numbers(report), (fragment, report)


def test_cp_async_ring_without_the_checks_still_lands_its_copies():
    """race_check and memcheck off: the copies are not tracked by the shadow, but they land all the same."""
    out = selftest("ok_cp_async_ring", RING_N, race_check=False, memcheck=False)
    assert_bitwise_equal(out[RING_N // 2:], _ring_expected().to(torch.float32))
