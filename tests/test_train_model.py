"""Model configs, the torchvision-free padding-mask resize, FLOP count, the objective's pieces."""

import math

import pytest
import torch

from cosmos_lib.train.model import (
    ARCHITECTURES,
    _nearest_resize,
    build_model,
    count_parameters,
    random_state_dict,
    resolve_config,
    transformer_config,
)
from cosmos_lib.train.objective import EDMConfig, denoise_loss, edm_scaling, loss_weight, make_noised_batch


@pytest.mark.parametrize("size,task,billions", [
    ("7B", "text2world", 7.24), ("7B", "video2world", 7.24),
    ("14B", "text2world", 14.27), ("14B", "video2world", 14.27),
])
def test_cosmos_sizes_on_meta(size, task, billions):
    model = build_model(transformer_config(size, task), "meta")
    assert round(count_parameters(model) / 1e9, 2) == billions
    assert model.config.in_channels == (17 if task == "video2world" else 16)
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    assert hidden == {"7B": 4096, "14B": 5120}[size]
    assert model.transformer_blocks[0].ff.net[0].proj.out_features == 16384 if size == "7B" else 20480
    # the patch embedding takes the padding-mask channel on top of in_channels
    assert model.patch_embed.proj.in_features == (model.config.in_channels + 1) * 4


def test_nearest_resize_matches_interpolate():
    mask = (torch.rand(1, 1, 64, 96) > 0.5).float()
    out = _nearest_resize(mask, [8, 12])
    assert out.shape == (1, 1, 8, 12)
    assert torch.equal(out, mask[:, :, ::8, ::8])  # nearest with an integer factor takes every 8th pixel
    assert _nearest_resize(mask, [64, 96]) is mask


def test_tiny_forward_with_padding_mask_without_torchvision():
    cfg = transformer_config("tiny", "video2world")
    model = build_model(cfg)
    model.load_state_dict(random_state_dict(cfg, seed=0))
    x = torch.randn(2, 16, 3, 4, 6)
    out = model(hidden_states=x, timestep=torch.zeros(2), encoder_hidden_states=torch.randn(2, 512, 1024),
                fps=24.0, condition_mask=torch.zeros(2, 1, 3, 4, 6), padding_mask=torch.zeros(1, 1, 32, 48),
                return_dict=False)[0]
    assert out.shape == (2, 16, 3, 4, 6) and torch.isfinite(out).all()


def test_random_init_is_seeded_and_pos_embed_not_zero():
    cfg = transformer_config("tiny", "text2world")
    a, b, c = random_state_dict(cfg, 1), random_state_dict(cfg, 1), random_state_dict(cfg, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["proj_out.weight"], c["proj_out.weight"])
    assert a["learnable_pos_embed.pos_emb_t"].abs().sum() > 0


def test_pretrained_config_must_match_task(tmp_path):
    cfg = transformer_config("tiny", "text2world")
    build_model(cfg).save_pretrained(tmp_path / "transformer")
    assert resolve_config("some/repo", "text2world", tmp_path)["in_channels"] == 16
    with pytest.raises(ValueError, match="in_channels=16 but task 'video2world' needs 17"):
        resolve_config("some/repo", "video2world", tmp_path)
    with pytest.raises(ValueError, match="pretrained"):
        resolve_config("some/repo", "text2world", None)


def test_flops_7b_match_design_figure():
    from cosmos_lib.train.metrics import train_flops_per_sample

    flops = train_flops_per_sample(transformer_config("7B", "text2world"), (16, 16, 88, 160))
    assert flops / 1e15 == pytest.approx(6.63, abs=0.01)  # DESIGN.md: 6.63 PFLOP fwd+bwd per sample


def test_edm_scaling_and_weight():
    sigma = torch.tensor([0.01, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = edm_scaling(sigma, 0.5)
    # unit-variance network input and target (Karras et al. 2022, Eq. 7 / Table 1)
    assert torch.allclose(c_in**2 * (sigma**2 + 0.25), torch.ones(3))
    # the effective training target (x0 - c_skip xt) / c_out has unit variance when x0 has std 0.5
    target_var = ((1 - c_skip) ** 2 * 0.25 + c_skip**2 * sigma**2) / c_out**2
    assert torch.allclose(target_var, torch.ones(3))
    assert torch.allclose(c_noise, 0.25 * sigma.log())
    # weight x c_out^2 = 1: every noise level contributes a unit-scaled loss
    assert torch.allclose(loss_weight(sigma, 0.5) * c_out**2, torch.ones(3))


def test_noised_batch_is_per_sample_and_video2world_keeps_condition_frames():
    cfg = EDMConfig(text_dropout=0.5)
    latent = torch.randn(3, 16, 5, 4, 6)
    text = torch.ones(3, 512, 1024)
    full = make_noised_batch(latent, text, [10, 11, 12], cfg=cfg, seed=7, video2world=True)
    part = make_noised_batch(latent[1:2], text[1:2], [11], cfg=cfg, seed=7, video2world=True)
    assert torch.equal(full.net_input[1:2], part.net_input) and torch.equal(full.sigma[1:2], part.sigma)
    assert ((full.sigma >= cfg.sigma_min) & (full.sigma <= cfg.sigma_max)).all()
    ind = full.condition_indicator
    n = ind.flatten(1).sum(1)
    assert ((n >= 1) & (n <= 2)).all()
    assert torch.equal(full.condition_mask[:, :, :, 0, 0], ind[:, :, :, 0, 0])

    model = build_model(transformer_config("tiny", "video2world"))
    loss = denoise_loss(model, full, fps=24.0, cfg=cfg)
    assert loss.shape == (3,) and torch.isfinite(loss).all()


def test_text_dropout_rate():
    cfg = EDMConfig()
    latent = torch.zeros(400, 16, 1, 2, 2)
    b = make_noised_batch(latent, torch.ones(400, 512, 1024), list(range(400)), cfg=cfg, seed=0, video2world=False)
    dropped = (b.text.flatten(1).abs().sum(1) == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.06


def test_wandb_enabled_without_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    from cosmos_lib.train.config import WandbConfig
    from cosmos_lib.train.metrics import MetricLogger

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(RuntimeError, match="train.wandb.project is set but the wandb package is not installed"):
        MetricLogger(tmp_path, enabled=True, wandb_cfg=WandbConfig(project="p"), train_config={})
    # off: no import attempted, metrics go to metrics.jsonl
    logger = MetricLogger(tmp_path, enabled=True, wandb_cfg=WandbConfig(), train_config={})
    logger.log(1, {"loss": 0.5})
    assert '"loss": 0.5' in (tmp_path / "metrics.jsonl").read_text()
