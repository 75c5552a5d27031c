"""The layers a LoRA may change, read from a base model's weight headers.

A LoRA names layers of one model (keys) and holds low-rank factors whose
shapes must fit those layers. ``layer_table`` lists every linear and
convolution layer of a base model's UNet or transformer and text encoders,
with its in/out features and kernel, from the ``.safetensors`` headers of the
model's folder (or Hub snapshot): only the JSON headers are read, no weights,
no torch, so it runs in the web process within its budget; it is cached per
model source. ``lora_layer_problem`` then checks a LoRA's header against that
table: each key must name a layer of the table, each factor's shape must fit
it (``lora_down``/``lora_A`` rank x in features (x kernel), ``lora_up``/
``lora_B`` out features x rank, the same rank for both, at most the layer's
larger side) and ``alpha`` must be one number.

Key formats: diffusers/PEFT (``unet.``, ``text_encoder.``, ``text_encoder_2.``,
``transformer.``, ``diffusion_model.``, with or without ``base_model.model.``)
and kohya (``lora_unet_``, ``lora_te_``, ``lora_te1_``, ``lora_te2_``,
``lora_transformer_``: the module path with ``_`` for ``.``). Kohya's scripts
name Stable Diffusion XL's UNet in the original (LDM) naming
(``input_blocks.4.1...``) and FLUX.1's transformer in BFL's
(``double_blocks.0.img_attn.qkv``, whose fused q, k, v projection is as wide
as diffusers' three together): the table holds those names too, derived from
the diffusers ones.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .families import file_safetensors_header

# The model parts a LoRA may target, as the folders of a diffusers model.
DENOISER_PARTS = ("unet", "transformer")
TEXT_ENCODER_PARTS = ("text_encoder", "text_encoder_2")
_WEIGHT_FILES = ("diffusion_pytorch_model", "model")
_CLIP_ROOT = "text_model."


@dataclass(frozen=True)
class LayerMismatch:
    """Why a LoRA does not fit a model: ``code`` is ``unknown_layer`` (a key
    that names no layer) or ``bad_shape`` (a factor that does not fit its
    layer); ``reason`` names the key and what was expected."""

    code: str
    reason: str


@dataclass(frozen=True)
class Layer:
    """A linear (kernel 1 x 1) or convolution layer's weight shape."""

    out_features: int
    in_features: int
    kernel: tuple[int, int] = (1, 1)

    def describe(self) -> str:
        if self.kernel == (1, 1):
            return f"{self.in_features} in, {self.out_features} out features"
        return (
            f"{self.in_features} in, {self.out_features} out channels, "
            f"{self.kernel[0]}x{self.kernel[1]} kernel"
        )


# part -> module path (dotted) -> layer; the kohya lookup uses the same
# paths with ``_`` for ``.``.
LayerTable = dict[str, dict[str, Layer]]


def layer_table(folder: Path) -> LayerTable | None:
    """The LoRA-able layers of the diffusers model in ``folder`` (a folder or a
    Hub snapshot), or None when it holds no ``.safetensors`` weights for its
    denoiser (``.bin`` weights, say: their shapes cannot be read without
    unpickling)."""
    folder = Path(folder)
    stamps = tuple(
        (part, _stamp(folder / part))
        for part in (*DENOISER_PARTS, *TEXT_ENCODER_PARTS)
    )
    return _layer_table(folder, stamps)


@lru_cache(maxsize=16)
def _layer_table(folder: Path, stamps: tuple[Any, ...]) -> LayerTable | None:
    table: LayerTable = {}
    for part in (*DENOISER_PARTS, *TEXT_ENCODER_PARTS):
        entries = _part_entries(folder / part)
        if entries is None:
            continue
        layers = {
            name[: -len(".weight")]: layer
            for name, entry in entries.items()
            if name.endswith(".weight") and (layer := _layer(entry)) is not None
        }
        if part == "unet":
            layers.update(_ldm_aliases(layers, _config(folder / part)))
        elif part == "transformer":
            layers.update(_bfl_aliases(layers))
        else:
            # CLIP's layers are named with or without ``text_model.`` (by the
            # weights and by LoRAs alike; PEFT matches the name's end).
            layers.update(
                {
                    name.removeprefix(_CLIP_ROOT)
                    if name.startswith(_CLIP_ROOT)
                    else _CLIP_ROOT + name: layer
                    for name, layer in layers.items()
                }
            )
        table[part] = layers
    if not any(part in table for part in DENOISER_PARTS):
        return None
    return table


