"""NeMo interop: layout table, exact conversion both ways, NeMo checkpoints in both backends,
megatron-core loading, forward equivalence, FSDP (DTensor) pieces without gathers, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cosmos_lib import nemo_checkpoint as K
from cosmos_lib import nemo_convert as C
from cosmos_lib import nemo_layout as L

REPO = Path(__file__).resolve().parents[1]
TINY = dict(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=12, num_layers=2,
            mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable")


def random_state_dict(dims: L.DiTDims, seed: int = 0, dtype=torch.float32, scale: float = 0.2) -> dict:
    """Random diffusers state dict with the table's shapes (no model needed)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (scale * torch.randn(s, generator=gen)).to(dtype) for k, s in sorted(L.diffusers_shapes(dims).items())}


def tiny_model(seed=0, **overrides):
    from diffusers import CosmosTransformer3DModel

    cfg = dict(TINY, **overrides)
    model = CosmosTransformer3DModel(**cfg).eval()
    model.load_state_dict(random_state_dict(L.DiTDims.from_diffusers_config(cfg), seed))
    return model, cfg


# --- the table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(L.VARIANTS))
def test_table_covers_every_key_of_the_published_models(variant):
    """On the meta device: the diffusers model's keys/shapes are exactly the table's, and both
    conversions produce exactly the table's keys/shapes."""
    from diffusers import CosmosTransformer3DModel

    cfg = L.VARIANTS[variant]
    with torch.device("meta"):
        model = CosmosTransformer3DModel(**cfg)
    sd = model.state_dict()
    dims = L.DiTDims.from_diffusers_config(cfg)
    assert {k: tuple(v.shape) for k, v in sd.items()} == L.diffusers_shapes(dims)
    nemo = C.diffusers_to_nemo(sd, dims)
    assert {k: tuple(v.shape) for k, v in nemo.items()} == L.nemo_shapes(dims)
    assert {k: tuple(v.shape) for k, v in C.nemo_to_diffusers(nemo, dims).items()} == L.diffusers_shapes(dims)
    stacked = L.nemo_shapes(dims, stacked=True)
    hidden = dims.hidden
    assert stacked["module.decoder.layers.full_self_attention.linear_qkv.weight"] == (dims.num_layers, 3 * hidden, hidden)
    assert stacked["module.decoder.layers.adaLN.adaLN_modulation.2.weight"] == (dims.num_layers, 9 * hidden, 768)
    assert stacked["module.x_embedder.proj.1.weight"] == (hidden, 4 * (cfg["in_channels"] + 1))
    assert L.dims_from_nemo_shapes(stacked) == dims
    assert L.diffusers_config_for(dims) == cfg


def test_published_dims():
    d7 = L.DiTDims.from_diffusers_config(L.VARIANTS["7B-Video2World"])
    d14 = L.DiTDims.from_diffusers_config(L.VARIANTS["14B-Text2World"])
    assert (d7.num_layers, d7.hidden, d7.ffn_dim, d7.patch_in, d7.pos_emb, d7.rope_len) == (28, 4096, 16384, 72, (128, 120, 120), 128)
    assert (d14.num_layers, d14.hidden, d14.ffn_dim, d14.patch_in) == (36, 5120, 20480, 68)


# --- exact conversion --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact(dtype):
    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, dtype=dtype)
    nemo = C.diffusers_to_nemo(sd)
    assert all(v.dtype == dtype for v in nemo.values())
    for source in (nemo, C.stack_layers(nemo, dims), {k.removeprefix("module."): v for k, v in nemo.items()}):
        back = C.nemo_to_diffusers(source)
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], sd[k]) and back[k].dtype == dtype for k in sd)
    # NeMo -> diffusers -> NeMo, carrying the NeMo-only tensors
    nemo2 = C.diffusers_to_nemo(C.nemo_to_diffusers(nemo), extras=C.nemo_extras(nemo))
    assert nemo2.keys() == nemo.keys() and all(torch.equal(nemo2[k], nemo[k]) for k in nemo)


