"""Throughput of the augment stage: ADA's AugmentPipe (preset bgc by default) and DiffAugment.

Images per second through the pipe at a fixed p, forward only and forward + backward (the backward
of a sum of the outputs w.r.t. the input images, as D's loss pulls gradients through the augment
stage to G). One row per resolution. Other processes on the machine skew CPU timings: the header
prints the thread count so numbers can be compared like for like.

    python bench/augment.py                         # bgc at p = 0.5, 32x32 (batch 64) and 256x256 (batch 16)
    python bench/augment.py --pipe bgcfnc --p 1 --res 32 --batch 64 --reps 5
    python bench/augment.py --pipe diffaugment      # DiffAugment color,translation,cutout
    python bench/augment.py --threads 1             # fewer threads: steadier numbers on a busy machine
"""

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stylegan2_ada_kd.diffaugment import DiffAugment
from training.augment import AugmentPipe, augpipe_specs

# Batch per resolution: the cifar preset's 64 at 32x32; 16 at 256x256 keeps a CPU run short.
DEFAULT_BATCH = {32: 64, 256: 16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, reps, device):
    """Median seconds of fn() over `reps` runs after two warm-up runs (allocator, kernel builds)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def make_pipe(name, p, device):
    """The augment module to measure: an AugmentPipe preset at probability p, or DiffAugment."""
    if name == "diffaugment":
        return DiffAugment().to(device)
    if name not in augpipe_specs:
        raise SystemExit(f"--pipe {name!r}: choose diffaugment or one of {', '.join(augpipe_specs)}")
    pipe = AugmentPipe(**augpipe_specs[name]).to(device)
    pipe.p.fill_(p)
    return pipe


def measure(pipe, res, batch, reps, device):
    """(forward img/s, forward + backward img/s) for a [batch, 3, res, res] batch."""
    x = torch.rand([batch, 3, res, res], device=device) * 2 - 1
    x_grad = x.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            pipe(x)

    def forward_backward():
        x_grad.grad = None
        pipe(x_grad).sum().backward()

    fwd = time_call(forward, reps, device)
    fwd_bwd = time_call(forward_backward, reps, device)
    return batch / fwd, batch / fwd_bwd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipe", default="bgc", help="AugmentPipe preset name, or diffaugment")
    parser.add_argument("--p", type=float, default=0.5, help="augment probability (AugmentPipe)")
    parser.add_argument("--res", type=int, nargs="+", default=[32, 256], help="image resolutions")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 64 at 32x32, 16 at 256x256)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    pipe = make_pipe(args.pipe, args.p, device)
    print(f"# {' '.join(sys.argv)}")
    print(f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, pipe {args.pipe}, p {args.p}, median of {args.reps}")
    print("| res | batch | forward img/s | forward+backward img/s |")
    print("|---|---|---|---|")
    for res in args.res:
        batch = args.batch or DEFAULT_BATCH.get(res, 32)
        fwd, fwd_bwd = measure(pipe, res, batch, args.reps, device)
        print(f"| {res}x{res} | {batch} | {fwd:.0f} | {fwd_bwd:.0f} |", flush=True)


if __name__ == "__main__":
    main()