def lora_layer_problem(
    header: Mapping[str, Any], table: LayerTable
) -> LayerMismatch | None:
    """Why the LoRA of ``header`` (a safetensors header's tensor entries) does
    not fit the layers of ``table``, naming the first bad key and what was
    expected; None when every key fits."""
    ranks: dict[tuple[str, str], tuple[int, str]] = {}
    for key in sorted(header):
        entry = header[key]
        found = _parse_key(key, table)
        if isinstance(found, str):
            return LayerMismatch("unknown_layer", found)
        part, module, role = found
        layer = table[part][module]
        shape = [int(dimension) for dimension in entry["shape"]]
        problem, rank = _shape_problem(role, shape, layer)
        if problem:
            return LayerMismatch(
                "bad_shape",
                f'the tensor "{key}" has shape {_shape_text(shape)}, but the layer '
                f"{part}.{module} ({layer.describe()}) takes {problem}",
            )
        if rank is None:
            continue
        if rank > max(layer.in_features * math.prod(layer.kernel), layer.out_features):
            return LayerMismatch(
                "bad_shape",
                f'the tensor "{key}" has rank {rank}, more than the layer '
                f"{part}.{module} ({layer.describe()}) has features",
            )
        earlier = ranks.setdefault((part, module), (rank, key))
        if earlier[0] != rank:
            return LayerMismatch(
                "bad_shape",
                f'the tensor "{key}" has rank {rank} but "{earlier[1]}" of the same '
                f"layer has rank {earlier[0]}",
            )
    return None


# --- Keys -----------------------------------------------------------------------

_ROLES = {
    "lora_down.weight": "down", "lora_A.weight": "down", "lora.down.weight": "down",
    "lora_up.weight": "up", "lora_B.weight": "up", "lora.up.weight": "up",
    "lora_mid.weight": "mid", "alpha": "alpha", "dora_scale": "magnitude",
    "lora_magnitude_vector": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",
}  # fmt: skip
_ROLE_SUFFIX = re.compile(
    r"\.(" + "|".join(re.escape(suffix) for suffix in _ROLES) + r")$"
)
_DIFFUSERS_PREFIX = re.compile(
    r"(?:base_model\.model\.)?(unet|text_encoder_2|text_encoder|transformer"
    r"|diffusion_model)\."
)
_KOHYA_PREFIX = re.compile(r"lora_(unet|te1|te2|te|transformer)_")
_KOHYA_PARTS = {
    "te": "text_encoder",
    "te1": "text_encoder",
    "te2": "text_encoder_2",
}


def _parse_key(key: str, table: LayerTable) -> tuple[str, str, str] | str:
    """(part, module path, role) of a LoRA key, or why it names no layer."""
    suffix = _ROLE_SUFFIX.search(key)
    if suffix is None:
        return (
            f'the tensor "{key}" is no LoRA factor (its name should end in '
            "lora_A/lora_B/lora_down/lora_up .weight or alpha)"
        )
    role, stem = _ROLES[suffix[1]], key[: suffix.start()]
    denoiser = next(part for part in DENOISER_PARTS if part in table)
    diffusers = _DIFFUSERS_PREFIX.match(stem)
    kohya = _KOHYA_PREFIX.match(stem)
    if diffusers is not None:
        part = diffusers[1]
        part = denoiser if part in ("diffusion_model", *DENOISER_PARTS) else part
        module = stem[diffusers.end() :]
    elif kohya is not None:
        part = _KOHYA_PARTS.get(kohya[1], denoiser)
        module = _underscored(part, table).get(stem[kohya.end() :], "")
    else:
        return (
            f'the tensor "{key}" names no model part (kohya lora_unet_/lora_te_ '
            "or diffusers unet./text_encoder./transformer. keys)"
        )
    layers = table.get(part)
    if layers is None:
        return (
            f'the tensor "{key}" is for the {part}, which this model does not have '
            f"(its parts: {', '.join(table)})"
        )
    if module not in layers:
        return (
            f'the tensor "{key}" names no layer of the model\'s {part} (it has '
            f"{len(layers)} linear and convolution layers, such as "
            f"{next(iter(layers))})"
        )
    return part, module, role


def _underscored(part: str, table: LayerTable) -> dict[str, str]:
    layers = table.get(part, {})
    return _underscored_names(id(layers), tuple(layers))


@lru_cache(maxsize=64)
def _underscored_names(_: int, names: tuple[str, ...]) -> dict[str, str]:
    return {name.replace(".", "_"): name for name in names}


def _shape_problem(
    role: str, shape: list[int], layer: Layer
) -> tuple[str | None, int | None]:
    """What ``role``'s tensor of ``layer`` should be when ``shape`` is not it
    (None when it fits), and the rank the tensor says."""
    kernels = {(1, 1), layer.kernel}
    if role == "alpha":
        return (None if math.prod(shape) == 1 else "one number as alpha"), None
    if role == "magnitude":
        sizes = {layer.out_features, layer.in_features}
        return (None if math.prod(shape) in sizes else "a vector of its features"), None
    if role == "down":
        fits = len(shape) in (2, 4) and shape[1] == layer.in_features
        fits = fits and (len(shape) == 2 or tuple(shape[2:]) in kernels)
        expected = f"rank x {layer.in_features}"
        if layer.kernel != (1, 1):
            expected += f" (x {layer.kernel[0]} x {layer.kernel[1]})"
        return (None if fits else expected), shape[0] if shape else None
    if role == "up":
        fits = len(shape) in (2, 4) and shape[0] == layer.out_features
        fits = fits and (len(shape) == 2 or tuple(shape[2:]) == (1, 1))
        rank = shape[1] if len(shape) > 1 else None
        return (None if fits else f"{layer.out_features} x rank"), rank
    # LoCon's Tucker core: rank x rank x kernel.
    fits = len(shape) == 4 and shape[0] == shape[1] and tuple(shape[2:]) in kernels
    return (None if fits else "rank x rank x kernel as its mid factor"), None