def test_fusion_layout_follows_megatron():
    """linear_qkv splits like megatron's SelfAttention (view heads x 3*hd), linear_kv like
    CrossAttention (heads x 2*hd); adaLN chunk i of 9 is sub-block i // 3, entry i % 3."""
    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims)
    nemo = C.diffusers_to_nemo(sd)
    hd, n, H = dims.head_dim, dims.num_heads, dims.hidden
    x = torch.randn(5, H)
    mixed = (x @ nemo["module.decoder.layers.1.full_self_attention.linear_qkv.weight"].T).view(5, n, 3 * hd)
    q, k, v = torch.split(mixed, hd, dim=-1)
    for got, name in ((q, "to_q"), (k, "to_k"), (v, "to_v")):
        torch.testing.assert_close(got, (x @ sd[f"transformer_blocks.1.attn1.{name}.weight"].T).view(5, n, hd))
    ctx = torch.randn(3, dims.text_dim)
    kv = (ctx @ nemo["module.decoder.layers.0.cross_attention.linear_kv.weight"].T).view(3, n, 2 * hd)
    k2, v2 = torch.split(kv, hd, dim=-1)
    torch.testing.assert_close(k2, (ctx @ sd["transformer_blocks.0.attn2.to_k.weight"].T).view(3, n, hd))
    torch.testing.assert_close(v2, (ctx @ sd["transformer_blocks.0.attn2.to_v.weight"].T).view(3, n, hd))
    emb = torch.randn(2, H)
    w1 = nemo["module.decoder.layers.0.adaLN.adaLN_modulation.1.weight"]
    w2 = nemo["module.decoder.layers.0.adaLN.adaLN_modulation.2.weight"]
    chunks = (F.silu(emb) @ w1.T @ w2.T).chunk(9, dim=-1)
    for i, c in enumerate(chunks):
        norm = f"transformer_blocks.0.norm{i // 3 + 1}"
        ref = (F.silu(emb) @ sd[f"{norm}.linear_1.weight"].T @ sd[f"{norm}.linear_2.weight"].T).chunk(3, dim=-1)[i % 3]
        torch.testing.assert_close(c, ref)


def test_offdiagonal_adaln_blocks_are_refused_or_dropped():
    dims = L.DiTDims.from_diffusers_config(TINY)
    nemo = C.diffusers_to_nemo(random_state_dict(dims))
    key = "module.decoder.layers.1.adaLN.adaLN_modulation.2.weight"
    nemo[key] = nemo[key].clone()
    nemo[key][0, -1] = 0.5  # row of norm1's shift, column of norm3's LoRA
    with pytest.raises(C.AdaLNNotBlockDiagonalError, match="off-diagonal"):
        C.nemo_to_diffusers(nemo)
    with pytest.warns(UserWarning, match="dropping"):
        sd = C.nemo_to_diffusers(nemo, offdiag="drop")
    r = dims.adaln_lora_dim
    assert torch.equal(sd["transformer_blocks.1.norm1.linear_2.weight"], nemo[key][: 3 * dims.hidden, :r])


