"""The diffusion policy of `train grpo`: a stochastic sampler whose every step is a Gaussian with an exact
log-density, and the pieces of the GRPO objective (group advantages, clipped ratio, KL to the reference).

DDIM at eta > 0 (diffusers' DDIMScheduler.step; Black et al.'s DDPO): from x_t the model's prediction gives
x0 and eps, and the step is x_prev ~ N(mean, std^2 I) with
    mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps,   std = eta sqrt((1 - a_prev)/(1 - a_t) (1 - a_t/a_prev));
eta = 0 is the deterministic sampler `generate` uses with a DDIM pipeline.
Flow matching (x_s = (1 - s) x0 + s eps, the model predicts v = eps - x0): Flow-GRPO's SDE form of the Euler step
from sigma s to s' < s, with ds = s' - s < 0 and sd = eta sqrt(s / (1 - s)):
    mean = x (1 + sd^2 ds / (2 s)) + v (1 + sd^2 (1 - s) / (2 s)) ds,   std = sd sqrt(-ds);
eta = 0 is the Euler ODE step (FlowMatchEulerDiscreteScheduler.step).
A step's log-probability is the Gaussian log-density averaged over latent elements (DDPO's and Flow-GRPO's
convention: the sum is this times the number of elements), so ratios and KL do not scale with image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Chain:
    """The denoising chain of a pipeline's scheduler at `steps` steps: its timesteps and the Gaussian step
    from each. DDIM is built from any DDPM-family scheduler's config (PNDM, Euler... share the training
    schedule); a FlowMatch scheduler gives the flow-matching SDE."""

    def __init__(self, scheduler, steps: int) -> None:
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        self.flow = "FlowMatch" in type(scheduler).__name__
        scheduler_config = scheduler.config
        if self.flow:
            self.sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
            self.sched.set_timesteps(steps)
            self.sigmas = self.sched.sigmas.double()
        else:
            self.sched = DDIMScheduler.from_config(scheduler_config)
            if self.sched.config.thresholding:
                raise ValueError("DDIM with dynamic thresholding has no Gaussian step; turn thresholding off")
            self.sched.set_timesteps(steps)
            self.ac = self.sched.alphas_cumprod.double()
            self.final = torch.as_tensor(self.sched.final_alpha_cumprod).double()
            self.stride = self.sched.config.num_train_timesteps // steps
        self.timesteps = self.sched.timesteps.clone()
        self.steps = steps
        self.init_sigma = float(getattr(self.sched, "init_noise_sigma", 1.0))

    def stats(self, pred, j: int, x, eta: float):
        """(mean, std) of x at step j+1 given x at step j and the model's prediction there."""
        if self.flow:
            return flow_sde_step(pred, self.sigmas[j], self.sigmas[j + 1], x, eta, self.sigmas[1])
        t = int(self.timesteps[j])
        prev = t - self.stride
        return ddim_step(self.sched.config, pred, self.ac[t], self.ac[prev] if prev >= 0 else self.final, x, eta)


def ddim_step(config, pred, a_t, a_prev, x, eta: float):
    """DDIM step statistics (mean, std) for any prediction type; std is a 0-dim tensor (0 at eta=0)."""
    kind = config.prediction_type
    a_t, a_prev = a_t.to(x.device), a_prev.to(x.device)
    sa, s1a = a_t.sqrt().to(x.dtype), (1 - a_t).sqrt().to(x.dtype)
    if kind == "epsilon":
        eps = pred
        x0 = (x - s1a * eps) / sa
    elif kind == "v_prediction":
        x0 = sa * x - s1a * pred
        eps = sa * pred + s1a * x
    elif kind == "sample":
        x0 = pred
        eps = (x - sa * x0) / s1a
    else:
        raise ValueError(f"unknown prediction_type {kind!r}")
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = (eta * var.sqrt()).to(x.dtype)
    mean = a_prev.sqrt().to(x.dtype) * x0 + (1 - a_prev - std.double() ** 2).clamp(min=0).sqrt().to(x.dtype) * eps
    return mean, std


