"""Model families: one row per architecture (DESIGN.md decision 10).

A ``Family`` says which diffusers class runs each base method (as diffusers'
``auto_pipeline`` mappings do), how prompts are encoded (which tokenizer and text
encoder pairs, which hidden layer, whether a pooled embedding and the size
micro-conditioning go along), which sizes it takes, where its IP-Adapter lives in
the ``h94/IP-Adapter`` layout, and how its files, ControlNets and LoRAs are
recognised. The engine reads the row; adding a family adds a row (and a tiny
model), not branches.

Detection reads only small files, never weights: a folder's or Hub snapshot's
``model_index.json`` (``_class_name``) and its denoiser's ``config.json``, or the
key names of a single ``.safetensors`` file (its JSON header). What does not
match a row is refused with what was found (``UnknownFamily``).

Whether a ControlNet, IP-Adapter or LoRA fits a model is decided by its own
files too: a ControlNet's ``config.json`` (the same fields as a UNet's), an
IP-Adapter's and a LoRA's tensor names and shapes (from the safetensors header).
Both the family and the cross-attention width (the text encoders' output width,
768 for SD 1.5, 2048 for SDXL) must agree: the width also tells apart models of
one family built at other sizes, such as the tiny models.

Framework free and cheap to import: no torch, no diffusers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EngineError, InvalidRequest
from .vocabulary import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, Method


class UnknownFamily(EngineError):
    """A model whose files match no family row; the message says what was found."""

    code = "unknown_family"


class FamilyMismatch(InvalidRequest):
    """A ControlNet, IP-Adapter or LoRA made for another family (or width)."""

    code = "family_mismatch"


@dataclass(frozen=True)
class IPAdapterLayout:
    """Where a family's IP-Adapter files lie in the ``h94/IP-Adapter`` layout."""

    subfolder: str
    weight_name: str
    face_weight_name: str
    image_encoder_folder: str


@dataclass(frozen=True)
class TextEncoding:
    """How a family's pipelines encode a prompt.

    ``encoders`` pairs each tokenizer attribute of the pipeline with its text
    encoder; their outputs are concatenated along the feature axis.
    ``hidden_layer`` is ``"last"`` (the final layer-normed output, SD 1.5) or
    ``"penultimate"`` (SDXL). ``pooled_from`` names the encoder whose projected
    pooled output also conditions the UNet (None: no pooled embedding).
    """

    encoders: tuple[tuple[str, str], ...]
    hidden_layer: str
    pooled_from: str | None = None


@dataclass(frozen=True)
class LatentRGB:
    """A linear map from a family's latents to RGB, for cheap live previews.

    ``factors`` has one (r, g, b) row per latent channel and ``bias`` is added
    after; the result is in [-1, 1] (AUTOMATIC1111's "Approx cheap": the
    factors below are its ``cheap_approximation`` coefficients). They apply to
    the latents as the denoiser sees them (already times the VAE's scaling
    factor), at 1/8 of the image's size.
    """

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Family:
    """One model architecture the studio serves (see the module docstring)."""

    key: str
    label: str
    pipeline_classes: Mapping[Method, str]
    """Base method -> diffusers pipeline class name."""
    model_index_classes: frozenset[str]
    """``model_index.json`` ``_class_name`` values of this family's folders."""
    addition_embed_type: str | None
    """The UNet's ``addition_embed_type`` (SDXL's ``text_time`` conditioning)."""
    text_encoding: TextEncoding
    size_conditioning: bool
    """Whether the pipelines take SDXL's size micro-conditioning
    (``original_size``, ``target_size``, ``crops_coords_top_left``)."""
    default_size: int
    native_sizes: tuple[tuple[int, int], ...]
    """(width, height) the family was trained at: the sizes to offer first."""
    cross_attention_dim: int
    """The released models' cross-attention width (768, 2048)."""
    single_file_keys: tuple[str, ...]
    """Key prefixes that mark an original-layout single-file checkpoint."""
    default_single_file_config: str
    """The Hub id whose configs describe a single file of this family."""
    lora_text_encoder_prefixes: tuple[str, ...]
    """kohya-ss key prefixes of the text encoder(s) of a LoRA of this family."""
    ip_adapter: IPAdapterLayout
    inpaint_pipeline_class: str
    """The diffusers inpaint class; derived from the base with ``from_pipe``, it
    takes the ordinary 4-channel UNet (the mask is blended in latent space)."""
    denoiser: str = "unet"
    latent_rgb: LatentRGB | None = None
    """The cheap latent-to-RGB preview map (None: no approximate preview)."""
    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    size_multiple: int = SIZE_MULTIPLE

    def __repr__(self) -> str:
        return f"Family({self.key!r})"

    def pipeline_class_name(self, method: Method) -> str:
        """The diffusers class that runs a base method, or a clear error."""
        try:
            return self.pipeline_classes[Method(method)]
        except (KeyError, ValueError):
            bases = ", ".join(m.value for m in self.pipeline_classes)
            raise InvalidRequest(
                f"No {self.label} pipeline runs method {method!r} directly; the "
                f"base methods are {bases} (auto and ip_adapter resolve to one of "
                "them first)."
            ) from None


