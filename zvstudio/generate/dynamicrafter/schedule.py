"""DynamiCrafter's noise schedule, DDIM step selection and prediction conversions.

Written from the released `lvdm/models/utils_diffusion.py`, `lvdm/models/ddpm3d.py` and the DDIM
sampler, and from "Common Diffusion Noise Schedules and Sample Steps are Flawed" (Lin et al.
2023) for zero terminal SNR, trailing steps and guidance rescale:

* betas: Stable Diffusion's "linear" schedule, linear in sqrt(beta), 0.00085..0.012 over 1000
  steps; the 512/1024 models rescale it so alpha-bar reaches exactly 0 at the last step (the
  model then sees pure noise at t=999, so it must predict v, not epsilon);
* DDIM steps: "uniform" (every T/n-th step, offset by 1, as in SD) or "uniform_trailing" (ending
  at the last training step, 999, which zero-SNR models need to start from pure noise);
* the final DDIM step goes to alpha-bar[0], not to 1 (the released sampler's convention).

Everything is float64 on the CPU: the schedule is tiny and alpha-bar near 0 needs the precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zvstudio.generate.dynamicrafter.config import ScheduleConfig

__all__ = [
    "DDIMSchedule",
    "alphas_cumprod",
    "ddim_schedule",
    "ddim_step",
    "ddim_timesteps",
    "dynamic_rescale_curve",
    "eps_from_v",
    "linear_betas",
    "rescale_guidance",
    "rescale_zero_terminal_snr",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]


def linear_betas(config: ScheduleConfig) -> torch.Tensor:
    """Stable Diffusion's "linear" betas: evenly spaced in sqrt(beta), then squared."""
    start, end = config.linear_start**0.5, config.linear_end**0.5
    return torch.linspace(start, end, config.timesteps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose alpha-bar ends at exactly 0 (Lin et al. 2023, algorithm 1).

    sqrt(alpha-bar) is shifted so its last value is 0 and scaled so its first value is kept;
    the betas are recovered from the ratios of consecutive alpha-bars.
    """
    root = torch.cumprod(1.0 - betas.to(torch.float64), 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """alpha-bar_t for every training step t (float64, length config.timesteps)."""
    betas = linear_betas(config)
    if config.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, 0)


def ddim_timesteps(steps: int, train_steps: int = 1000, spacing: str = "uniform") -> list[int]:
    """The training steps a `steps`-step DDIM run visits, in sampling order (descending).

    "uniform": 0, c, 2c, ... shifted by +1 (c = train_steps // steps), e.g. 981 ... 1 for 50;
    "uniform_trailing": train_steps - 1 down in strides of train_steps / steps, rounded, e.g.
    999, 979, ... 19 for 50. The stride arithmetic repeats numpy.arange's (start + i * delta,
    delta = (start - c) - start), so the rounding of half-way values matches the released
    sampler for every step count; unlike it, we never emit an extra step.
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"DDIM steps must be in 1..{train_steps}, got {steps}")
    if spacing == "uniform":
        stride = train_steps // steps
        ascending = [i * stride + 1 for i in range(steps)]
    elif spacing == "uniform_trailing":
        delta = (train_steps - train_steps / steps) - train_steps  # as numpy.arange computes it
        ascending = sorted(round(train_steps + i * delta) - 1 for i in range(steps))
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}")
    return ascending[::-1]


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step DDIM quantities, in sampling order (index 0 is the noisiest step)."""

    timesteps: list[int]
    alphas: torch.Tensor  # alpha-bar at each step (float64)
    alphas_prev: torch.Tensor  # alpha-bar the step moves to; alpha-bar[0] after the last step
    sigmas: torch.Tensor  # eta-scaled DDIM noise levels
    rescale: torch.Tensor  # dynamic-rescale factors for pred_x0 (all 1 when off)


def ddim_schedule(config: ScheduleConfig, steps: int, eta: float = 1.0) -> DDIMSchedule:
    """The DDIM schedule the released sampler builds for `steps` steps and `eta`."""
    bar = alphas_cumprod(config)
    times = ddim_timesteps(steps, config.timesteps, config.spacing)
    ascending = times[::-1]
    alphas = bar[ascending]
    # Each step moves to the next smaller DDIM step; the smallest moves to alpha-bar[0].
    prev = torch.cat([bar[:1], bar[ascending[:-1]]])
    sigmas = eta * ((1 - prev) / (1 - alphas) * (1 - alphas / prev)).sqrt()
    curve = dynamic_rescale_curve(config)
    scale = curve[ascending]
    scale_prev = torch.cat([scale[:1], scale[:-1]])
    flip = lambda t: t.flip(0)  # noqa: E731 - ascending -> sampling order
    return DDIMSchedule(times, flip(alphas), flip(prev), flip(sigmas), flip(scale_prev / scale))


def dynamic_rescale_curve(config: ScheduleConfig) -> torch.Tensor:
    """The factor training scaled x_0 by at each step (ones when dynamic rescale is off).

    Linear from 1 to `rescale_base` over the first `rescale_turning_step` steps, then constant
    (the released `scale_arr`, of which sampling only reads the first `timesteps` entries).
    """
    if config.rescale_base is None:
        return torch.ones(config.timesteps, dtype=torch.float64)
    ramp = torch.linspace(
        1.0, config.rescale_base, config.rescale_turning_step, dtype=torch.float64
    )
    flat = torch.full((config.timesteps,), config.rescale_base, dtype=torch.float64)
    return torch.cat([ramp, flat])[: config.timesteps]


def _bcast(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (or scalar) coefficient shaped to broadcast against `like`."""
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim == 0:  # a CPU scalar works beside GPU tensors, with no copy to wait for
        return value.to(like.dtype)
    return value.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar) -> torch.Tensor:
    """x_0 = sqrt(a) x_t - sqrt(1 - a) v."""
    a = _bcast(alpha_bar, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar) -> torch.Tensor:
    """epsilon = sqrt(a) v + sqrt(1 - a) x_t."""
    a = _bcast(alpha_bar, x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """v = sqrt(a) epsilon - sqrt(1 - a) x_0 (the v-prediction training target)."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - a) epsilon) / sqrt(a); undefined at alpha-bar 0 (use v there)."""
    a = _bcast(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def rescale_guidance(
    guided: torch.Tensor, conditional: torch.Tensor, factor: float
) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, section 3.4), on the model's output space.

    The guided prediction is scaled to the per-sample standard deviation of the conditional one
    (which fixes over-exposure at high guidance) and mixed back with weight `factor`.
    """
    if factor <= 0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (
        conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    )
    return factor * rescaled + (1 - factor) * guided


def ddim_step(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    schedule: DDIMSchedule,
    index: int,
    prediction: str,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step at sampling index `index`: (x_prev, predicted x_0).

    `model_output` is the (guided) prediction in the model's own parameterization; x_0 comes
    from v directly (exact at alpha-bar 0), epsilon from the parameterization; the dynamic
    rescale factor corrects x_0 for the scale training used at this step. `noise` is required
    when the schedule's sigma at this step is non-zero (eta > 0).
    """
    a, a_prev = schedule.alphas[index].item(), schedule.alphas_prev[index].item()
    sigma = schedule.sigmas[index].item()
    if prediction == "v":
        eps = eps_from_v(x_t, model_output, a)
        x0 = x0_from_v(x_t, model_output, a)
    else:
        eps = model_output
        x0 = x0_from_eps(x_t, model_output, a)
    x0 = x0 * schedule.rescale[index].item()
    x_prev = a_prev**0.5 * x0 + max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("a DDIM step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0
