"""NeMo's Cosmos-1.0 DiT checkpoint layout: the ONE table of key names, shapes, fusions, sharding.

Everything that knows a NeMo DiT key name reads it from :data:`NEMO_TABLE`; the converter
(:mod:`cosmos_lib.nemo_convert`) and the checkpoint reader/writer (:mod:`cosmos_lib.nemo_checkpoint`)
only interpret it.

Where the facts come from (read, not copied):

* [M7B] NeMo branches ``physicalai`` (2025-02-08) and ``vfm`` (2025-04-17),
  ``nemo/collections/diffusion/models/dit/dit_model_7b.py`` / ``dit_model_14b.py``:
  ``DiTCrossAttentionModel7B`` (Text2World, ``in_channels`` 16) and
  ``DiTCrossAttentionExtendModel7B`` (Video2World, 17), both with ``concat_padding_mask`` (+1
  channel), ``x_embedder = PatchEmbed(legacy_patch_emb=False)``: ``proj = Sequential(Rearrange(
  "b c (t r) (h m) (w n) -> b t h w (c r m n)"), Linear(bias=False))`` so the key is
  ``x_embedder.proj.1.weight`` and the input features are channel-major ``(c, pt, ph, pw)``;
  ``t_embedder = Sequential(SDXLTimesteps, SDXLTimestepEmbedding(use_adaln_lora=True))``
  (``linear_1`` no bias, ``linear_2`` to ``3 * hidden``); ``pos_embedder = VideoRopePosition3DEmb``
  whose only persistent buffer is ``seq = arange(max(len_h, len_w, len_t))`` (len = 240/2, 240/2,
  128/1); ``extra_pos_embedder = SinCosPosEmbAxis`` (learnable ``pos_emb_h/w/t``; Cosmos-1.0 uses
  RoPE *and* this per-block absolute embedding: ``extra_per_block_abs_pos_emb = True``);
  ``final_layer = FinalLayer(use_adaln_lora=True)``: ``adaLN_modulation = Sequential(SiLU,
  Linear(hidden, 256), Linear(256, 2 * hidden))`` chunked (shift, scale), ``linear`` whose
  outputs are ordered ``(p1 p2 t C)``; ``affline_norm`` = TE ``RMSNorm(hidden)``;
  ``logvar = Sequential(FourierFeatures(128), Linear(128, 1, bias=False))`` (buffers ``freqs``,
  ``phases``; used only by the training loss).
* [SPEC] megatron ``megatron/core/models/dit/dit_layer_spec.py`` (the DiT branch the physicalai
  model imports) and NeMo vfm ``models/dit/cosmos_layer_spec.py``: ``DiTLayerWithAdaLN`` with
  ``full_self_attention`` (``SelfAttention``: ``linear_qkv``, ``q_layernorm``, ``k_layernorm``
  (TE RMSNorm over one head), ``linear_proj``), ``cross_attention`` (``CrossAttention``:
  ``linear_q``, ``linear_kv``, ``q_layernorm``, ``k_layernorm``, ``linear_proj``), ``mlp``
  (``linear_fc1``, ``linear_fc2``, no gating, no bias) and ``adaLN = AdaLN(n_adaln_chunks=9)``:
  ONE ``Sequential(SiLU, Linear(hidden, 3 * 256), Linear(3 * 256, 9 * hidden))`` whose 9 output
  chunks are (shift, scale, gate) of full-attn, cross-attn, mlp in that order, each plus
  ``adaln_lora[i % 3]``; ``adaLN.ln`` is an affine-free LayerNorm (no parameters).
* [MCORE] megatron-core ``transformer/attention.py``: ``linear_qkv`` rows are grouped per query
  group, ``[q_h, k_h, v_h]`` for each head h when there are as many groups as heads (MHA),
  ``linear_kv`` rows are ``[k_h, v_h]`` per head; column-parallel layers (``linear_qkv``,
  ``linear_q``, ``linear_kv``, ``linear_fc1``) shard dim 0 over tensor parallel ranks,
  row-parallel ones (``linear_proj``, ``linear_fc2``) dim 1.
  ``transformer_block.py`` ``sharded_state_dict``: layer ``N``'s tensors are stored under
  ``decoder.layers.<name>`` with a prepended axis of size ``num_layers`` (offset ``N``).
  NeMo's ``MegatronParallel`` prefixes every key with ``module.``.
* [CONV] a public Cosmos-1.0 -> NeMo conversion script (``merge_state_dicts``: ``net.blocks.
  block{i}.blocks.{0,1,2}`` = FA, CA, MLP -> ``module.decoder.layers.{i}``; ``merge_qkv`` /
  ``merge_kv`` interleave 128-row head blocks; ``adaLN_modulation.1`` = concat of the three
  blocks' ``.1``; ``adaLN_modulation.2`` = block-diagonal of the three ``.2``; saved with
  ``MegatronCheckpointIO('zarr')``) and NVIDIA Cosmos ``cosmos1/models/diffusion/nemo/inference/
  general.py`` (loads ``nemo/`` with ``save_ckpt_format = "zarr"``, ``strict=False``).
* [DIFF] diffusers ``models/transformers/transformer_cosmos.py`` (``CosmosTransformer3DModel``:
  ``norm1/2/3 = CosmosAdaLayerNormZero`` chunked (shift, scale, gate), ``norm_out`` (shift,
  scale), ``patch_embed`` flattens ``(c, pt, ph, pw)``, ``proj_out`` unflattens
  ``(ph, pw, pt, C)``) and ``scripts/convert_cosmos_to_diffusers.py`` (Cosmos-1.0 key renames:
  ``t_embedder.1 -> time_embed.t_embedder``, ``affline_norm -> time_embed.norm``, ``blocks.0/1/2``
  -> ``attn1/attn2/ff``, ``adaLN_modulation.1/2`` -> ``norm{1,2,3}.linear_1/2``, ``to_q.1 ->
  norm_q``, ``layer1/2 -> ff.net.0.proj/ff.net.2``, ``extra_pos_embedder -> learnable_pos_embed``,
  ``final_layer.adaLN_modulation`` -> ``norm_out``, ``final_layer.linear -> proj_out``; drops
  ``pos_embedder.seq`` and ``logvar.*``), whose ``TRANSFORMER_CONFIGS`` give the four variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# --- fusion kinds -----------------------------------------------------------------------------
COPY = "copy"              # one diffusers tensor, same values
HEADS = "heads"            # k tensors of (heads*head_dim, c) -> rows interleaved per head [p0_h, p1_h, ...]
CONCAT = "concat"          # k tensors stacked along dim 0
BLOCK_DIAG = "block_diag"  # k 2-D tensors -> block-diagonal matrix (zeros elsewhere)
NEMO_ONLY = "nemo_only"    # no diffusers counterpart (buffers / training-only params)

NEMO_PREFIX = "module."                 # [MCORE] MegatronParallel
LAYER_PREFIX = "decoder.layers."        # [MCORE] TransformerBlock
LOGVAR_CHANNELS = 128                   # [M7B] FourierFeatures(num_channels=128)


@dataclass(frozen=True)
class DiTDims:
    """The sizes every NeMo/diffusers Cosmos-1.0 DiT tensor shape is made of."""

    num_layers: int
    num_heads: int
    head_dim: int
    text_dim: int
    adaln_lora_dim: int
    ffn_dim: int
    patch_in: int       # input features of the patch embedding (channels incl. masks x patch volume)
    patch_out: int      # output features of the final linear (patch volume x out channels)
    pos_emb: tuple[int, int, int] | None  # rows of learnable pos_emb_t/h/w, None without extra pos emb
    rope_len: int       # length of NeMo's pos_embedder.seq buffer

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_diffusers_config(cls, cfg: dict) -> "DiTDims":
        """Dims of a ``CosmosTransformer3DModel`` config (dict or FrozenDict)."""
        for key in ("use_crossattn_projection", "img_context_dim_in"):
            if cfg.get(key):
                raise ValueError(f"CosmosTransformer3DModel config with {key}={cfg[key]!r} is not a "
                                 "Cosmos-1.0 DiT; NeMo's Cosmos-1.0 layout has no such tensors")
        pt, ph, pw = cfg.get("patch_size", (1, 2, 2))
        volume = pt * ph * pw
        channels = cfg.get("in_channels", 16) + (1 if cfg.get("concat_padding_mask", True) else 0)
        heads, head_dim = cfg.get("num_attention_heads", 32), cfg.get("attention_head_dim", 128)
        max_t, max_h, max_w = cfg.get("max_size", (128, 240, 240))
        lengths = (max_t // pt, max_h // ph, max_w // pw)
        extra = cfg.get("extra_pos_embed_type", "learnable")
        if extra not in (None, "learnable"):
            raise ValueError(f"extra_pos_embed_type={extra!r} is not supported (None or 'learnable')")
        return cls(
            num_layers=cfg.get("num_layers", 28), num_heads=heads, head_dim=head_dim,
            text_dim=cfg.get("text_embed_dim", 1024), adaln_lora_dim=cfg.get("adaln_lora_dim", 256),
            ffn_dim=int(heads * head_dim * cfg.get("mlp_ratio", 4.0)),
            patch_in=channels * volume, patch_out=volume * cfg.get("out_channels", 16),
            pos_emb=lengths if extra == "learnable" else None, rope_len=max(lengths),
        )


@dataclass(frozen=True)
class NemoTensor:
    """One NeMo tensor: its name, its diffusers sources and how they combine."""

    name: str                          # key after ``module.``; ``{i}`` = layer index
    sources: tuple[str, ...]           # diffusers keys (``{i}`` = block index), in fusion order
    fusion: str
    shape: Callable[[DiTDims], tuple[int, ...]]
    tp_axis: int | None                # megatron tensor-parallel split axis; None = replicated
    ref: str                           # where the fact comes from (see module docstring)
    needs_pos_emb: bool = False        # present only when the model has the learnable extra pos emb

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name

    def nemo_key(self, layer: int | None = None) -> str:
        """Key in NeMo's (unsharded) model state dict, e.g. ``module.decoder.layers.3.mlp...``."""
        return NEMO_PREFIX + (self.name.format(i=layer) if self.per_layer else self.name)

    def sharded_key(self) -> str:
        """Key in the distributed checkpoint: layers stacked along a prepended axis [MCORE]."""
        return NEMO_PREFIX + self.name.replace("{i}.", "")

    def diffusers_keys(self, layer: int | None = None) -> tuple[str, ...]:
        return tuple(s.format(i=layer) for s in self.sources)