def flow_sde_step(v, sigma, sigma_prev, x, eta: float, sigma_max):
    """Flow-GRPO's SDE step of a flow-matching model (mean, std); eta = 0 is the Euler step x + v (s' - s)."""
    ds = (sigma_prev - sigma).to(x.device)
    s = sigma.to(x.device)
    denom = 1 - (sigma_max.to(x.device) if float(s) >= 1 else s)
    sd = eta * (s / denom).sqrt()
    mean = x * (1 + sd ** 2 / (2 * s) * ds).to(x.dtype) + v * ((1 + sd ** 2 * (1 - s) / (2 * s)) * ds).to(x.dtype)
    return mean, (sd * (-ds).sqrt()).to(x.dtype)


def step_logprob(x_next, mean, std):
    """log N(x_next; mean, std^2 I) averaged over each sample's elements (shape: batch)."""
    lp = -((x_next.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x_next.ndim)))


def kl_to_reference(mean, ref_mean, std):
    """KL(N(mean, std^2 I) || N(ref_mean, std^2 I)) averaged over elements, per sample: both steps share std."""
    return ((mean - ref_mean.detach()) ** 2).mean(dim=tuple(range(1, mean.ndim))) / (2 * std ** 2)


def clipped_objective(logp, old_logp, adv, clip: float):
    """PPO's clipped surrogate, as a loss to minimize (mean over samples), and the ratio.
    Where the clip is active (ratio > 1+clip with adv > 0, ratio < 1-clip with adv < 0) the gradient is zero."""
    ratio = torch.exp(logp - old_logp)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return loss.mean(), ratio


def group_advantages(rewards: np.ndarray, std_normalize: bool = True, eps: float = 1e-4) -> np.ndarray:
    """rewards (groups, G), NaN where a sample has no reward -> advantages (groups, G): reward minus its group's
    mean, over the group's std (population std, + eps) when std_normalize. A sample without a reward, and every
    sample of a group with fewer than two rewards, gets 0 (no comparison, no signal)."""
    r = np.asarray(rewards, dtype=np.float64)
    ok = ~np.isnan(r)
    n = ok.sum(1, keepdims=True)
    mean = np.where(ok, r, 0).sum(1, keepdims=True) / np.maximum(n, 1)
    adv = np.where(ok, r - mean, 0.0)
    if std_normalize:
        std = np.sqrt((adv ** 2).sum(1, keepdims=True) / np.maximum(n, 1))
        adv = adv / (std + eps)
    return np.where(n >= 2, adv, 0.0)


def combined_advantages(per_judge: dict[str, np.ndarray], weights: dict[str, float], std_normalize: bool,
                        clip: float) -> np.ndarray:
    """Several rewards: the weighted sum of each judge's group advantages (each scale-free), clipped."""
    total = sum(weights[j] * group_advantages(r, std_normalize) for j, r in per_judge.items())
    return np.clip(total, -clip, clip)


def predict(unet, x, t, cond, uncond, guidance: float):
    """The model's prediction at (x, t), with classifier-free guidance when uncond is given."""
    if uncond is None:
        return unet(x, t, encoder_hidden_states=cond).sample
    out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    out_u, out_c = out.chunk(2)
    return out_u + guidance * (out_c - out_u)


@torch.no_grad()
def sample(unet, chain: Chain, cond, uncond, guidance: float, eta: float, gens: list, shape: tuple):
    """Draw a batch along the chain: noise (and each step's noise at eta > 0) from each sample's own generator,
    so a sample is the same whatever batch it is in. Returns (final latents, chain latents (B, T+1, ...),
    step log-probs (B, T), or None at eta = 0)."""
    device = cond.device

    def noise():
        return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, cond.dtype)

    x = noise() * chain.init_sigma
    lats, lps = [x], []
    for j, t in enumerate(chain.timesteps):
        mean, std = chain.stats(predict(unet, x, t.to(device), cond, uncond, guidance), j, x, eta)
        if eta > 0:
            x = mean + std * noise()
            lps.append(step_logprob(x, mean, std))
        else:
            x = mean
        lats.append(x)
    return x, torch.stack(lats, 1), (torch.stack(lps, 1) if lps else None)


@torch.no_grad()
def decode(vae, latents) -> list[np.ndarray]:
    """Latents -> uint8 HxWx3 arrays, as the pipeline's output_type="np" and `generate` round them."""
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    img = vae.decode(z.to(vae.dtype)).sample.float()
    return list(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