def test_bad_state_dicts_are_named():
    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims)
    with pytest.raises(ValueError, match="no place"):
        C.diffusers_to_nemo({**sd, "crossattn_proj.0.weight": torch.zeros(2, 2)})
    nemo = C.diffusers_to_nemo(sd)
    with pytest.raises(ValueError, match="not in the Cosmos-1.0 DiT layout"):
        C.nemo_to_diffusers({**nemo, "module.something.weight": torch.zeros(1)})
    bad = dict(nemo)
    bad["module.decoder.layers.0.mlp.linear_fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="linear_fc1.*shape"):
        C.nemo_to_diffusers(bad, dims)
    # Transformer Engine extra state is not a weight: ignored
    C.nemo_to_diffusers({**nemo, "module.decoder.layers.0.mlp.linear_fc1._extra_state": torch.zeros(0)})


# --- forward equivalence with NeMo's DiT semantics -----------------------------------------------

def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _rotate(x, cos, sin):  # megatron apply_rotary_pos_emb, non-interleaved (rotate_half)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def nemo_reference_forward(nemo, dims, x, timestep, context, *, rope, padding_mask=None, condition_mask=None):
    """Cosmos-1.0 DiT forward written from NeMo's modules and NeMo's key names only:
    DiTCrossAttentionModel7B.forward / prepare_embedded_sequence / FinalLayer / SDXLTimesteps(-Embedding)
    / SinCosPosEmbAxis (physicalai dit_model_7b.py) and DiTLayerWithAdaLN / AdaLN (dit_layer_spec.py).
    ``rope``: (cos, sin) of VideoRopePosition3DEmb (weight-free), shape (THW, head_dim)."""
    w = lambda name: nemo["module." + name]  # noqa: E731
    B, _, T, H, W = x.shape
    if condition_mask is not None:
        x = torch.cat([x, condition_mask], dim=1)
    if padding_mask is not None:
        x = torch.cat([x, padding_mask.unsqueeze(2).repeat(1, 1, T, 1, 1)], dim=1)
    pt, ph, pw = 1, 2, 2
    Tp, Hp, Wp = T // pt, H // ph, W // pw
    x = x.reshape(B, x.shape[1], Tp, pt, Hp, ph, Wp, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, Tp, Hp, Wp, -1)
    x = x @ w("x_embedder.proj.1.weight").T
    D = dims.hidden
    emb = (w("extra_pos_embedder.pos_emb_t")[:Tp, None, None] + w("extra_pos_embedder.pos_emb_h")[None, :Hp, None]
           + w("extra_pos_embedder.pos_emb_w")[None, None, :Wp]).expand(B, Tp, Hp, Wp, D)
    norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True)
    extra = (emb / (1e-6 + norm * math.sqrt(norm.numel() / emb.numel()))).reshape(B, -1, D)
    x = x.reshape(B, -1, D)
    half = D // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    sinus = timestep[:, None].float() * freqs[None]
    t_emb = torch.cat([torch.cos(sinus), torch.sin(sinus)], dim=-1)
    lora = F.silu(t_emb @ w("t_embedder.1.linear_1.weight").T) @ w("t_embedder.1.linear_2.weight").T
    affine = _rms(t_emb, w("affline_norm.weight"))
    cos, sin = rope
    n, hd = dims.num_heads, dims.head_dim

    def attention(q, k, v):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(B, -1, D)

    for i in range(dims.num_layers):
        p = f"decoder.layers.{i}."
        x = x + extra
        mod = F.silu(affine) @ w(p + "adaLN.adaLN_modulation.1.weight").T @ w(p + "adaLN.adaLN_modulation.2.weight").T
        lo = lora.chunk(3, dim=-1)
        ch = [c[:, None] + lo[j % 3][:, None] for j, c in enumerate(mod.chunk(9, dim=-1))]
        h = _ln(x) * (1 + ch[1]) + ch[0]
        q, k, v = torch.split((h @ w(p + "full_self_attention.linear_qkv.weight").T).view(B, -1, n, 3 * hd), hd, -1)
        q = _rotate(_rms(q, w(p + "full_self_attention.q_layernorm.weight")), cos[:, None], sin[:, None])
        k = _rotate(_rms(k, w(p + "full_self_attention.k_layernorm.weight")), cos[:, None], sin[:, None])
        x = x + ch[2] * (attention(q, k, v) @ w(p + "full_self_attention.linear_proj.weight").T)
        h = _ln(x) * (1 + ch[4]) + ch[3]
        q = (h @ w(p + "cross_attention.linear_q.weight").T).view(B, -1, n, hd)
        k, v = torch.split((context @ w(p + "cross_attention.linear_kv.weight").T).view(B, -1, n, 2 * hd), hd, -1)
        q = _rms(q, w(p + "cross_attention.q_layernorm.weight"))
        k = _rms(k, w(p + "cross_attention.k_layernorm.weight"))
        x = x + ch[5] * (attention(q, k, v) @ w(p + "cross_attention.linear_proj.weight").T)
        h = _ln(x) * (1 + ch[7]) + ch[6]
        x = x + ch[8] * (F.gelu(h @ w(p + "mlp.linear_fc1.weight").T) @ w(p + "mlp.linear_fc2.weight").T)
    final = F.silu(affine) @ w("final_layer.adaLN_modulation.1.weight").T @ w("final_layer.adaLN_modulation.2.weight").T
    shift, scale = (final + lora[:, : 2 * D]).chunk(2, dim=-1)
    y = (_ln(x) * (1 + scale[:, None]) + shift[:, None]) @ w("final_layer.linear.weight").T
    y = y.reshape(B, Tp, Hp, Wp, ph, pw, pt, -1)  # "(B T) (H W) (p1 p2 t C) -> B C (T t) (H p1) (W p2)"
    return y.permute(0, 7, 1, 6, 2, 4, 3, 5).reshape(B, -1, Tp * pt, Hp * ph, Wp * pw)