_L = LAYER_PREFIX + "{i}."
_B = "transformer_blocks.{i}."

NEMO_TABLE: tuple[NemoTensor, ...] = (
    # --- embeddings ---------------------------------------------------------------------------
    NemoTensor("x_embedder.proj.1.weight", ("patch_embed.proj.weight",), COPY,
               lambda d: (d.hidden, d.patch_in), None, "M7B PatchEmbed / DIFF patch_embed; same (c,pt,ph,pw) order, padding-mask channel last"),
    NemoTensor("pos_embedder.seq", (), NEMO_ONLY,
               lambda d: (d.rope_len,), None, "M7B VideoRopePosition3DEmb buffer arange(max len); DIFF drops it"),
    NemoTensor("extra_pos_embedder.pos_emb_h", ("learnable_pos_embed.pos_emb_h",), COPY,
               lambda d: (d.pos_emb[1], d.hidden), None, "M7B SinCosPosEmbAxis / DIFF learnable_pos_embed", True),
    NemoTensor("extra_pos_embedder.pos_emb_w", ("learnable_pos_embed.pos_emb_w",), COPY,
               lambda d: (d.pos_emb[2], d.hidden), None, "M7B SinCosPosEmbAxis / DIFF learnable_pos_embed", True),
    NemoTensor("extra_pos_embedder.pos_emb_t", ("learnable_pos_embed.pos_emb_t",), COPY,
               lambda d: (d.pos_emb[0], d.hidden), None, "M7B SinCosPosEmbAxis / DIFF learnable_pos_embed", True),
    NemoTensor("t_embedder.1.linear_1.weight", ("time_embed.t_embedder.linear_1.weight",), COPY,
               lambda d: (d.hidden, d.hidden), None, "M7B SDXLTimestepEmbedding / DIFF CosmosTimestepEmbedding"),
    NemoTensor("t_embedder.1.linear_2.weight", ("time_embed.t_embedder.linear_2.weight",), COPY,
               lambda d: (3 * d.hidden, d.hidden), None, "M7B adaln-lora 3*hidden / DIFF linear_2"),
    NemoTensor("affline_norm.weight", ("time_embed.norm.weight",), COPY,
               lambda d: (d.hidden,), None, "M7B te RMSNorm / DIFF time_embed.norm"),
    # --- transformer layers -------------------------------------------------------------------
    NemoTensor(_L + "full_self_attention.linear_qkv.weight",
               (_B + "attn1.to_q.weight", _B + "attn1.to_k.weight", _B + "attn1.to_v.weight"), HEADS,
               lambda d: (3 * d.hidden, d.hidden), 0, "MCORE SelfAttention per-head [q,k,v]; CONV merge_qkv"),
    NemoTensor(_L + "full_self_attention.q_layernorm.weight", (_B + "attn1.norm_q.weight",), COPY,
               lambda d: (d.head_dim,), None, "SPEC q_layernorm per head / DIFF norm_q"),
    NemoTensor(_L + "full_self_attention.k_layernorm.weight", (_B + "attn1.norm_k.weight",), COPY,
               lambda d: (d.head_dim,), None, "SPEC k_layernorm per head / DIFF norm_k"),
    NemoTensor(_L + "full_self_attention.linear_proj.weight", (_B + "attn1.to_out.0.weight",), COPY,
               lambda d: (d.hidden, d.hidden), 1, "MCORE row-parallel linear_proj / DIFF to_out.0"),
    NemoTensor(_L + "cross_attention.linear_q.weight", (_B + "attn2.to_q.weight",), COPY,
               lambda d: (d.hidden, d.hidden), 0, "MCORE CrossAttention linear_q"),
    NemoTensor(_L + "cross_attention.linear_kv.weight", (_B + "attn2.to_k.weight", _B + "attn2.to_v.weight"), HEADS,
               lambda d: (2 * d.hidden, d.text_dim), 0, "MCORE CrossAttention per-head [k,v]; CONV merge_kv"),
    NemoTensor(_L + "cross_attention.q_layernorm.weight", (_B + "attn2.norm_q.weight",), COPY,
               lambda d: (d.head_dim,), None, "SPEC / DIFF attn2.norm_q"),
    NemoTensor(_L + "cross_attention.k_layernorm.weight", (_B + "attn2.norm_k.weight",), COPY,
               lambda d: (d.head_dim,), None, "SPEC / DIFF attn2.norm_k"),
    NemoTensor(_L + "cross_attention.linear_proj.weight", (_B + "attn2.to_out.0.weight",), COPY,
               lambda d: (d.hidden, d.hidden), 1, "MCORE row-parallel / DIFF attn2.to_out.0"),
    NemoTensor(_L + "mlp.linear_fc1.weight", (_B + "ff.net.0.proj.weight",), COPY,
               lambda d: (d.ffn_dim, d.hidden), 0, "MCORE MLP fc1 (gelu, no gate) / DIFF ff.net.0.proj"),
    NemoTensor(_L + "mlp.linear_fc2.weight", (_B + "ff.net.2.weight",), COPY,
               lambda d: (d.hidden, d.ffn_dim), 1, "MCORE MLP fc2 / DIFF ff.net.2"),
    NemoTensor(_L + "adaLN.adaLN_modulation.1.weight",
               (_B + "norm1.linear_1.weight", _B + "norm2.linear_1.weight", _B + "norm3.linear_1.weight"), CONCAT,
               lambda d: (3 * d.adaln_lora_dim, d.hidden), None, "SPEC AdaLN Linear(hidden, 3*lora); CONV cat(FA, CA, MLP)"),
    NemoTensor(_L + "adaLN.adaLN_modulation.2.weight",
               (_B + "norm1.linear_2.weight", _B + "norm2.linear_2.weight", _B + "norm3.linear_2.weight"), BLOCK_DIAG,
               lambda d: (9 * d.hidden, 3 * d.adaln_lora_dim), None,
               "SPEC 9 chunks (shift,scale,gate) x (FA,CA,MLP); CONV block-diagonal"),
    # --- output -------------------------------------------------------------------------------
    NemoTensor("final_layer.adaLN_modulation.1.weight", ("norm_out.linear_1.weight",), COPY,
               lambda d: (d.adaln_lora_dim, d.hidden), None, "M7B FinalLayer / DIFF norm_out.linear_1"),
    NemoTensor("final_layer.adaLN_modulation.2.weight", ("norm_out.linear_2.weight",), COPY,
               lambda d: (2 * d.hidden, d.adaln_lora_dim), None, "M7B FinalLayer (shift, scale) / DIFF norm_out.linear_2"),
    NemoTensor("final_layer.linear.weight", ("proj_out.weight",), COPY,
               lambda d: (d.patch_out, d.hidden), None, "M7B (p1 p2 t C) / DIFF proj_out (ph pw pt C)"),
    NemoTensor("logvar.0.freqs", (), NEMO_ONLY, lambda d: (LOGVAR_CHANNELS,), None, "M7B FourierFeatures buffer"),
    NemoTensor("logvar.0.phases", (), NEMO_ONLY, lambda d: (LOGVAR_CHANNELS,), None, "M7B FourierFeatures buffer"),
    NemoTensor("logvar.1.weight", (), NEMO_ONLY, lambda d: (1, LOGVAR_CHANNELS), None, "M7B logvar Linear(128, 1)"),
)