SD15 = Family(
    key="sd15",
    label="Stable Diffusion 1.5",
    pipeline_classes={
        Method.TEXT: "StableDiffusionPipeline",
        Method.IMG2IMG: "StableDiffusionImg2ImgPipeline",
        Method.CONTROLNET: "StableDiffusionControlNetPipeline",
        Method.HYBRID: "StableDiffusionControlNetImg2ImgPipeline",
    },
    model_index_classes=frozenset(
        {
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
            "StableDiffusionControlNetPipeline",
        }
    ),
    addition_embed_type=None,
    text_encoding=TextEncoding(
        encoders=(("tokenizer", "text_encoder"),), hidden_layer="last"
    ),
    size_conditioning=False,
    default_size=512,
    native_sizes=((512, 512), (512, 768), (768, 512)),
    cross_attention_dim=768,
    single_file_keys=("cond_stage_model.transformer.",),
    default_single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
    lora_text_encoder_prefixes=("lora_te_",),
    ip_adapter=IPAdapterLayout(
        subfolder="models",
        weight_name="ip-adapter_sd15.safetensors",
        face_weight_name="ip-adapter-plus-face_sd15.safetensors",
        image_encoder_folder="models/image_encoder",
    ),
    inpaint_pipeline_class="StableDiffusionInpaintPipeline",
    latent_rgb=LatentRGB(
        factors=(
            (0.298, 0.207, 0.208),
            (0.187, 0.286, 0.173),
            (-0.158, 0.189, 0.264),
            (-0.184, -0.271, -0.473),
        )
    ),
)

SDXL = Family(
    key="sdxl",
    label="Stable Diffusion XL",
    pipeline_classes={
        Method.TEXT: "StableDiffusionXLPipeline",
        Method.IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
        Method.CONTROLNET: "StableDiffusionXLControlNetPipeline",
        Method.HYBRID: "StableDiffusionXLControlNetImg2ImgPipeline",
    },
    model_index_classes=frozenset(
        {
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
            "StableDiffusionXLControlNetPipeline",
        }
    ),
    addition_embed_type="text_time",
    text_encoding=TextEncoding(
        encoders=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
        hidden_layer="penultimate",
        pooled_from="text_encoder_2",
    ),
    size_conditioning=True,
    default_size=1024,
    # SDXL's training buckets (the SDXL report, appendix I).
    native_sizes=(
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
        (1536, 640),
        (640, 1536),
    ),
    cross_attention_dim=2048,
    single_file_keys=("conditioner.embedders.1.",),
    default_single_file_config="stabilityai/stable-diffusion-xl-base-1.0",
    lora_text_encoder_prefixes=("lora_te1_", "lora_te2_"),
    # The ViT-H editions: they share SD 1.5's image encoder (models/image_encoder).
    ip_adapter=IPAdapterLayout(
        subfolder="sdxl_models",
        weight_name="ip-adapter_sdxl_vit-h.safetensors",
        face_weight_name="ip-adapter-plus-face_sdxl_vit-h.safetensors",
        image_encoder_folder="models/image_encoder",
    ),
    inpaint_pipeline_class="StableDiffusionXLInpaintPipeline",
    latent_rgb=LatentRGB(
        factors=(
            (0.3448, 0.4168, 0.4395),
            (-0.1953, -0.0290, 0.0250),
            (0.1074, 0.0886, -0.0163),
            (-0.3730, -0.2499, -0.2088),
        )
    ),
)

FAMILIES: dict[str, Family] = {family.key: family for family in (SD15, SDXL)}
"""Every family the studio serves, by key."""
DEFAULT_FAMILY = SD15


def family(key: str | Family) -> Family:
    """The row of a family key (a ``Family`` is returned as it is)."""
    if isinstance(key, Family):
        return key
    try:
        return FAMILIES[key]
    except KeyError:
        raise UnknownFamily(
            f"Unknown model family {key!r}; the studio serves: {', '.join(FAMILIES)}."
        ) from None


# --- What a model's files say ------------------------------------------------------


@dataclass(frozen=True)
class ModelTraits:
    """What a model's (or a ControlNet's) configs say about its architecture."""

    family: Family
    cross_attention_dim: int
    found: str
    """What the detection read, for messages ("model_index.json: ...")."""


