"""One training step of the loop: phases (lazy regularisation), gradient sync and cleaning, G EMA, ADA."""

import time

import numpy as np
import torch

import dnnlib
from torch_utils import training_stats
from training import training_setup as setup

SIGNS_NAME = "Loss/signs/real"


class TrainingSteps:
    """The loss, the optimizers and the phase list; `step(run)` advances the run by one batch.

    `run` is the training loop's state (networks, counters, data iterator, options as `run.o`).
    """

    def __init__(self, run):
        o = run.o
        training_set = run.training_set
        context = dnnlib.EasyDict(
            G_ema=run.G_ema, num_images=len(training_set), class_names=getattr(training_set, "class_names", None),
            resolution=training_set.resolution, img_channels=training_set.num_channels,
            c_dim=training_set.label_dim, batch_size=o.batch_size, batch_gpu=o.batch_gpu, rank=run.rank,
            num_gpus=o.num_gpus, resuming=bool(o.resume_pkl), random_seed=o.random_seed, run_dir=o.run_dir)
        loss_kwargs = dict(o.loss_kwargs)
        class_name = loss_kwargs.pop("class_name", "training.loss.StyleGAN2Loss")
        self.loss = dnnlib.util.construct_class_by_name(class_name=class_name, device=run.device, G=run.G, D=run.D,
                                                        augment_pipe=run.augment_pipe, plugin_context=context,
                                                        **loss_kwargs)
        for plugin in self.loss.plugins.values():
            setup.broadcast_module(plugin)
        self.phases = []
        self.optimizers = {}
        self._add_phases("G", run.G, [], o.G_opt_kwargs, o.G_reg_interval)
        self._add_phases("D", run.D, self.loss.d_parameters(), o.D_opt_kwargs, o.D_reg_interval)

    def _add_phases(self, name, module, extra_params, opt_kwargs, reg_interval):
        """Optimizer for `module` (+ plugin params) and its phases: both, or main + lazy reg."""
        groups = [{"params": list(module.parameters())}]
        plain = [item for item in extra_params if not isinstance(item, dict)]
        groups += ([{"params": plain}] if plain else []) + [item for item in extra_params if isinstance(item, dict)]
        params = [param for group in groups for param in group["params"]]
        if reg_interval is None:
            opt = dnnlib.util.construct_class_by_name(params=groups, **opt_kwargs)
            self.phases.append(dnnlib.EasyDict(name=name + "both", params=params, opt=opt, interval=1))
        else:
            kwargs = setup.lazy_reg_opt_kwargs(opt_kwargs, reg_interval)
            opt = dnnlib.util.construct_class_by_name(params=groups, **kwargs)
            self.phases.append(dnnlib.EasyDict(name=name + "main", params=params, opt=opt, interval=1))
            self.phases.append(dnnlib.EasyDict(name=name + "reg", params=params, opt=opt, interval=int(reg_interval)))
        self.optimizers[name] = opt

    def optimizer_states(self):
        """{'G': state_dict, 'D': state_dict} (main and reg phases share one optimizer per network)."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_states(self, states):
        for name, opt in self.optimizers.items():
            opt.load_state_dict(states[name])

    # ------------------------------------------------------------------ the step

    def step(self, run):
        """Fetch a batch, run the due phases, update G_ema, counters, ADA p and the plugins."""
        o = run.o
        real_img, real_c, all_gen_z, all_gen_c = self._fetch(run)
        for phase, gen_z, gen_c in zip(self.phases, all_gen_z, all_gen_c):
            if run.batch_idx % phase.interval == 0:
                self._run_phase(run, phase, real_img, real_c, gen_z, gen_c)
        self._update_ema(run)
        run.cur_nimg += o.batch_size
        run.batch_idx += 1
        if run.ada_stats is not None and run.batch_idx % o.ada_interval == 0:
            self._adjust_ada(run)
        self.loss.after_step(run.cur_nimg, o.batch_size)
        self._report_timing()

    def _fetch(self, run):
        """This rank's reals split in batch_gpu rounds, and per-phase latents and labels."""
        o = run.o
        with torch.autograd.profiler.record_function("data_fetch"):
            img, c = next(run.data_iter)
            real_img = (img.to(run.device).to(torch.float32) / 127.5 - 1).split(o.batch_gpu)
            real_c = c.to(run.device).split(o.batch_gpu)
            num = len(self.phases) * run.batch_per_rank
            gen_z = torch.randn([num, run.G.z_dim], device=run.device)
            gen_z = [z.split(o.batch_gpu) for z in gen_z.split(run.batch_per_rank)]
            labels = [run.training_set.get_label(np.random.randint(len(run.training_set))) for _ in range(num)]
            gen_c = torch.from_numpy(np.stack(labels)).to(run.device)
            gen_c = [cc.split(o.batch_gpu) for cc in gen_c.split(run.batch_per_rank)]
        return real_img, real_c, gen_z, gen_c

    def _run_phase(self, run, phase, real_img, real_c, gen_z, gen_c):
        phase.timer = _Timer(run.device)
        phase.opt.zero_grad(set_to_none=True)
        for param in phase.params:
            param.requires_grad_(True)
        for round_real, round_c, round_z, round_gen_c in zip(real_img, real_c, gen_z, gen_c):
            self.loss.accumulate_gradients(phase=phase.name, real_img=round_real, real_c=round_c, gen_z=round_z,
                                           gen_c=round_gen_c, gain=phase.interval, cur_nimg=run.cur_nimg)
        for param in phase.params:
            param.requires_grad_(False)
        with torch.autograd.profiler.record_function(phase.name + "_opt"):
            count = setup.sync_and_clean_grads(phase.params, run.o.num_gpus)
            training_stats.report("Progress/nonfinite_grads", count)
            run.nonfinite_tick += count.to(run.nonfinite_tick.device)
            phase.opt.step()
        phase.timer.stop()

    def _update_ema(self, run):
        o = run.o
        with torch.autograd.profiler.record_function("Gema"), torch.no_grad():
            beta = setup.ema_beta(o.batch_size, run.cur_nimg, o.ema_kimg, o.ema_rampup)
            for p_ema, p in zip(run.G_ema.parameters(), run.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(run.G_ema.buffers(), run.G.buffers()):
                b_ema.copy_(b)

    def fold_ada_stats(self, run):
        """Move the sign statistics collected so far (all ranks; collective) into run.ada_carry.

        Signs are -1, 0 or 1, so the sums are integers and folding at any point gives exactly the
        same totals: tick ends (and so snapshots) do not change the ADA trajectory.
        """
        if run.ada_stats is None:
            return
        run.ada_stats.update()
        num = run.ada_stats.num(SIGNS_NAME)
        if num > 0:
            run.ada_carry[0] += num
            run.ada_carry[1] += int(round(run.ada_stats.mean(SIGNS_NAME) * num))

    def _adjust_ada(self, run):
        o = run.o
        self.fold_ada_stats(run)
        num, total = run.ada_carry
        if num > 0:
            p = setup.ada_adjust(float(run.augment_pipe.p), total / num, o.ada_target, o.batch_size,
                                 o.ada_interval, o.ada_kimg)
            run.augment_pipe.p.copy_(torch.as_tensor(p, dtype=run.augment_pipe.p.dtype))
        run.ada_carry = [0, 0]

    def _report_timing(self):
        for phase in self.phases:
            timer = phase.pop("timer", None)
            training_stats.report0("Timing/" + phase.name, timer.elapsed_ms() if timer is not None else [])


class _Timer:
    """Wall time of a phase in ms: CUDA events on CUDA (read later, no sync now), perf_counter elsewhere."""

    def __init__(self, device):
        self.events = None
        if device.type == "cuda":
            self.events = [torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)]
            self.events[0].record(torch.cuda.current_stream(device))
            self.device = device
        self.start = time.perf_counter()
        self.end = None

    def stop(self):
        if self.events is not None:
            self.events[1].record(torch.cuda.current_stream(self.device))
        self.end = time.perf_counter()

    def elapsed_ms(self):
        if self.events is not None:
            self.events[1].synchronize()
            return self.events[0].elapsed_time(self.events[1])
        return (self.end - self.start) * 1000