@pytest.fixture
def identity_mask_resize(monkeypatch):
    """diffusers resizes the padding mask with torchvision (absent here); the tests pass it at the
    latent size already, where a nearest resize is the identity."""
    from diffusers.models.transformers import transformer_cosmos

    def resize(img, size, interpolation=None):
        assert list(img.shape[-2:]) == list(size)
        return img

    shim = types.SimpleNamespace(functional=types.SimpleNamespace(resize=resize),
                                 InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))
    monkeypatch.setattr(transformer_cosmos, "transforms", shim, raising=False)


@pytest.mark.parametrize("task", ["text2world", "video2world"])
def test_diffusers_forward_equals_nemo_semantics_forward(task, identity_mask_resize):
    """The converted weights, run the way NeMo's DiT runs them, give diffusers' output: this pins
    down head interleave, AdaLN chunk order, patch/unpatch orders and the padding-mask channel."""
    cond = task == "video2world"
    model, cfg = tiny_model(seed=1, in_channels=5 if cond else 4)
    dims = L.DiTDims.from_diffusers_config(cfg)
    nemo = C.diffusers_to_nemo(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 3, 8, 8, generator=gen)
    cmask = torch.zeros(1, 1, 3, 8, 8)
    cmask[:, :, :1] = 1
    pmask = (torch.rand(1, 1, 8, 8, generator=gen) > 0.5).float()
    t = torch.tensor([0.7])
    ctx = torch.randn(1, 5, 16, generator=gen)
    with torch.no_grad():
        ref = model(x, t, ctx, fps=24, padding_mask=pmask, condition_mask=cmask if cond else None).sample
        full_in = torch.cat([x, cmask] if cond else [x], dim=1)
        rope = model.rope(torch.cat([full_in, pmask.unsqueeze(2).repeat(1, 1, 3, 1, 1)], 1), fps=24)
        got = nemo_reference_forward(nemo, dims, x, t, ctx, rope=rope, padding_mask=pmask,
                                     condition_mask=cmask if cond else None)
    assert ref.shape == got.shape == (1, 4, 3, 8, 8)
    assert ref.abs().mean() > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_forward_after_nemo_checkpoint_round_trip(tmp_path):
    """A diffusers model and its NeMo checkpoint (written, read back) give the same output."""
    from diffusers import CosmosTransformer3DModel

    model, cfg = tiny_model(seed=3, concat_padding_mask=False)
    K.save_nemo_checkpoint(model.state_dict(), tmp_path / "ckpt" / "weights")
    sd, info = K.load_nemo_checkpoint(tmp_path / "ckpt")
    other = CosmosTransformer3DModel(**cfg).eval()
    other.load_state_dict(sd)
    gen = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(2, 4, 2, 8, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)
    t = torch.tensor([0.3, 2.0])
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, fps=24).sample, other(x, t, ctx, fps=24).sample)


