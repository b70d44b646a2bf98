"""StyleGAN2 loss (non-saturating logistic, lazy R1, path length, style mixing) with loss plugins.

Phases, as the training loop calls them through `accumulate_gradients`:

    Gmain  G adversarial loss softplus(-D(A(G(z))))           + plugin g_loss terms
    Greg   path-length regularisation (pl_weight > 0)
    Gboth  Gmain and Greg in one call (no lazy regularisation)
    Dmain  softplus(D(A(G(z)))) + softplus(-D(A(x)))         + plugin d_loss terms
    Dreg   R1: r1_gamma / 2 * ||d sum(D(A(x))) / dx||^2, x = the real batch before the
           augment stage A (so the gradient runs back through A, as in StyleGAN2-ADA)
    Dboth  Dmain and Dreg in one call

A = `augment_pipe` (ADA's AugmentPipe, DiffAugment, or None) is applied to every image D sees:
reals, fakes and the R1 path, in G and D phases alike.

PLUGIN PROTOCOL. `plugins` is a list of kwargs dicts, each with a `class_name` (built with
`dnnlib.util.construct_class_by_name`), or of ready `torch.nn.Module` instances. A plugin is an
`nn.Module`; every hook below is optional (the loss checks `hasattr`). Hooks are called with
keyword arguments; the "optional" ones are passed only when the hook's signature names them (or
takes **kwargs). N = batch_gpu, images are float [N, C, H, W] in about [-1, 1].

    needs_features: bool attribute (default False). True makes the loss call
        `D(img, c, return_features=True)` in the phases that run this plugin's d_loss / g_loss and
        pass the feature dicts ({'fc': [N, C4], 'b4_input': [N, C4, 4, 4]}); otherwise the
        `*_feats` arguments are None and D runs its plain (faster) path.
    plugin_name: str attribute; key of the plugin's state in snapshots (default: class name,
        with `_<i>` appended to repeats).
    setup(ctx): once, after construction and `.to(device)`, before the optimizers exist (and
        after a weight transfer from --resume; a training state is loaded after it). ctx
        (EasyDict): device, G, D, G_ema (or None), augment_pipe (or None),
        run_G(z [N, z_dim], c [N, c_dim], update_emas=False) -> img (no style mixing; graph to G
        when G requires grad), augment(img) -> img as D sees it, run_D(img, c,
        return_features=False) -> logits [N, 1] or (logits, feats) of A(img), num_images,
        class_names (list or None), resolution, img_channels, c_dim, batch_size, batch_gpu, rank,
        num_gpus, resuming (bool), random_seed, run_dir; and `cur_nimg` (images shown so far),
        updated before every hook call. Modules created in setup are moved to the device after it.
    augment_real(real_img, real_c, gen_img, gen_c) -> real_img: Dmain, before A, once per batch.
        gen_img: the detached fakes of this Dmain pass. The result replaces the reals in Dmain AND
        in the R1 pass (Dreg) of the same step (cached per real batch until `after_step`).
        Plugins chain in list order.
    d_loss(real_img, real_c, real_logits, real_feats, gen_img, gen_c, gen_logits, gen_feats, gen_z;
        optional real_raw, gen_raw, gen_ws) -> Tensor or None: Dmain only (also Dboth). *_img: the
        images exactly as D saw them (after augment_real and A),
        *_raw: the same batches before A (reals after augment_real), *_logits [N, 1], *_feats
        dicts or None, gen_z [N, z_dim], gen_ws [N, num_ws, w_dim] the (style-mixed) latents that
        made gen_raw = G.synthesis(gen_ws). The result (averaged if not a scalar) is added to D's loss.
    d_loss_active() -> bool: whether d_loss runs in this step's Dmain (default True). A plugin that
        skips steps (KD with interval > 1) says so here, so on those steps the loss neither asks D
        for features nor builds the joint backward for it.
    g_loss(gen_img, gen_c, gen_logits, gen_feats, gen_z; optional gen_raw, gen_ws) -> Tensor or None: Gmain
        (also Gboth); gen_img as D saw it and gen_raw = G(z) before A, both with their graph back to
        G. Added to G's loss. D and the plugin's own parameters do not train in G phases.
    observe_logits(phase, real_logits, gen_logits): every D pass without changing the backward
        structure (unlike d_loss): phase 'Dmain' (also Dboth) with both [N, 1] detached logits, or
        'Dreg' with gen_logits None. For statistics such as APA's E[sign(D(real branch))].
    after_step(cur_nimg, batch_size): after every training step (all phases, optimizer steps, the
        G EMA), on every rank at the same steps, so it may run collectives (adaptive rules that
        average over ranks, momentum updates).
    tick_fields() -> {name: float}: extra fields for the tick line (rank 0, once per tick), printed
        after StyleGAN2-ADA's as `name value`, e.g. APA's {'apa_p': p}.
    d_parameters() -> list of parameters (or optimizer param-group dicts): trained by D's
        optimizer (default: the plugin's parameters that require grad right after setup). Their
        gradients are averaged across ranks and cleaned like D's; they train only in D phases.
    state_dict() / load_state_dict(): nn.Module's. Saved in network pickles (`plugin_states`, plain
        tensors) and training states, restored on exact resume: keep every accumulator that exact
        resume needs in buffers. Keep large frozen models (a CLIP teacher) out of the module tree
        (e.g. in a plain list attribute) so they are neither saved nor broadcast. Plugins report
        their own stats with `torch_utils.training_stats.report`.

Memory trade-off: without plugin d_loss terms, Dmain runs two backward passes (fakes, then reals)
as StyleGAN2-ADA does, so only one of D's graphs is alive at a time. Plugin terms need both
branches together, so then both graphs are built and summed into one backward pass, which holds
about twice the D activation memory.
"""