def traits_from_configs(
    model_index: Mapping[str, Any] | None,
    denoiser_config: Mapping[str, Any] | None,
    where: str,
) -> ModelTraits:
    """A model's family from its ``model_index.json`` and denoiser config.

    The class name chooses the row when one lists it; the UNet config must agree
    (SDXL's ``addition_embed_type``). Without a class name the UNet config alone
    decides. Raises ``UnknownFamily`` naming what was found.
    """
    class_name = (model_index or {}).get("_class_name")
    found = []
    if class_name is not None:
        found.append(f"model_index.json _class_name {class_name!r}")
    if denoiser_config is not None:
        found.append(_describe_unet(denoiser_config))
    description = "; ".join(found) or "no model_index.json and no UNet config"
    by_class = [f for f in FAMILIES.values() if class_name in f.model_index_classes]
    if class_name is not None and not by_class:
        raise UnknownFamily(
            f"{where} is not a model family the studio serves ({description}). "
            f"Served: {_served()}."
        )
    if denoiser_config is None:
        if not by_class:
            raise UnknownFamily(
                f"{where}: cannot tell its model family ({description})."
            )
        chosen = by_class[0]
        return ModelTraits(chosen, chosen.cross_attention_dim, description)
    by_unet = unet_family(denoiser_config)
    if by_unet is None or (by_class and by_unet is not by_class[0]):
        raise UnknownFamily(
            f"{where} is not a model family the studio serves ({description}). "
            f"Served: {_served()}."
        )
    return ModelTraits(
        by_unet, int(denoiser_config["cross_attention_dim"]), description
    )


def unet_family(config: Mapping[str, Any]) -> Family | None:
    """The family whose UNet (or ControlNet) has this config, or None."""
    if "cross_attention_dim" not in config:
        return None
    kind = config.get("addition_embed_type")
    matches = [
        f
        for f in FAMILIES.values()
        if f.denoiser == "unet" and f.addition_embed_type == kind
    ]
    return matches[0] if len(matches) == 1 else None


def traits_of_folder(folder: Path, where: str | None = None) -> ModelTraits:
    """Detect the family of a diffusers pipeline folder (or a Hub snapshot)."""
    folder = Path(folder)
    where = where or str(folder)
    model_index = _read_json(folder / "model_index.json")
    denoiser = None
    for row in FAMILIES.values():
        denoiser = _read_json(folder / row.denoiser / "config.json")
        if denoiser is not None:
            break
    return traits_from_configs(model_index, denoiser, where)


def controlnet_traits(config: Mapping[str, Any], where: str) -> ModelTraits:
    """The family of a ControlNet from its ``config.json``."""
    found = _describe_unet(config)
    row = unet_family(config)
    if row is None:
        raise UnknownFamily(f"The ControlNet {where} fits no served family ({found}).")
    return ModelTraits(row, int(config["cross_attention_dim"]), found)


def single_file_family(path: Path) -> Family:
    """The family of an original-layout ``.safetensors`` checkpoint, by its keys."""
    keys = [key for key in file_safetensors_header(path) if key != "__metadata__"]
    for row in FAMILIES.values():
        if any(key.startswith(row.single_file_keys) for key in keys):
            return row
    sample = ", ".join(sorted({key.split(".")[0] for key in keys})[:8]) or "none"
    raise UnknownFamily(
        f"The checkpoint {path} is not a model family the studio serves: none of "
        f"its keys start with {_single_file_markers()} (its top-level key "
        f"prefixes: {sample}). Served: {_served()}."
    )


# --- Adapters: do they fit? ---------------------------------------------------------


def check_controlnet_fits(
    model: ModelTraits, controlnet: ModelTraits, model_name: str, name: str
) -> None:
    """Refuse a ControlNet of another family or width, with the reason."""
    _check_fits("ControlNet", name, controlnet, model, model_name)


def ip_adapter_traits(header: Mapping[str, Any], name: str) -> tuple[int, int]:
    """(cross-attention width, cross-attention layers) of an IP-Adapter file.

    Read from the ``ip_adapter.<n>.to_k_ip.weight`` shapes ([hidden, width]).
    """
    shapes = [
        info["shape"]
        for key, info in header.items()
        if key.startswith("ip_adapter.") and key.endswith("to_k_ip.weight")
    ]
    if not shapes:
        raise FamilyMismatch(
            f"The IP-Adapter {name} holds no ip_adapter.*.to_k_ip weights: it is "
            "not an IP-Adapter in the h94/IP-Adapter layout."
        )
    return int(shapes[0][1]), len(shapes)


def check_ip_adapter_fits(
    model: ModelTraits, adapter: tuple[int, int], model_name: str, name: str
) -> None:
    """Refuse an IP-Adapter made for another cross-attention width."""
    width, layers = adapter
    if width == model.cross_attention_dim:
        return
    layout = model.family.ip_adapter
    raise FamilyMismatch(
        f"The IP-Adapter {name} does not fit model {model_name!r} "
        f"({model.family.label}): it was made for {_family_of_width(width)} "
        f"(cross-attention width {width}, {layers} cross-attention layers); the "
        f"model's width is {model.cross_attention_dim}. Configure its "
        f"{model.family.label} IP-Adapter ({layout.subfolder}/{layout.weight_name} "
        "in h94/IP-Adapter)."
    )