# --- checkpoints on disk -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", K.BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_checkpoint_backends_round_trip(tmp_path, backend, dtype):
    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, dtype=dtype)
    sd["learnable_pos_embed.pos_emb_t"] = sd["learnable_pos_embed.pos_emb_t"].double()  # a key of its own dtype
    weights = K.save_nemo_checkpoint(sd, tmp_path / "nemo" / "weights", backend=backend)
    meta = json.loads((weights / "metadata.json").read_text())
    assert meta == {"sharded_backend": backend, "sharded_backend_version": 1, "common_backend": "torch",
                    "common_backend_version": 1}
    assert (weights / "common.pt").is_file()
    tensors = K.read_nemo_tensors(weights)
    expected = C.stack_layers(C.diffusers_to_nemo(sd), dims)
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) and tensors[k].dtype == expected[k].dtype for k in expected)
    assert tensors["module.extra_pos_embedder.pos_emb_t"].dtype == torch.float64
    for where in (weights, tmp_path / "nemo", tmp_path):  # weights/, checkpoint dir, HF snapshot root
        back, info = K.load_nemo_checkpoint(where)
        assert info.backend == backend and info.dims == dims
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    if backend == "zarr":  # one chunk per layer, as megatron's zarr strategy wrote it
        zarray = json.loads((weights / "module.decoder.layers.mlp.linear_fc1.weight" / ".zarray").read_text())
        assert zarray["chunks"] == [1, dims.ffn_dim, dims.hidden] and zarray["compressor"] is None
        assert zarray["dtype"] == ("bfloat16" if dtype == torch.bfloat16 else "<f4")
        assert sorted(p.name for p in (weights / "module.decoder.layers.mlp.linear_fc1.weight").iterdir()) == [
            ".zarray", "0.0.0", "1.0.0"]