# The four published models, as diffusers configs ([DIFF] TRANSFORMER_CONFIGS, the HF
# ``transformer/config.json`` of nvidia/Cosmos-1.0-Diffusion-*); the NeMo model class for each [M7B].
_COMMON = dict(out_channels=16, attention_head_dim=128, mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256,
               max_size=(128, 240, 240), patch_size=(1, 2, 2), concat_padding_mask=True,
               extra_pos_embed_type="learnable")
VARIANTS: dict[str, dict] = {
    "7B-Text2World": dict(_COMMON, in_channels=16, num_attention_heads=32, num_layers=28, rope_scale=(2.0, 1.0, 1.0)),
    "7B-Video2World": dict(_COMMON, in_channels=17, num_attention_heads=32, num_layers=28, rope_scale=(2.0, 1.0, 1.0)),
    "14B-Text2World": dict(_COMMON, in_channels=16, num_attention_heads=40, num_layers=36, rope_scale=(2.0, 2.0, 2.0)),
    "14B-Video2World": dict(_COMMON, in_channels=17, num_attention_heads=40, num_layers=36, rope_scale=(2.0, 2.0, 2.0)),
}
NEMO_MODEL_CLASS = {
    "7B-Text2World": "DiTCrossAttentionModel7B (DiT7BConfig)",
    "7B-Video2World": "DiTCrossAttentionExtendModel7B (DiT7BVideo2WorldConfig)",
    "14B-Text2World": "DiTCrossAttentionModel14B (DiT14BConfig)",
    "14B-Video2World": "DiTCrossAttentionExtendModel14B (DiT14BVideo2WorldConfig)",
}


