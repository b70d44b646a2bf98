"""Training speed on this machine: sec/kimg and peak RSS per preset, custom-op kernels vs pure PyTorch.

Each (preset, ops) pair runs in its own process (so peak RSS is per configuration and the ops
switch, SG2KD_DISABLE_CUSTOM_OPS=1, applies from the start). The child builds the kwargs with
training/train_options.py exactly as train.py would, sets the loop up on a synthetic dataset, runs
one warm-up step, one step with both lazy regularisers, then `--steps` plain steps, and reports

    sec/kimg  = (plain step + Greg / G_reg_interval + Dreg / D_reg_interval) / batch * 1000

i.e. the steady-state cost with the lazy regularisation amortised (phase times from the loop's
own Timing/* stats). Never asserts on time; other processes on the machine inflate the numbers.

    python bench/train.py                         # tiny and cifar presets at 32x32, kernels and ref
    python bench/train.py --ops kernels,ref,kernels-refdemod,kernels-direct   # what each part gives
    python bench/train.py --presets tiny --steps 8 --threads 1
    python bench/train.py --presets cifar --ops ref --malloc tuned,default   # the loop's mallopt vs glibc's
    python bench/train.py --presets cifar --profile   # + where one step's CPU time goes, by op family

--profile runs one more plain step under torch.profiler and prints each op family's share of the
self CPU time (convolutions, matmuls (incl. the Winograd convolutions' products), our
bias_act/upfirdn2d kernels, the Winograd tile transforms, element-wise math, the rest).

`--ops`: `kernels` is the default code path (C++ bias_act/upfirdn2d kernels, Winograd 3x3
convolutions where they pay off (torch_utils/ops/winograd.py) and the factored demodulation of
training/networks.py), `ref` is SG2KD_DISABLE_CUSTOM_OPS=1 (pure-PyTorch ops, torch's direct
convolutions and the reference's demodulation, which builds the [N, O, I, kh, kw] modulated
weights), `kernels-refdemod` is `kernels` with the reference's demodulation and `kernels-direct`
is `kernels` with torch's direct convolutions, to tell the parts apart.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_dataset(path, num=64, res=32):
    """`num` random RGB PNGs of res x res and a dataset.json without labels."""
    import numpy as np
    import PIL.Image
    os.makedirs(path, exist_ok=True)
    rnd = np.random.RandomState(0)
    for idx in range(num):
        PIL.Image.fromarray((rnd.rand(res, res, 3) * 255).astype(np.uint8)).save(os.path.join(path, f"{idx:05d}.png"))
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump({"labels": None}, f)


def child(args):
    """Set up the loop for one preset and time its steps; print one JSON line."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch_utils import training_stats
    from torch_utils.ops import bias_act, upfirdn2d
    from training import train_options
    from training.training_loop import _TrainingRun
    if args.demod == "ref":  # the reference's demodulation with the C++ kernels: what each part is worth
        from training import networks
        networks._reference_demodulation = lambda: True
    if args.direct_conv:
        from torch_utils.ops import winograd
        winograd.MIN_CHANNELS = 2**62
    opts = dict(data=args.data, outdir=args.outdir, cfg=args.preset, metrics="none", device="cpu", workers=0,
                snap=10**6, aug=args.aug)
    kwargs = train_options.build_training_setup(opts).kwargs
    kwargs.update(run_dir=tempfile.mkdtemp(dir=args.outdir), rank=0, local_rank=0, grid_size=[2, 1])
    run = _TrainingRun(kwargs)
    with contextlib.redirect_stdout(io.StringIO()):
        run._setup()
    collector = training_stats.Collector(regex="Timing/.*")
    start = time.perf_counter()
    run.steps.step(run)  # warm-up: first-call costs (kernel builds, oneDNN primitives), regularisers
    warmup = time.perf_counter() - start
    run.batch_idx = 16 * 4  # a step where both lazy regularisers run
    collector.update()
    run.steps.step(run)
    collector.update()
    greg, dreg = collector.mean("Timing/Greg") / 1000, collector.mean("Timing/Dreg") / 1000
    times = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        start = time.perf_counter()
        run.steps.step(run)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    sys_share = (after.ru_stime - usage.ru_stime) / max(after.ru_utime - usage.ru_utime, 1e-9)
    plain = sum(times) / len(times)
    amortised = plain + greg / kwargs.G_reg_interval + dreg / kwargs.D_reg_interval
    profile = profile_step(run) if args.profile else None
    kernels = bias_act._plugins.get("cpu") is not None and upfirdn2d._plugins.get("cpu") is not None
    ops = ("kernels" if kernels else "ref") + ("-refdemod" if kernels and args.demod == "ref" else "")
    ops += "-direct" if kernels and args.direct_conv else ""
    malloc = "default" if os.environ.get("SG2KD_NO_MALLOPT") else "tuned"
    print(json.dumps(dict(preset=args.preset, ops=ops, malloc=malloc, sys_share=sys_share,
                          batch=kwargs.batch_size,
                          batch_gpu=kwargs.batch_gpu, threads=torch.get_num_threads(), warmup_s=warmup,
                          plain_step_s=plain, greg_s=greg, dreg_s=dreg,
                          sec_per_kimg=amortised / kwargs.batch_size * 1000,
                          peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          profile=profile)))