def _shape_text(shape: list[int]) -> str:
    return "x".join(str(dimension) for dimension in shape) or "scalar"


# --- Headers --------------------------------------------------------------------


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """The part's weight files with their sizes and times: a changed model is
    read again."""
    if not folder.is_dir():
        return ()
    stamps = []
    for path in sorted(folder.glob("*.safetensors*")):
        stat = path.stat()
        stamps.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _part_entries(folder: Path) -> dict[str, Any] | None:
    """Every tensor entry of a model part's safetensors files (one, or the
    shards its index names); None when it has none."""
    for stem in _WEIGHT_FILES:
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return file_safetensors_header(single)
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            entries: dict[str, Any] = {}
            for shard in sorted(set(weight_map.values())):
                entries.update(file_safetensors_header(folder / Path(shard).name))
            return entries
    return None


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _layer(entry: Any) -> Layer | None:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list):
        return None
    if len(shape) == 2:
        return Layer(int(shape[0]), int(shape[1]))
    if len(shape) == 4:
        return Layer(int(shape[0]), int(shape[1]), (int(shape[2]), int(shape[3])))
    return None


# --- Original names -------------------------------------------------------------

_LDM_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_LDM_GLOBAL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_out": "out.2",
}
_BLOCK = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)"
    r"\.(\d+)\.(.+)"
)
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _ldm_aliases(layers: dict[str, Layer], config: dict[str, Any]) -> dict[str, Layer]:
    """The UNet's layers under their original (LDM) names, which kohya's SDXL
    LoRAs use (diffusers' ``_maybe_map_sgm_blocks_to_diffusers`` the other way)."""
    per_block = int(config.get("layers_per_block", 2))
    with_attention = {
        index
        for index, kind in enumerate(config.get("up_block_types", ()))
        if "CrossAttn" in kind
    }
    aliases = {}
    for name, layer in layers.items():
        alias = _LDM_GLOBAL.get(name)
        block, mid = _BLOCK.fullmatch(name), _MID.fullmatch(name)
        if block is not None:
            side, number, kind, index, rest = block.groups()
            number, index = int(number), int(index)
            rest = _LDM_RESNET.get(rest, rest) if kind == "resnets" else rest
            if side == "down_blocks":
                row = 1 + number * (per_block + 1) + index
                if kind == "downsamplers":
                    row = (number + 1) * (per_block + 1)
                    rest = "op" if rest == "conv" else rest
                column = 1 if kind == "attentions" else 0
            else:
                row = number * (per_block + 1) + index
                column = {"resnets": 0, "attentions": 1}.get(kind)
                if kind == "upsamplers":
                    row = number * (per_block + 1) + per_block
                    column = 2 if number in with_attention else 1
            alias = f"{'input' if side == 'down_blocks' else 'output'}_blocks.{row}"
            alias = f"{alias}.{column}.{rest}"
        elif mid is not None:
            kind, index, rest = mid.groups()
            rest = _LDM_RESNET.get(rest, rest) if kind == "resnets" else rest
            column = 1 if kind == "attentions" else 2 * int(index)
            alias = f"middle_block.{column}.{rest}"
        if alias is not None:
            aliases[alias] = layer
    return aliases


# BFL's name -> the diffusers layers it fuses (their outputs side by side).
_BFL_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
_BFL_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
_BFL_GLOBAL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}


def _bfl_aliases(layers: dict[str, Layer]) -> dict[str, Layer]:
    """A FLUX.1 transformer's layers under BFL's names (kohya's FLUX.1 LoRAs);
    nothing for a transformer of another kind (Qwen-Image's)."""
    if "single_transformer_blocks.0.proj_mlp" not in layers:
        return {}
    aliases = {}
    for bfl, diffusers in _BFL_GLOBAL.items():
        if diffusers in layers:
            aliases[bfl] = layers[diffusers]
    for bfl_block, blocks, fused in (
        ("double_blocks", "transformer_blocks", _BFL_DOUBLE),
        ("single_blocks", "single_transformer_blocks", _BFL_SINGLE),
    ):
        index = 0
        while f"{blocks}.{index}.{fused[next(iter(fused))][0]}" in layers:
            for bfl, parts in fused.items():
                found = [layers.get(f"{blocks}.{index}.{part}") for part in parts]
                if all(found):
                    aliases[f"{bfl_block}.{index}.{bfl}"] = Layer(
                        sum(layer.out_features for layer in found),
                        found[0].in_features,
                    )
            index += 1
    return aliases