def lora_traits(header: Mapping[str, Any]) -> tuple[Family | None, int | None, str]:
    """(family by key style, cross-attention width, what was found) of a LoRA.

    The key style names the family where text-encoder keys are present (kohya's
    ``lora_te_`` vs ``lora_te1_``/``lora_te2_``, diffusers' ``text_encoder_2.``);
    the width comes from a cross-attention ``to_k`` down projection.
    """
    keys = [key for key in header if key != "__metadata__"]
    by_style, style = None, ""
    for row in FAMILIES.values():
        for prefix in row.lora_text_encoder_prefixes:
            if any(key.startswith(prefix) for key in keys):
                by_style, style = row, f"kohya text-encoder keys {prefix}*"
    if any(key.startswith("text_encoder_2.") for key in keys):
        by_style, style = SDXL, "diffusers text-encoder keys text_encoder_2.*"
    elif by_style is None and any(key.startswith("text_encoder.") for key in keys):
        by_style, style = SD15, "diffusers text-encoder keys text_encoder.* only"
    width = None
    for key in keys:
        if ("attn2_to_k" in key or "attn2.to_k" in key) and (
            "lora_down" in key or "lora_A" in key or "lora.down" in key
        ):
            width = int(header[key]["shape"][-1])
            break
    found = [style] if style else []
    if width is not None:
        found.append(f"cross-attention width {width}")
    return by_style, width, ", ".join(found) or "no text-encoder or attention keys"


def check_lora_fits(
    model: ModelTraits, header: Mapping[str, Any], model_name: str, name: str
) -> None:
    """Refuse a LoRA whose keys or shapes belong to another family or width."""
    by_style, width, found = lora_traits(header)
    if (by_style is None or by_style is model.family) and (
        width is None or width == model.cross_attention_dim
    ):
        return
    made_for = by_style.label if by_style is not None else _family_of_width(width)
    raise FamilyMismatch(
        f"The LoRA {name!r} is for {made_for} ({found}); model {model_name!r} is "
        f"{model.family.label} (cross-attention width "
        f"{model.cross_attention_dim}). Use a LoRA trained for {model.family.label}."
    )


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file's bytes: names, dtypes, shapes.

    Reads no tensor (the format: an 8-byte little-endian length, then JSON).
    """
    if len(data) < 8:
        raise InvalidRequest("Not a .safetensors file: it is shorter than 8 bytes.")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8 or length > 100 * 2**20:
        raise InvalidRequest("Not a .safetensors file: its header length is wrong.")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as error:
        raise InvalidRequest(f"Not a .safetensors file: {error}") from error
    if not isinstance(header, dict):
        raise InvalidRequest("Not a .safetensors file: its header is not an object.")
    return header


def file_safetensors_header(path: Path) -> dict[str, Any]:
    """``safetensors_header`` of a file, reading only its header."""
    return safetensors_header(_header_bytes(path))


# --- Internals ----------------------------------------------------------------------


def _header_bytes(path: Path) -> bytes:
    with Path(path).open("rb") as stream:
        start = stream.read(8)
        if len(start) < 8:
            return start
        (length,) = struct.unpack("<Q", start)
        return start + stream.read(min(length, 100 * 2**20))


def _check_fits(
    what: str, name: str, part: ModelTraits, model: ModelTraits, model_name: str
) -> None:
    if (part.family, part.cross_attention_dim) == (
        model.family,
        model.cross_attention_dim,
    ):
        return
    raise FamilyMismatch(
        f"The {what} {name} is a {part.family.label} {what} (cross-attention width "
        f"{part.cross_attention_dim}); model {model_name!r} is "
        f"{model.family.label} (width {model.cross_attention_dim}). Configure a "
        f"{what} made for {model.family.label} for this model."
    )


def _family_of_width(width: int | None) -> str:
    for row in FAMILIES.values():
        if row.cross_attention_dim == width:
            return row.label
    return f"a model of cross-attention width {width}"


def _describe_unet(config: Mapping[str, Any]) -> str:
    return (
        f"{config.get('_class_name', 'UNet')} cross_attention_dim "
        f"{config.get('cross_attention_dim')!r}, addition_embed_type "
        f"{config.get('addition_embed_type')!r}"
    )


def _served() -> str:
    return ", ".join(f"{row.key} ({row.label})" for row in FAMILIES.values())


def _single_file_markers() -> str:
    return ", ".join(
        f"{marker!r} ({row.key})"
        for row in FAMILIES.values()
        for marker in row.single_file_keys
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