def _megatron_worker(weights: str, num_layers: int, result: str) -> None:
    """megatron-core's dist_checkpointing.load, in a process of its own (it may spawn helpers)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    with K.single_process_group():
        meta = dist_checkpointing.load_tensors_metadata(weights)
        whole = dist_checkpointing.load(meta, weights)
        # as NeMo asks for it: one ShardedTensor per layer at its offset on the prepended layer axis
        key = "module.decoder.layers.full_self_attention.linear_qkv.weight"
        shape = tuple(meta[key].global_shape[1:])
        per_layer = {f"l{i}": ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=meta[key].dtype),
                                                              (0, i, num_layers), replica_id=0, prepend_axis_num=1)
                     for i in range(num_layers)}
        layers = dist_checkpointing.load(per_layer, weights)
    torch.save((dict(whole), dict(layers)), result)


def test_megatron_core_loads_what_we_write(tmp_path):
    import multiprocessing as mp

    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, dtype=torch.bfloat16)
    weights = K.save_nemo_checkpoint(sd, tmp_path / "weights")
    proc = mp.get_context("spawn").Process(target=_megatron_worker,
                                           args=(str(weights), dims.num_layers, str(tmp_path / "loaded.pt")))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    whole, layers = torch.load(tmp_path / "loaded.pt")
    expected = C.stack_layers(C.diffusers_to_nemo(sd), dims)
    assert whole.keys() == expected.keys() and all(torch.equal(whole[k], expected[k]) for k in expected)
    nemo = C.diffusers_to_nemo(sd)
    for i in range(dims.num_layers):
        assert torch.equal(layers[f"l{i}"], nemo[f"module.decoder.layers.{i}.full_self_attention.linear_qkv.weight"])


def test_zarr_checkpoint_written_by_the_zarr_library(tmp_path):
    """A zarr checkpoint made the way megatron-core's zarr strategy made NVIDIA's (zarr.create,
    chunks = one layer, no compressor, bf16 stored as 2-byte voids with dtype renamed 'bfloat16')."""
    zarr = pytest.importorskip("zarr")
    import numpy as np

    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, dtype=torch.bfloat16)
    sd["time_embed.norm.weight"] = sd["time_embed.norm.weight"].float()  # mixed dtypes, as real checkpoints may
    nemo = C.stack_layers(C.diffusers_to_nemo(sd), dims)
    weights = tmp_path / "weights"
    weights.mkdir()
    for key, t in nemo.items():
        chunks = (1, *t.shape[1:]) if key.startswith("module.decoder.layers.") else t.shape
        if t.dtype == torch.bfloat16:
            arr = zarr.create(t.shape, dtype="V2", store=str(weights / key), chunks=chunks, compressor=None,
                              fill_value=None, write_empty_chunks=True)
            arr[...] = np.frombuffer(t.contiguous().view(torch.int16).numpy().tobytes(), dtype="V2").reshape(t.shape)
            meta = (weights / key / ".zarray").read_text()
            (weights / key / ".zarray").write_text(meta.replace('"|V2"', '"bfloat16"').replace('"<V2"', '"bfloat16"'))
        else:
            arr = zarr.create(t.shape, dtype=np.float32, store=str(weights / key), chunks=chunks, compressor=None,
                              fill_value=None, write_empty_chunks=True)
            arr[...] = t.numpy()
    (weights / "metadata.json").write_text(json.dumps(K.megatron_metadata("zarr")))
    torch.save({}, weights / "common.pt")
    back, info = K.load_nemo_checkpoint(tmp_path)
    assert info.backend == "zarr"
    assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    # and our own zarr writer's float32 arrays are what the zarr library reads
    ours = K.save_nemo_checkpoint({k: v.float() for k, v in sd.items()}, tmp_path / "ours", backend="zarr")
    key = "module.decoder.layers.cross_attention.linear_kv.weight"
    assert torch.equal(torch.from_numpy(zarr.open(str(ours / key), "r")[...]), nemo[key].float())


@pytest.mark.parametrize("with_group", [True, False])
def test_nemo_dcp_keys_single_process(tmp_path, with_group):
    """to_nemo_dcp / from_nemo_dcp on plain tensors: dcp.load into the NeMo-keyed view of a zeroed
    state dict gives back the saved diffusers tensors; helpers for init_from see the checkpoint."""
    import torch.distributed.checkpoint as dcp

    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, seed=7)
    K.save_nemo_checkpoint(sd, tmp_path / "ckpt" / "weights")
    assert K.is_nemo_checkpoint(tmp_path / "ckpt") and not K.is_nemo_checkpoint(tmp_path)
    import contextlib

    with K.single_process_group() if with_group else contextlib.nullcontext():
        target = K.to_nemo_dcp({k: torch.zeros_like(v) for k, v in sd.items()}, dims)
        dcp.load(target, checkpoint_id=str(tmp_path / "ckpt" / "weights"), no_dist=True)
        back = K.from_nemo_dcp(target)
        dcp.save(target, checkpoint_id=str(tmp_path / "again"), no_dist=True)
    again = K._read_torch_dist(tmp_path / "again")
    first = K._read_torch_dist(tmp_path / "ckpt" / "weights")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    sd2, cfg = K.load_nemo_as_diffusers(tmp_path / "ckpt")
    assert L.DiTDims.from_diffusers_config(cfg) == dims and all(torch.equal(sd2[k], sd[k]) for k in sd)


def test_transformer_engine_extra_state_is_skipped(tmp_path):
    """NeMo checkpoints made with Transformer Engine carry ``_extra_state`` objects (DCP bytes, or
    zarr-backend object folders without .zarray): not weights, ignored."""
    import io

    import torch.distributed.checkpoint as dcp

    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims, seed=8)
    state = dict(C.stack_layers(C.diffusers_to_nemo(sd), dims))
    state["module.decoder.layers.full_self_attention.linear_qkv._extra_state/shard_0_2"] = io.BytesIO(b"fp8 meta")
    dcp.save(state, checkpoint_id=str(tmp_path / "td" / "weights"), no_dist=True)
    (tmp_path / "td" / "weights" / "metadata.json").write_text(json.dumps(K.megatron_metadata("torch_dist")))
    back, _ = K.load_nemo_checkpoint(tmp_path / "td")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    weights = K.save_nemo_checkpoint(sd, tmp_path / "z" / "weights", backend="zarr")
    obj = weights / "module.decoder.layers.mlp.linear_fc1._extra_state"
    obj.mkdir()
    torch.save(None, obj / "shard_0_2.pt")
    back, _ = K.load_nemo_checkpoint(tmp_path / "z")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_checkpoint_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a NeMo distributed checkpoint"):
        K.load_nemo_checkpoint(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "h5"}))
    with pytest.raises(ValueError, match="metadata.json.*h5"):
        K.load_nemo_checkpoint(tmp_path)
    dims = L.DiTDims.from_diffusers_config(TINY)
    out = K.save_nemo_checkpoint(random_state_dict(dims), tmp_path / "w2")
    with pytest.raises(FileExistsError):
        K.save_nemo_checkpoint(random_state_dict(dims), out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


# --- FSDP: DTensor pieces without a gather -------------------------------------------------------

@pytest.mark.parametrize("world", [2, 4])
def test_fused_heads_from_local_rows_simulated_ranks(world):
    """Each rank's Shard(0) rows of q/k/v, fused locally, are exactly its Shard(0) rows of the
    full fused tensor (and split back)."""
    dims = L.DiTDims.from_diffusers_config(TINY)
    sd = random_state_dict(dims)
    for e in L.entries(dims):
        if e.fusion != L.HEADS:
            continue
        parts = [sd[n] for n in e.diffusers_keys(0)]
        full = C.fuse_heads(parts, dims.head_dim)
        assert torch.equal(full, C.diffusers_to_nemo(sd)[e.nemo_key(0)])
        assert C.heads_divide_evenly(parts[0].shape[0], dims.head_dim, world)
        locals_ = [C.fuse_heads([p.chunk(world)[r] for p in parts], dims.head_dim) for r in range(world)]
        for r in range(world):
            assert torch.equal(locals_[r], full.chunk(world)[r])
            assert all(torch.equal(a, p.chunk(world)[r])
                       for a, p in zip(C.split_heads(locals_[r], len(parts), dims.head_dim), parts))
    assert not C.heads_divide_evenly(4 * 12, 12, 3)


def _fsdp_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        dims = L.DiTDims.from_diffusers_config(TINY)
        full = random_state_dict(dims, seed=5)
        place = lambda k: [Replicate()] if k == "time_embed.norm.weight" else [Shard(0)]  # noqa: E731
        dt = {k: distribute_tensor(v, mesh, place(k)) for k, v in full.items()}
        qkv = [dt[f"transformer_blocks.1.attn1.to_{x}.weight"] for x in "qkv"]
        fused = C.fuse_heads_dtensor(qkv, dims.head_dim)
        assert torch.equal(fused.full_tensor(), C.fuse_heads([q.full_tensor() for q in qkv], dims.head_dim))
        assert all(torch.equal(a.full_tensor(), b.full_tensor())
                   for a, b in zip(C.split_heads_dtensor(fused, 3, dims.head_dim), qkv))
        out = f"{tmp}/ckpt"
        dcp.save(dict(K.to_nemo_dcp(dt, dims)), checkpoint_id=out)
        zeros = {k: distribute_tensor(torch.zeros_like(v), mesh, place(k)) for k, v in full.items()}
        target = K.to_nemo_dcp(zeros, dims)
        dcp.load(target, checkpoint_id=out)
        back = K.from_nemo_dcp(target)
        assert back.keys() == full.keys()
        for k, v in back.items():
            assert tuple(v.placements) == tuple(place(k)) and torch.equal(v.full_tensor(), full[k]), k
        if rank == 0:
            tensors = K._read_torch_dist(Path(out))
            expected = C.stack_layers(C.diffusers_to_nemo(full), dims)
            assert tensors.keys() == expected.keys()
            assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp_dtensors_save_and_load_nemo_keys_without_gather(tmp_path, world):
    """Ranks holding FSDP Shard(0) DTensors write a NeMo-keyed DCP checkpoint (each its own pieces)
    equal to the full conversion, and load it back into DTensors."""
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(world, str(tmp_path)), nprocs=world, join=True)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_both_directions_bit_exact(tmp_path):
    model, cfg = tiny_model(seed=6)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "diffusers" / "transformer")
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    res = run("diffusers-to-nemo", str(tmp_path / "diffusers"), str(tmp_path / "nemo"), "--backend", "zarr")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "nemo" / "weights" / "metadata.json").is_file()
    res = run("nemo-to-diffusers", str(tmp_path / "nemo"), str(tmp_path / "back"))
    assert res.returncode == 0, res.stderr
    sd, config, extras = K.read_diffusers_transformer(tmp_path / "back")
    orig = model.state_dict()
    assert sd.keys() == orig.keys() and all(torch.equal(sd[k], orig[k]) for k in orig)
    assert {k: config[k] for k in TINY} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    res = run("diffusers-to-nemo", str(tmp_path / "back"), str(tmp_path / "nemo2"))
    assert res.returncode == 0, res.stderr
    a, b = K.read_nemo_tensors(tmp_path / "nemo"), K.read_nemo_tensors(tmp_path / "nemo2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # extras carried through
    res = run("nemo-to-diffusers", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert res.returncode == 1 and "missing" in res.stderr
