"""Reference (pure PyTorch) vs kernel path of bias_act, upfirdn2d and 3x3 convolutions, forward + backward.

The shapes are the ones a StyleGAN2 of the given resolution runs at each block (batch 32, the
per-resolution channel counts min(channel_base // res, 512)): bias_act with lrelu on every
conv output, upsample2d / downsample2d / filter2d with the [1, 3, 3, 1] filter on the G and D
resampling paths, and the 3x3 stride-1 convolution of every block (ch -> ch), which the kernel path
runs through conv2d_gradfix (Winograd F(2x2, 3x3) on the CPU) and the reference through
torch.nn.functional.conv2d. Both paths run side by side in one process on the same inputs.

    python bench/ops.py                     # 32x32 (cifar preset) and 256x256 (paper256) networks
    python bench/ops.py --res 32 --reps 5 --device cpu
"""

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_utils.ops import bias_act, conv2d_gradfix, upfirdn2d  # noqa: E402
from training.training_setup import configure_cpu_malloc  # noqa: E402

# channel_base of the presets the paper's experiments use at each resolution (REFERENCE.md 2.2).
CHANNEL_BASE = {32: 32768, 256: 16384}
CHANNEL_MAX = 512


def block_shapes(res: int):
    """(channels, resolution) of each synthesis/discriminator block of a res x res StyleGAN2."""
    base = CHANNEL_BASE.get(res, 32768)
    resolutions = [2**i for i in range(3, res.bit_length())]
    return [(min(base // r, CHANNEL_MAX), r) for r in resolutions]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(fn, inputs, reps: int, device) -> float:
    """Median seconds of fn(*inputs) forward + backward with a fixed upstream gradient."""
    out = fn(*inputs)
    grad = torch.randn_like(out)
    times = []
    for _ in range(reps + 1):  # the first run warms up caches and builds, and is dropped
        for t in inputs:
            t.grad = None
        _sync(device)
        start = time.perf_counter()
        fn(*inputs).backward(grad)
        _sync(device)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


def cases(res: int, batch: int, device):
    """Yield (label, shape, fn(impl) -> callable, inputs) for the given network resolution."""
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    for ch, r in block_shapes(res):
        x = torch.randn([batch, ch, r, r], device=device, requires_grad=True)
        b = torch.randn([ch], device=device, requires_grad=True)
        yield ("bias_act lrelu", x.shape, lambda impl: (lambda x, b: bias_act.bias_act(
            x, b, act="lrelu", clamp=256, impl=impl)), (x, b))
        low = torch.randn([batch, ch, r // 2, r // 2], device=device, requires_grad=True)
        yield ("upsample2d", low.shape, lambda impl: (lambda x: upfirdn2d.upsample2d(x, f, impl=impl)), (low,))
        yield ("downsample2d", x.shape, lambda impl: (lambda x: upfirdn2d.downsample2d(x, f, impl=impl)), (x,))
        # The filter G's up-convolution applies after its stride-2 transposed 3x3 conv.
        big = torch.randn([batch, ch, r + 1, r + 1], device=device, requires_grad=True)
        yield ("upfirdn2d pad=1 (up-conv)", big.shape, lambda impl: (lambda x: upfirdn2d.upfirdn2d(
            x, f, padding=1, gain=4, impl=impl)), (big,))
        w = torch.randn([ch, ch, 3, 3], device=device, requires_grad=True)
        yield ("conv 3x3 (Winograd on CPU)", x.shape, lambda impl: (lambda x, w: _conv3x3(x, w, impl)), (x, w))


def _conv3x3(x, w, impl):
    if impl == "ref":
        return torch.nn.functional.conv2d(x, w, padding=1)
    return conv2d_gradfix.conv2d(x, w, padding=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[32, 256], help="network resolutions")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    # The same allocator settings the training loop uses on the CPU (SG2KD_NO_MALLOPT=1 turns them off):
    # without them fresh large outputs cost page faults that swamp both paths' compute.
    malloc_note = configure_cpu_malloc() if device.type == "cpu" else None
    print(f"# malloc: {malloc_note or 'glibc defaults'}")
    print(f"# torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, batch {args.batch}, median of {args.reps}")
    print("| net | op | shape | ref ms | kernel ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for res in args.res:
        for label, shape, make_fn, inputs in cases(res, args.batch, device):
            ref = time_fwd_bwd(make_fn("ref"), inputs, args.reps, device)
            ker = time_fwd_bwd(make_fn("cuda"), inputs, args.reps, device)
            print(f"| {res}x{res} | {label} | {list(shape)} | {ref * 1e3:.1f} | {ker * 1e3:.1f} | "
                  f"{ref / ker:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
