"""One SGD training step of a small fastconv CNN captured in a CUDA graph and replayed, against the same
steps run eagerly.

    python bench/cuda_graph_step.py                  # CUDA: capture, replay, compare, time; JSON
    python bench/cuda_graph_step.py --device cpu     # dry run: the eager steps only, capture skipped

The net is conv2d -> relu -> conv2d -> relu -> max_pool2d -> linear, with fastconv's cross_entropy as
the loss (fastconv.nn layers), trained by SGD with momentum. Two copies start from the same weights:

  - the graph copy warms up on a side stream (as torch's CUDA-graph notes require), then one step
    (forward, backward, optimizer.step) is captured with torch.cuda.graph and replayed once per batch,
    each batch copied into the static input and target first;
  - the eager copy runs the same warm-up steps, then the same batches one step at a time.

After the last step the parameters of the two copies must agree (assert_close). Capture needs every op
to run without a host read (no .item(), no synchronisation): an op that makes one fails the capture,
and the exception is written to the JSON and the log, with exit status 1. Timing: milliseconds per
step of the eager loop and of the replays (CUDA events around the whole loop), and their ratio.
On the CPU (--device cpu) the "graph" copy runs its steps eagerly, so everything but the capture runs.
"""
import argparse
import json
import os
import sys
import time
import traceback

import torch

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn

WARMUP_STEPS = 3


def make_net(in_channels, size, classes):
    flat = 32 * ((size - 4) // 2) ** 2
    return torch.nn.Sequential(
        fnn.Conv2d(in_channels, 16, 3), fnn.ReLU(), fnn.Conv2d(16, 32, 3), fnn.ReLU(), fnn.MaxPool2d(2),
        torch.nn.Flatten(), fnn.Linear(flat, classes))


class Trainer:
    """A net, its optimizer and the static input and target tensors that one step reads."""

    def __init__(self, net, x, y, lr):
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        self.x = torch.empty_like(x)
        self.y = torch.empty_like(y)

    def step(self):
        """Forward, backward and update on the static tensors: the body that is captured."""
        self.opt.zero_grad(set_to_none=True)
        loss = FF.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def load(self, x, y):
        self.x.copy_(x)
        self.y.copy_(y)


def warm_up(trainer, x, y, device):
    """WARMUP_STEPS steps on the first batch; on CUDA on a side stream, as capture wants (the lazy state
    of autograd, the optimizer's momentum buffers and cuBLAS/cuDNN workspaces is created outside it)."""
    trainer.load(x, y)
    if device.type != "cuda":
        for _ in range(WARMUP_STEPS):
            trainer.step()
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            trainer.step()
    torch.cuda.current_stream().wait_stream(side)


def capture(trainer, device, result):
    """One step of `trainer` captured in a CUDA graph: returns its replay. On the CPU the step itself,
    run eagerly (the dry run)."""
    if device.type != "cuda":
        result["capture"] = "skipped"
        result["skip_reason"] = "CUDA graphs need a CUDA device: --device cpu runs the steps eagerly (a dry run)"
        print(f"cuda_graph_step: capture skipped: {result['skip_reason']}")
        return trainer.step
    graph = torch.cuda.CUDAGraph()
    trainer.opt.zero_grad(set_to_none=True)  # the gradients are then allocated from the graph's pool
    with torch.cuda.graph(graph):
        trainer.step()
    result["capture"] = "ok"
    return graph.replay


class LoopTimer:
    """Milliseconds of a whole loop: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, loop):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            loop()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        loop()
        return (time.perf_counter() - t0) * 1e3


def run(args, result):
    device = torch.device(args.device)
    torch.manual_seed(0)
    xs = torch.randn(args.steps, args.batch_size, 1, args.size, args.size, device=device)
    ys = torch.randint(0, args.classes, (args.steps, args.batch_size), device=device)
    net = make_net(1, args.size, args.classes).to(device)
    twin = make_net(1, args.size, args.classes).to(device)
    twin.load_state_dict(net.state_dict())
    graphed, eager = Trainer(net, xs[0], ys[0], args.lr), Trainer(twin, xs[0], ys[0], args.lr)
    timer = LoopTimer(device)

    warm_up(graphed, xs[0], ys[0], device)
    warm_up(eager, xs[0], ys[0], device)

    def eager_loop():
        for i in range(args.steps):
            eager.load(xs[i], ys[i])
            eager.step()
    eager_ms = timer(eager_loop)
    result["eager_ms_per_step"] = eager_ms / args.steps

    try:
        replay = capture(graphed, device, result)
    except Exception as exc:
        result["capture"] = "failed"
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        print(f"cuda_graph_step: capture failed: {result['error']}\n{result['traceback']}", file=sys.stderr)
        return 1

    def replay_loop():
        for i in range(args.steps):
            graphed.load(xs[i], ys[i])
            replay()
    replay_ms = timer(replay_loop)
    result["replay_ms_per_step"] = replay_ms / args.steps
    result["replay_over_eager"] = replay_ms / eager_ms

    diffs = {name: (p - q).abs().max().item() for (name, p), (_, q) in zip(net.named_parameters(),
                                                                           twin.named_parameters())}
    result["max_abs_param_diff"] = max(diffs.values())
    result["bitwise_equal"] = all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters()))
    for (name, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"parameter {name}: replayed and eager steps disagree: {m}")
    result["params_match"] = True
    print(f"cuda_graph_step: {args.steps} steps, eager {result['eager_ms_per_step']:.3f} ms/step, "
          f"{'replayed' if device.type == 'cuda' else 'second eager copy'} {result['replay_ms_per_step']:.3f} "
          f"ms/step ({result['replay_over_eager']:.2f}x); parameters agree (max |diff| "
          f"{result['max_abs_param_diff']:.3g}, bitwise equal: {result['bitwise_equal']})")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=50, help="replays (and eager steps) after the warm-up")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=28, help="height = width of the input images")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--json", default=None, help="results file (default bench/out/cuda-graph-DEVICE-TIME.json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_graph_step.py: torch sees no CUDA device here (--device cpu is the dry run)")
    args.json = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                          f"cuda-graph-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "fastconv": fastconv.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
              "steps": args.steps, "warmup_steps": WARMUP_STEPS, "batch_size": args.batch_size,
              "image_size": args.size}
    try:
        status = run(args, result)
    except Exception as exc:  # anything after a successful capture: the replays, the comparison
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], file=sys.stderr)
        status = 1
    result["status"] = "ok" if status == 0 else "failed"
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