OP_FAMILIES = (  # (family, substrings of profiler event names), first match wins
    ("convolution", ("conv", "mkldnn")),
    ("matmul", ("addmm", "aten::mm", "aten::bmm", "aten::matmul")),
    ("bias_act kernel", ("biasact", "bias_act")),
    ("upfirdn2d kernel", ("upfirdn",)),
    ("winograd transforms", ("_inputtransform", "_inputadjoint", "_outputtransform", "_outputadjoint")),
    ("element-wise", ("aten::mul", "aten::add", "aten::pow", "aten::sum", "aten::div", "aten::sub", "aten::copy_",
                      "aten::where", "aten::leaky_relu", "aten::sqrt", "aten::rsqrt", "aten::mean")),
)


def profile_step(run):
    """{family: share of self CPU time} of one plain training step (OP_FAMILIES, plus 'other')."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.steps.step(run)
    shares, total = {}, 0.0
    for event in prof.key_averages():
        name = event.key.lower()
        family = next((fam for fam, keys in OP_FAMILIES if any(k in name for k in keys)), "other")
        shares[family] = shares.get(family, 0.0) + event.self_cpu_time_total
        total += event.self_cpu_time_total
    return {family: value / max(total, 1e-9) for family, value in shares.items()}


OPS_CHOICES = {
    "kernels": "C++ bias_act/upfirdn2d kernels, Winograd 3x3 convolutions, factored demodulation (the default)",
    "ref": "SG2KD_DISABLE_CUSTOM_OPS=1: pure-PyTorch ops, direct convolutions, the reference's demodulation",
    "kernels-refdemod": "kernels with the reference's demodulation",
    "kernels-direct": "kernels with torch's direct convolutions instead of Winograd",
}


def run_child(args, preset, ops, malloc, data, outdir):
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
    env.pop("SG2KD_DISABLE_CUSTOM_OPS", None)
    env.pop("SG2KD_NO_MALLOPT", None)
    if ops not in OPS_CHOICES:
        return dict(preset=preset, ops=ops, malloc=malloc, error=f"unknown --ops {ops!r}; use {', '.join(OPS_CHOICES)}")
    if ops == "ref":
        env["SG2KD_DISABLE_CUSTOM_OPS"] = "1"
    if malloc == "default":
        env["SG2KD_NO_MALLOPT"] = "1"  # the loop then leaves glibc's malloc settings alone
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--preset", preset, "--data", data, "--outdir", outdir,
           "--steps", str(args.steps), "--threads", str(args.threads), "--aug", args.aug,
           "--demod", "ref" if ops == "kernels-refdemod" else "auto"]
    cmd += ["--direct-conv"] if ops == "kernels-direct" else []
    cmd += ["--profile"] if args.profile else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return dict(preset=preset, ops=ops, malloc=malloc, error=f"exit {proc.returncode}: {tail}")
    result = json.loads(lines[-1])
    result["requested"] = ops
    return result


def print_table(results):
    header = ["preset", "ops", "malloc", "batch", "thr", "warm-up s", "step s", "Greg s", "Dreg s", "sec/kimg",
              "sys/user", "peak RSS GiB"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["preset"], r["ops"], r["malloc"]] + ["-"] * 8 + [r["error"][:60]])
            continue
        ops = r["ops"] if r["ops"] == r["requested"] else f"{r['ops']} (asked {r['requested']})"
        rows.append([r["preset"], ops, r["malloc"], str(r["batch"]), str(r["threads"]), f"{r['warmup_s']:.2f}",
                     f"{r['plain_step_s']:.3f}", f"{r['greg_s']:.3f}", f"{r['dreg_s']:.3f}", f"{r['sec_per_kimg']:.1f}",
                     f"{r['sys_share']:.2f}", f"{r['peak_rss_gib']:.2f}"])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,cifar", help="comma list of --cfg presets (32x32 data)")
    parser.add_argument("--ops", default="kernels,ref",
                        help="comma list of: " + "; ".join(f"{k}: {v}" for k, v in OPS_CHOICES.items()))
    parser.add_argument("--steps", type=int, default=3, help="timed plain steps per configuration")
    parser.add_argument("--malloc", default="tuned", help="comma list: tuned (the loop's mallopt), default (glibc's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--aug", default="ada", help="--aug of train.py (ada, noaug, diffaug)")
    parser.add_argument("--profile", action="store_true", help="also print each op family's share of one step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--demod", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--direct-conv", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"$ python bench/train.py {' '.join(sys.argv[1:])}")
    print(f"{platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} | python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        make_dataset(data)
        results = []
        for preset in args.presets.split(","):
            for ops in args.ops.split(","):
                for malloc in args.malloc.split(","):
                    results.append(run_child(args, preset, ops, malloc, data, tmp))
                    print(f"  {preset}/{ops}/{malloc}: done ({time.strftime('%H:%M:%S')})", flush=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print_table(results)
    for r in results:
        if r.get("profile"):
            parts = sorted(r["profile"].items(), key=lambda item: -item[1])
            print(f"{r['preset']}/{r['ops']}: " + ", ".join(f"{fam} {100 * share:.1f}%" for fam, share in parts))


if __name__ == "__main__":
    main()