def entries(dims: DiTDims) -> list[NemoTensor]:
    """The table rows present for a model with these dims."""
    return [e for e in NEMO_TABLE if not (e.needs_pos_emb and dims.pos_emb is None)]


def nemo_shapes(dims: DiTDims, *, stacked: bool = False) -> dict[str, tuple[int, ...]]:
    """NeMo key -> shape: per-layer keys (model state dict) or stacked keys (dist checkpoint)."""
    out = {}
    for e in entries(dims):
        if not e.per_layer:
            out[e.nemo_key()] = e.shape(dims)
        elif stacked:
            out[e.sharded_key()] = (dims.num_layers, *e.shape(dims))
        else:
            out.update({e.nemo_key(i): e.shape(dims) for i in range(dims.num_layers)})
    return out


def _source_shapes(e: NemoTensor, d: DiTDims) -> list[tuple[int, ...]]:
    full = e.shape(d)
    k = len(e.sources)
    if e.fusion == COPY:
        return [full]
    if e.fusion in (HEADS, CONCAT):
        return [(full[0] // k, *full[1:])] * k
    if e.fusion == BLOCK_DIAG:
        return [(full[0] // k, full[1] // k)] * k
    return []


def diffusers_shapes(dims: DiTDims) -> dict[str, tuple[int, ...]]:
    """diffusers key -> shape implied by the table (the inverse view of :func:`nemo_shapes`)."""
    out = {}
    for e in entries(dims):
        layers = range(dims.num_layers) if e.per_layer else [None]
        for i in layers:
            out.update(zip(e.diffusers_keys(i), _source_shapes(e, dims)))
    return out


def dims_from_nemo_shapes(shapes: dict[str, tuple[int, ...]]) -> DiTDims:
    """Infer :class:`DiTDims` from NeMo tensor shapes (stacked or per-layer keys, with/without ``module.``)."""
    plain = {k.removeprefix(NEMO_PREFIX): tuple(v) for k, v in shapes.items()}

    def get(name: str) -> tuple[int, ...]:
        if name in plain:
            return plain[name]
        raise KeyError(f"NeMo checkpoint has no tensor {NEMO_PREFIX}{name}: not a Cosmos-1.0 DiT checkpoint")

    stacked_qkv = LAYER_PREFIX + "full_self_attention.linear_qkv.weight"
    if stacked_qkv in plain:
        num_layers = plain[stacked_qkv][0]
        layer = lambda n: get(LAYER_PREFIX + n)[1:]  # noqa: E731
    else:
        idx = {int(k[len(LAYER_PREFIX):].split(".")[0]) for k in plain if k.startswith(LAYER_PREFIX)}
        if not idx:
            raise KeyError("NeMo checkpoint has no decoder.layers tensors: not a Cosmos-1.0 DiT checkpoint")
        num_layers = max(idx) + 1
        layer = lambda n: get(f"{LAYER_PREFIX}0.{n}")  # noqa: E731
    hidden = get("affline_norm.weight")[0]
    head_dim = layer("full_self_attention.q_layernorm.weight")[0]
    has_pos = "extra_pos_embedder.pos_emb_t" in plain
    seq = plain.get("pos_embedder.seq")
    pos = (get("extra_pos_embedder.pos_emb_t")[0], get("extra_pos_embedder.pos_emb_h")[0],
           get("extra_pos_embedder.pos_emb_w")[0]) if has_pos else None
    return DiTDims(
        num_layers=num_layers, num_heads=hidden // head_dim, head_dim=head_dim,
        text_dim=layer("cross_attention.linear_kv.weight")[1],
        adaln_lora_dim=get("final_layer.adaLN_modulation.1.weight")[0],
        ffn_dim=layer("mlp.linear_fc1.weight")[0],
        patch_in=get("x_embedder.proj.1.weight")[1], patch_out=get("final_layer.linear.weight")[0],
        pos_emb=pos, rope_len=seq[0] if seq else (max(pos) if pos else 0),
    )


def diffusers_config_for(dims: DiTDims, *, variant: str | None = None, patch_size=(1, 2, 2),
                         concat_padding_mask: bool = True) -> dict:
    """A ``CosmosTransformer3DModel`` config for NeMo weights with these dims.

    Weights do not carry ``rope_scale`` (nor the patch size): a known ``variant`` whose dims match
    is used for those; otherwise the matching published variant is looked up, and failing that the
    7B values are assumed with the given ``patch_size``.
    """
    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        candidates = [variant]
    else:
        candidates = list(VARIANTS)
    for name in candidates:
        cfg = VARIANTS[name]
        if DiTDims.from_diffusers_config(cfg) == dims:
            return dict(cfg)
    if variant is not None:
        raise ValueError(f"NeMo weights do not have the shapes of variant {variant}: {dims}")
    pt, ph, pw = patch_size
    volume = pt * ph * pw
    channels = dims.patch_in // volume - (1 if concat_padding_mask else 0)
    cfg = dict(
        in_channels=channels, out_channels=dims.patch_out // volume, num_attention_heads=dims.num_heads,
        attention_head_dim=dims.head_dim, num_layers=dims.num_layers, mlp_ratio=dims.ffn_dim / dims.hidden,
        text_embed_dim=dims.text_dim, adaln_lora_dim=dims.adaln_lora_dim, patch_size=tuple(patch_size),
        rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=concat_padding_mask,
        extra_pos_embed_type="learnable" if dims.pos_emb else None,
        max_size=(tuple(n * p for n, p in zip(dims.pos_emb, patch_size)) if dims.pos_emb
                  else (dims.rope_len * pt, dims.rope_len * ph, dims.rope_len * pw)),
    )
    if DiTDims.from_diffusers_config(cfg) != dims:
        raise ValueError(f"cannot express NeMo dims {dims} as a CosmosTransformer3DModel config")
    return cfg


def dims_from_diffusers_shapes(shapes: dict[str, tuple[int, ...]], *, rope_len: int | None = None) -> DiTDims:
    """Infer :class:`DiTDims` from a diffusers Cosmos-1.0 state dict's shapes.

    ``rope_len`` (NeMo's ``pos_embedder.seq`` length, max(max_size // patch)) is not a diffusers
    tensor; it defaults to the longest learnable position table.
    """
    def get(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise KeyError(f"diffusers state dict has no tensor {name}: not a Cosmos-1.0 CosmosTransformer3DModel")
        return tuple(shapes[name])

    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")}
    hidden = get("time_embed.norm.weight")[0]
    head_dim = get("transformer_blocks.0.attn1.norm_q.weight")[0]
    pos = None
    if "learnable_pos_embed.pos_emb_t" in shapes:
        pos = tuple(get(f"learnable_pos_embed.pos_emb_{a}")[0] for a in "thw")
    if rope_len is None:
        if pos is None:
            raise ValueError("rope_len must be given for a model without learnable position embeddings")
        rope_len = max(pos)
    return DiTDims(
        num_layers=max(blocks) + 1 if blocks else 0, num_heads=hidden // head_dim, head_dim=head_dim,
        text_dim=get("transformer_blocks.0.attn2.to_k.weight")[1],
        adaln_lora_dim=get("norm_out.linear_1.weight")[0], ffn_dim=get("transformer_blocks.0.ff.net.0.proj.weight")[0],
        patch_in=get("patch_embed.proj.weight")[1], patch_out=get("proj_out.weight")[0], pos_emb=pos, rope_len=rope_len,
    )