import inspect

import numpy as np
import torch

import dnnlib
from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


class StyleGAN2Loss:
    """The StyleGAN2-ADA loss; see the module docstring for phases and the plugin protocol."""

    def __init__(
        self,
        device,                 # torch.device the networks live on
        G,                      # generator (mapping + synthesis)
        D,                      # discriminator; D(img, c, return_features=...) for feature plugins
        augment_pipe=None,      # module applied to every image D sees; None = no augmentation
        r1_gamma=10,            # R1 weight gamma; 0 = no R1
        style_mixing_prob=0,    # probability of mixing two latents per batch; 0 = off
        pl_weight=0,            # path-length regularisation weight; 0 = off
        pl_batch_shrink=2,      # the path-length pass uses batch // pl_batch_shrink fakes
        pl_decay=0.01,          # EMA decay of the path-length mean (pl_mean)
        plugins=(),             # plugin kwargs dicts (with class_name) or nn.Module instances
        plugin_context=None,    # EasyDict merged into the plugins' set-up context (training-set info, ...)
    ):
        self.device = torch.device(device)
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        if self.pl_batch_shrink < 1:
            raise ValueError(f"StyleGAN2Loss: pl_batch_shrink={pl_batch_shrink}; pass an integer >= 1")
        self.pl_mean = torch.zeros([], device=self.device)
        self._mixed_reals = {}  # id(real_img) -> (real_img, mixed batch): APA's batch for Dreg
        self.context = self._make_context(plugin_context)
        self.plugins = self._build_plugins(plugins)
        self._d_params = self._collect_d_parameters()

    # ------------------------------------------------------------------ plugins

    def _make_context(self, plugin_context):
        ctx = dnnlib.EasyDict(G_ema=None, num_images=None, class_names=None, resolution=None,
                              img_channels=None, c_dim=getattr(self.G, "c_dim", 0), batch_size=None,
                              batch_gpu=None, rank=0, num_gpus=1, resuming=False, random_seed=0)
        ctx.update(plugin_context or {})
        ctx.update(device=self.device, G=self.G, D=self.D, augment_pipe=self.augment_pipe, cur_nimg=0,
                   run_G=self._plugin_run_G, augment=self.augment, run_D=self._plugin_run_D)
        return ctx

    def _build_plugins(self, specs):
        """dict name -> plugin module, in list order; each moved to the device and set up."""
        plugins = {}
        for spec in specs or ():
            if isinstance(spec, torch.nn.Module):
                plugin = spec
            elif isinstance(spec, dict) and "class_name" in spec:
                plugin = dnnlib.util.construct_class_by_name(**spec)
            else:
                raise TypeError(f"StyleGAN2Loss: plugin spec {spec!r} is neither an nn.Module nor a dict "
                                "with 'class_name'; pass e.g. dict(class_name='stylegan2_ada_kd.lecam.LeCam')")
            if not isinstance(plugin, torch.nn.Module):
                raise TypeError(f"StyleGAN2Loss: plugin {type(plugin).__name__} is not a torch.nn.Module; "
                                "derive plugins from torch.nn.Module")
            name = getattr(plugin, "plugin_name", None) or type(plugin).__name__
            base, idx = name, 1
            while name in plugins:
                name, idx = f"{base}_{idx}", idx + 1
            plugin.to(self.device)
            if hasattr(plugin, "setup"):
                plugin.setup(self.context)
                plugin.to(self.device)  # modules created in setup
            plugins[name] = plugin
        return plugins

    def _collect_d_parameters(self):
        params = []
        for plugin in self.plugins.values():
            if hasattr(plugin, "d_parameters"):
                params += list(plugin.d_parameters())
            else:
                params += [p for p in plugin.parameters() if p.requires_grad]
        return params

    def d_parameters(self):
        """Plugin parameters (or param-group dicts) trained by D's optimizer, fixed at construction."""
        return list(self._d_params)

    def _with_hook(self, hook):
        return [plugin for plugin in self.plugins.values() if hasattr(plugin, hook)]

    @staticmethod
    def _call(plugin, hook, args, optional):
        """plugin.<hook>(**args, **the optional kwargs its signature names (all with **kwargs))."""
        fn = getattr(plugin, hook)
        params = inspect.signature(fn).parameters
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return fn(**args, **optional)
        return fn(**args, **{key: value for key, value in optional.items() if key in params})

    def _wants_features(self, hook):
        return any(getattr(plugin, "needs_features", False) for plugin in self._with_hook(hook))

    # ------------------------------------------------------------------ networks

    def run_G(self, z, c, update_emas=True):
        """z [N, z_dim], c [N, c_dim] -> (img [N, C, H, W], ws [N, num_ws, w_dim]), with style mixing.

        update_emas: let the mapping network update its running w average (training passes).
        """
        ws = self.G.mapping(z, c, skip_w_avg_update=not update_emas)
        if self.style_mixing_prob > 0:
            with torch.autograd.profiler.record_function("style_mixing"):
                # Cutoff uniform in [1, num_ws), or num_ws (= no mixing) with prob 1 - style_mixing_prob.
                cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
                cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                     torch.full_like(cutoff, ws.shape[1]))
                ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)[:, cutoff:]
        img = self.G.synthesis(ws)
        return img, ws

    def augment(self, img):
        """img [N, C, H, W] -> the image as D sees it (augment_pipe applied, if any)."""
        return self.augment_pipe(img) if self.augment_pipe is not None else img

    def _run_D(self, img, c, return_features):
        """D on an already augmented img -> (logits [N, 1], feats dict or None)."""
        if return_features:
            return self.D(img, c, return_features=True)
        return self.D(img, c), None

    def _plugin_run_G(self, z, c, update_emas=False):
        return self.G(z, c) if update_emas else self.G.synthesis(self.G.mapping(z, c, skip_w_avg_update=True))

    def _plugin_run_D(self, img, c, return_features=False):
        logits, feats = self._run_D(self.augment(img), c, return_features)
        return (logits, feats) if return_features else logits

    # ------------------------------------------------------------------ phases

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg=0):
        """Run one phase on one batch and accumulate its gradients (backward) into the networks.

        phase: one of PHASES. real_img [N, C, H, W] float in [-1, 1], real_c [N, c_dim],
        gen_z [N, z_dim], gen_c [N, c_dim]. gain: loss multiplier (the phase interval for lazy
        regularisation). cur_nimg: images shown so far (made available to plugins as ctx.cur_nimg).
        """
        if phase not in PHASES:
            raise ValueError(f"StyleGAN2Loss: unknown phase {phase!r}; use one of {', '.join(PHASES)}")
        self.context.cur_nimg = int(cur_nimg)
        do_g_main = phase in ("Gmain", "Gboth")
        do_g_pl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_d_main = phase in ("Dmain", "Dboth")
        do_d_r1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        if do_g_main:
            self._g_main(gen_z, gen_c, gain)
        if do_g_pl:
            self._g_pl(gen_z, gen_c, gain)
        if do_d_main or do_d_r1:
            self._d_pass(real_img, real_c, gen_z, gen_c, gain, do_d_main, do_d_r1)

    def _g_main(self, gen_z, gen_c, gain):
        with torch.autograd.profiler.record_function("Gmain_forward"):
            feats_wanted = self._wants_features("g_loss")
            gen_img, gen_ws = self.run_G(gen_z, gen_c)
            gen_seen = self.augment(gen_img)
            gen_logits, gen_feats = self._run_D(gen_seen, gen_c, feats_wanted)
            training_stats.report("Loss/scores/fake", gen_logits)
            training_stats.report("Loss/signs/fake", gen_logits.sign())
            loss_g = torch.nn.functional.softplus(-gen_logits)
            training_stats.report("Loss/G/loss", loss_g)
            total = loss_g.mean()
            for plugin in self._with_hook("g_loss"):
                term = self._call(plugin, "g_loss", dict(gen_img=gen_seen, gen_c=gen_c, gen_logits=gen_logits,
                                                         gen_feats=gen_feats, gen_z=gen_z),
                                  dict(gen_raw=gen_img, gen_ws=gen_ws))
                if term is not None:
                    total = total + term.mean()
        with torch.autograd.profiler.record_function("Gmain_backward"):
            total.mul(gain).backward()

    def _g_pl(self, gen_z, gen_c, gain):
        with torch.autograd.profiler.record_function("Gpl_forward"):
            batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:batch], gen_c[:batch])
            # Noise scaled by 1/sqrt(H*W) makes the expected length independent of the resolution.
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            with torch.autograd.profiler.record_function("pl_grads"), conv2d_gradfix.no_weight_gradients():
                pl_grads = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                               create_graph=True, only_inputs=True)[0]
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()  # [N]
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            training_stats.report("Loss/pl_penalty", pl_penalty)
            loss_pl = pl_penalty * self.pl_weight
            training_stats.report("Loss/G/reg", loss_pl)
        with torch.autograd.profiler.record_function("Gpl_backward"):
            # The zero-weighted image term keeps every synthesis parameter in the graph.
            (gen_img[:, 0, 0, 0] * 0 + loss_pl).mean().mul(gain).backward()

    def _d_pass(self, real_img, real_c, gen_z, gen_c, gain, do_main, do_r1):
        """Dmain and/or R1 on one batch; one backward with plugin terms, else StyleGAN2-ADA's two."""
        d_plugins = [plugin for plugin in self._with_hook("d_loss")
                     if not hasattr(plugin, "d_loss_active") or plugin.d_loss_active()] if do_main else []
        feats_wanted = bool(d_plugins) and self._wants_features("d_loss")
        fake = None
        if do_main:
            with torch.autograd.profiler.record_function("Dgen_forward"):
                with torch.no_grad():  # D phases never train G
                    gen_img, gen_ws = self.run_G(gen_z, gen_c)
                gen_seen = self.augment(gen_img)
                gen_logits, gen_feats = self._run_D(gen_seen, gen_c, feats_wanted)
                training_stats.report("Loss/scores/fake", gen_logits)
                training_stats.report("Loss/signs/fake", gen_logits.sign())
                loss_gen = torch.nn.functional.softplus(gen_logits)
                fake = dnnlib.EasyDict(raw=gen_img, ws=gen_ws, seen=gen_seen, logits=gen_logits, feats=gen_feats,
                                      loss=loss_gen)
            if not d_plugins:
                with torch.autograd.profiler.record_function("Dgen_backward"):
                    loss_gen.mean().mul(gain).backward()

        name = "Dreal" if not do_r1 else ("Dr1" if not do_main else "Dreal_Dr1")
        with torch.autograd.profiler.record_function(name + "_forward"):
            real_in = self._real_batch(real_img, real_c, fake.raw if fake else None, gen_z, gen_c, fresh=do_main)
            real_tmp = real_in.detach().requires_grad_(do_r1)
            real_seen = self.augment(real_tmp)
            real_logits, real_feats = self._run_D(real_seen, real_c, feats_wanted)
            training_stats.report("Loss/scores/real", real_logits)
            training_stats.report("Loss/signs/real", real_logits.sign())
            for plugin in self._with_hook("observe_logits"):
                plugin.observe_logits(phase="Dmain" if do_main else "Dreg", real_logits=real_logits.detach(),
                                      gen_logits=fake.logits.detach() if fake else None)
            total = real_logits * 0  # keeps every D parameter in the graph
            if do_main:
                loss_real = torch.nn.functional.softplus(-real_logits)
                training_stats.report("Loss/D/loss", fake.loss.detach() + loss_real.detach())
                total = total + loss_real
            total = total.mean()
            if do_r1:
                total = total + self._r1(real_tmp, real_logits).mean()
            if d_plugins:
                real = dnnlib.EasyDict(raw=real_in, seen=real_seen, logits=real_logits, feats=real_feats)
                total = total + fake.loss.mean() + self._plugin_d_terms(d_plugins, real, real_c, fake, gen_c, gen_z)
        with torch.autograd.profiler.record_function(name + "_backward"):
            total.mul(gain).backward()

    def _plugin_d_terms(self, plugins, real, real_c, fake, gen_c, gen_z):
        """Sum of the plugins' d_loss terms (scalar tensor or 0)."""
        total = 0
        for plugin in plugins:
            args = dict(real_img=real.seen, real_c=real_c, real_logits=real.logits, real_feats=real.feats,
                        gen_img=fake.seen, gen_c=gen_c, gen_logits=fake.logits, gen_feats=fake.feats, gen_z=gen_z)
            optional = dict(real_raw=real.raw.detach(), gen_raw=fake.raw, gen_ws=fake.ws)
            term = self._call(plugin, "d_loss", args, optional)
            if term is not None:
                total = total + term.mean()
        return total

    def _r1(self, real_tmp, real_logits):
        """R1 loss [N] = r1_gamma / 2 * ||d sum(real_logits) / d real_tmp||^2 per sample."""
        with torch.autograd.profiler.record_function("r1_grads"), conv2d_gradfix.no_weight_gradients():
            r1_grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_tmp], create_graph=True,
                                           only_inputs=True)[0]
        r1_penalty = r1_grads.square().sum([1, 2, 3])
        training_stats.report("Loss/r1_penalty", r1_penalty)
        loss_r1 = r1_penalty * (self.r1_gamma / 2)
        training_stats.report("Loss/D/reg", loss_r1)
        return loss_r1

    def _real_batch(self, real_img, real_c, gen_img, gen_z, gen_c, fresh):
        """The reals D sees before A: real_img [N, C, H, W], or the plugins' augment_real result.

        fresh (Dmain): draw a new mixture and remember it for this batch; otherwise (R1) reuse the
        one Dmain drew for the same real_img tensor in this step, so both see the same batch.
        """
        plugins = self._with_hook("augment_real")
        if not plugins:
            return real_img
        cached = self._mixed_reals.get(id(real_img))
        if not fresh and cached is not None and cached[0] is real_img:
            return cached[1]
        if gen_img is None:  # R1 without a Dmain pass on this batch in this step
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c)
        mixed = real_img
        for plugin in plugins:
            mixed = plugin.augment_real(real_img=mixed, real_c=real_c, gen_img=gen_img.detach(), gen_c=gen_c)
        mixed = mixed.detach()
        self._mixed_reals[id(real_img)] = (real_img, mixed)
        return mixed

    # ------------------------------------------------------------------ steps and state

    def after_step(self, cur_nimg, batch_size):
        """End of a training step (every rank): forget cached real batches, run plugins' after_step."""
        self._mixed_reals.clear()
        self.context.cur_nimg = int(cur_nimg)
        for plugin in self._with_hook("after_step"):
            plugin.after_step(cur_nimg=int(cur_nimg), batch_size=int(batch_size))

    def tick_fields(self):
        """{name: float} of every plugin's `tick_fields()`, in plugin order (tick line extras)."""
        fields = {}
        for plugin in self._with_hook("tick_fields"):
            fields.update({str(name): float(value) for name, value in plugin.tick_fields().items()})
        return fields

    def state_dict(self):
        """{'pl_mean': tensor [], 'plugins': {name: plugin state_dict}} (tensors on the CPU)."""
        plugins = {name: {key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
                          for key, value in plugin.state_dict().items()}
                   for name, plugin in self.plugins.items()}
        return {"pl_mean": self.pl_mean.detach().cpu().clone(), "plugins": plugins}

    def load_state_dict(self, state):
        """Restore `state_dict()` output; plugin names must match this loss's plugins."""
        saved, mine = set(state.get("plugins", {})), set(self.plugins)
        if saved != mine:
            raise ValueError(f"StyleGAN2Loss.load_state_dict: the state has plugins {sorted(saved)} but this run has "
                             f"{sorted(mine)}; resume with the same --plugins as the saved run")
        self.pl_mean.copy_(state["pl_mean"])
        for name, plugin in self.plugins.items():
            plugin.load_state_dict(state["plugins"][name])

    def plugin_states(self):
        """{name: {key: CPU tensor}}: the plugins' state dicts with plain tensors only (for pickles)."""
        return {name: {key: value.detach().cpu().clone() for key, value in plugin.state_dict().items()
                       if isinstance(value, torch.Tensor)}
                for name, plugin in self.plugins.items()}
