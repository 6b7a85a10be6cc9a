"""The Cosmos-1.0 post-training objective: EDM denoising score matching on cached latents.

Follows NVIDIA NeMo's Cosmos diffusion pipelines (branches ``vfm``/``physicalai``):

* ``nemo/collections/diffusion/sampler/cosmos/cosmos_diffusion_pipeline.py`` (Text2World):
  ``x0 = latent * sigma_data``; ``xt = x0 + sigma * eps``; EDM preconditioning
  (``edm/edm.py`` ``EDMScaling``: c_skip, c_out, c_in, c_noise = 0.25 log sigma);
  ``x0_pred = c_skip xt + c_out net(c_in xt, c_noise)``; loss
  ``mean((x0 - x0_pred)^2 * (sigma^2 + sigma_data^2) / (sigma sigma_data)^2)``.
  NeMo adds Kendall's uncertainty term only when the network returns a log-variance; the
  diffusers transformer does not, so the loss is the weighted MSE (the same code path).
* ``edm/edm.py`` ``EDMSDE.sample_t``: ``log sigma ~ N(p_mean, p_std)`` with p_mean 0, p_std 1
  (``CosmosDiffusionPipeline`` defaults); we also clamp to [sigma_min, sigma_max] = [0.0002, 80].
* ``cosmos_extended_diffusion_pipeline.py`` (Video2World): condition on the first n latent
  frames, n uniform in [1, 2] (``first_random_n``, cosmos1 video2world config
  ``first_random_n_num_condition_t_max=2``); the condition region of the input is the clean
  latent plus noise of ``augment_sigma`` (log-normal, p_mean -3, p_std 2: ``noise_with_sigma``),
  rescaled by ``c_in(augment_sigma) / c_in(sigma)``; the condition mask is an extra input
  channel; the prediction is replaced by the ground truth in the condition region.
* Text conditioning: T5 embeddings dropped (zeroed) with probability 0.2 per sample
  (NeMo ``sampler/conditioner.py`` ``random_dropout_input`` with the cosmos text dropout_rate 0.2).
* Network extras as diffusers' Cosmos pipelines feed them: ``fps`` for the temporal RoPE scale
  and an all-zero ``padding_mask`` (no padding).

Randomness is drawn per sample from a generator keyed by (seed, the sample's position in the
training stream), so losses do not depend on how samples are spread over ranks, micro-batches
or restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EDMConfig:
    sigma_data: float = 0.5
    p_mean: float = 0.0
    p_std: float = 1.0
    sigma_min: float = 0.0002
    sigma_max: float = 80.0
    text_dropout: float = 0.2
    condition_frames_min: int = 1
    condition_frames_max: int = 2
    augment_sigma_p_mean: float = -3.0
    augment_sigma_p_std: float = 2.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "EDMConfig":
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown objective keys {sorted(unknown)}")
        return cls(**d)


def edm_scaling(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022) Eq. 7, as NeMo ``EDMScaling``."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (NeMo ``get_per_sigma_loss_weights``)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    """A generator for one sample of the training stream (independent of rank layout)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(position) * 7_919 + 12_345) % (2**63 - 1))
    return g


@dataclass
class NoisedBatch:
    x0: torch.Tensor  # (B, C, T, H, W) fp32, latent * sigma_data
    sigma: torch.Tensor  # (B,)
    net_input: torch.Tensor  # c_in * (noised latent with condition region), fp32
    c_noise: torch.Tensor  # (B,)
    text: torch.Tensor  # (B, 512, 1024) with dropout applied
    condition_indicator: torch.Tensor | None  # (B, 1, T, 1, 1) or None (Text2World)
    condition_mask: torch.Tensor | None  # (B, 1, T, H, W) or None


def make_noised_batch(latent, text, positions, *, cfg: EDMConfig, seed: int, video2world: bool) -> NoisedBatch:
    """Draw sigma, noise, text dropout (and the Video2World condition) for each sample."""
    device = latent.device
    x0 = latent.float() * cfg.sigma_data
    b, _, t = x0.shape[:3]
    sigmas, eps, keep, n_cond, aug_sigma, aug_eps = [], [], [], [], [], []
    log_lo, log_hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    for i in range(b):
        g = sample_generator(seed, int(positions[i]), device)
        log_sigma = torch.randn((), generator=g, device=device) * cfg.p_std + cfg.p_mean
        sigmas.append(log_sigma.clamp(log_lo, log_hi).exp())
        eps.append(torch.randn(x0.shape[1:], generator=g, device=device))
        keep.append((torch.rand((), generator=g, device=device) >= cfg.text_dropout).float())
        if video2world:
            hi = min(cfg.condition_frames_max, t - 1)
            n_cond.append(int(torch.randint(cfg.condition_frames_min, hi + 1, (1,), generator=g, device=device)))
            a = torch.randn((), generator=g, device=device) * cfg.augment_sigma_p_std + cfg.augment_sigma_p_mean
            aug_sigma.append(a.exp())
            aug_eps.append(torch.randn(x0.shape[1:], generator=g, device=device))
    sigma = torch.stack(sigmas)
    xt = x0 + sigma.view(b, 1, 1, 1, 1) * torch.stack(eps)
    _, _, c_in, c_noise = edm_scaling(sigma, cfg.sigma_data)
    text = text * torch.stack(keep).view(b, 1, 1).to(text.dtype)
    indicator = mask = None
    if video2world:
        indicator = torch.zeros(b, 1, t, 1, 1, device=device)
        for i, n in enumerate(n_cond):
            indicator[i, :, :n] = 1.0
        a_sigma = torch.stack(aug_sigma)
        augmented = x0 + a_sigma.view(b, 1, 1, 1, 1) * torch.stack(aug_eps)
        _, _, c_in_aug, _ = edm_scaling(a_sigma, cfg.sigma_data)
        augmented = augmented * (c_in_aug / c_in).view(b, 1, 1, 1, 1)
        xt = indicator * augmented + (1 - indicator) * xt
        mask = indicator.expand(b, 1, t, *x0.shape[3:]).contiguous()
    net_input = xt * c_in.view(b, 1, 1, 1, 1)
    return NoisedBatch(x0, sigma, net_input, c_noise, text, indicator, mask)


def denoise_loss(model, batch: NoisedBatch, *, fps: float | None, cfg: EDMConfig) -> torch.Tensor:
    """Per-sample EDM loss (B,): weighted MSE between x0 and the preconditioned prediction."""
    b = batch.x0.shape[0]
    padding_mask = batch.x0.new_zeros(1, 1, *batch.x0.shape[-2:])
    out = model(
        hidden_states=batch.net_input,
        timestep=batch.c_noise,
        encoder_hidden_states=batch.text,
        fps=fps,
        condition_mask=batch.condition_mask,
        padding_mask=padding_mask,
        return_dict=False,
    )[0].float()
    c_skip, c_out, c_in, _ = edm_scaling(batch.sigma, cfg.sigma_data)
    xt = batch.net_input / c_in.view(b, 1, 1, 1, 1)
    x0_pred = c_skip.view(b, 1, 1, 1, 1) * xt + c_out.view(b, 1, 1, 1, 1) * out
    if batch.condition_indicator is not None:
        x0_pred = batch.condition_indicator * batch.x0 + (1 - batch.condition_indicator) * x0_pred
    mse = ((batch.x0 - x0_pred) ** 2).flatten(1).mean(1)
    return mse * loss_weight(batch.sigma, cfg.sigma_data)
