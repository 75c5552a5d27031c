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

A family's denoiser is a UNet (SD 1.5, SDXL) or a diffusion transformer (FLUX.1,
Qwen-Image): a transformer family is recognised by its ``transformer/config.json``
``_class_name`` and its text width is the transformer's ``joint_attention_dim``
(the width of the text encoder features it attends to, as a UNet's
``cross_attention_dim`` is); it may have no IP-Adapter layout and no inpaint
pipeline (None), and its guidance and multi-reference input are named by the
vocabulary (``Guidance``, ``MultiReference``).

Framework free and cheap to import: no torch, no diffusers.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EngineError, InvalidRequest, SourceRefused
from .vocabulary import (
    MAX_SIZE,
    MIN_SIZE,
    SIZE_MULTIPLE,
    Denoiser,
    Guidance,
    Method,
    ModelFamily,
    MultiReference,
)


class UnknownFamily(EngineError):
    """A model whose files match no family row; the message says what was found."""

    code = "unknown_family"


class FamilyMismatch(InvalidRequest):
    """A ControlNet, IP-Adapter or LoRA made for another family (or width)."""

    code = "family_mismatch"


@dataclass(frozen=True)
class IPAdapterLayout:
    """Where a family's IP-Adapter files lie: the ``h94/IP-Adapter`` layout
    (SD 1.5, SDXL), or XLabs' ``XLabs-AI/flux-ip-adapter`` (FLUX.1: the
    weights at the repo's root, the image encoder in another repo,
    ``image_encoder_source``)."""

    subfolder: str
    weight_name: str
    face_weight_name: str
    image_encoder_folder: str
    image_encoder_source: str | None = None


@dataclass(frozen=True)
class TextEncoding:
    """How a family's pipelines encode a prompt.

    ``encoders`` pairs each tokenizer attribute of the pipeline with its text
    encoder; their outputs are concatenated along the feature axis.
    ``hidden_layer`` is ``"last"`` (the final layer-normed output, SD 1.5) or
    ``"penultimate"`` (SDXL). ``pooled_from`` names the encoder whose projected
    pooled output also conditions the UNet (None: no pooled embedding).

    ``chunked``: a prompt longer than the CLIP window is encoded in chunks
    (``prompts``); a family whose sequence comes from a long-context encoder
    (T5 for FLUX.1, Qwen2.5-VL for Qwen-Image) passes the prompt as it is, up to
    ``max_sequence_length`` tokens of that encoder.
    """

    encoders: tuple[tuple[str, str], ...]
    hidden_layer: str
    pooled_from: str | None = None
    chunked: bool = True
    max_sequence_length: int | None = None


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
class BlockLayout:
    """A diffusion transformer's ``transformer_blocks``: how many, and the width
    of their attention (``num_attention_heads * attention_head_dim``).

    A LoRA on the attention alone (``to_q``, ``to_k``, ``to_v``, ``to_out``) has
    the same key names on FLUX.1 and Qwen-Image; its block indexes and
    projection shapes tell which it fits."""

    blocks: int
    width: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> BlockLayout | None:
        """The layout a transformer's ``config.json`` describes (None: not one)."""
        try:
            width = int(config["num_attention_heads"]) * int(
                config["attention_head_dim"]
            )
            return cls(int(config["num_layers"]), width)
        except (KeyError, TypeError, ValueError):
            return None


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
    """The UNet's ``addition_embed_type`` (SDXL's ``text_time`` conditioning);
    None for a transformer family."""
    text_encoding: TextEncoding
    size_conditioning: bool
    """Whether the pipelines take SDXL's size micro-conditioning
    (``original_size``, ``target_size``, ``crops_coords_top_left``)."""
    default_size: int
    native_sizes: tuple[tuple[int, int], ...]
    """(width, height) the family was trained at: the sizes to offer first."""
    cross_attention_dim: int
    """The released models' text width: a UNet's cross-attention width (768,
    2048), a transformer's ``joint_attention_dim`` (4096 for FLUX.1)."""
    single_file_keys: tuple[str, ...]
    """Key prefixes that mark an original-layout single-file checkpoint."""
    default_single_file_config: str
    """The Hub id whose configs describe a single file of this family."""
    default_controlnet_config: str | None
    """The Hub id whose ``config.json`` describes a single-file ControlNet of
    this family (the one diffusers' ``from_single_file`` would fetch); None: the
    studio serves no ControlNet for the family."""
    lora_text_encoder_prefixes: tuple[str, ...]
    """kohya-ss key prefixes of the text encoder(s) of a LoRA of this family."""
    ip_adapter: IPAdapterLayout | None
    """None: the studio serves no IP-Adapter for the family."""
    inpaint_pipeline_class: str | None
    """The diffusers inpaint class; derived from the base with ``from_pipe``, it
    takes the ordinary 4-channel UNet (the mask is blended in latent space).
    None: the family has no inpaint (nor face detailer) here."""
    refiner_pipeline_class: str | None = None
    """The class of the family's refiner, the second expert of an "ensemble of
    expert denoisers" (diffusers' SDXL guide): the base denoises the first
    part of the schedule (``denoising_end``), the refiner the rest from the
    base's latents (``denoising_start``). None: the family has no refiner."""
    refiner_text_encoding: TextEncoding | None = None
    """How the refiner encodes a prompt (SDXL's: the second encoder alone,
    OpenCLIP ViT-bigG, penultimate layer, its pooled projection), so that a
    prompt longer than the window is chunked for it as for the base."""
    denoiser: Denoiser = Denoiser.UNET
    """The denoising network, also the pipeline attribute and folder holding it."""
    denoiser_classes: frozenset[str] = frozenset()
    """A transformer family's ``transformer/config.json`` ``_class_name`` values
    (a UNet family is told by its UNet config's fields instead)."""
    guidance: Guidance = Guidance.CFG
    multi_reference: MultiReference | None = None
    """How ``reference_edit`` hands over several references (None: no
    reference editing)."""
    lora_key_markers: tuple[str, ...] = ()
    """Substrings of LoRA tensor names that only this family's denoiser has
    (in diffusers', kohya's or the original layout)."""
    block_layout: BlockLayout | None = None
    """The released transformer's blocks (None: a UNet family)."""
    quantized_components: tuple[str, ...] = ("transformer", "text_encoder_2")
    """A transformer family's big modules, which ``STUDIO_QUANTIZATION``
    quantizes (FLUX.1's transformer and T5-XXL)."""
    scheduler_names: tuple[str, ...] = ()
    """The schedulers a request may name; empty: Stable Diffusion's (diffusers'
    ``KarrasDiffusionSchedulers``, ``plan.SCHEDULER_NAMES``)."""
    latent_rgb: LatentRGB | None = None
    """The cheap latent-to-RGB preview map (None: no approximate preview)."""
    ip_adapter_methods: frozenset[Method] | None = None
    """The base methods whose pipeline takes an IP-Adapter (None: all)."""
    controlnet_class: str = "ControlNetModel"
    """The diffusers class of the family's ControlNets (its ``config.json``
    ``_class_name``: a transformer family's ControlNet is told by it)."""
    multi_controlnet_class: str = "MultiControlNetModel"
    """The wrapper that runs several of them in one call."""
    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    size_multiple: int = SIZE_MULTIPLE

    @property
    def width_key(self) -> str:
        """The denoiser config field holding the text width."""
        if self.denoiser is Denoiser.TRANSFORMER:
            return "joint_attention_dim"
        return "cross_attention_dim"

    @property
    def width_name(self) -> str:
        """The text width's name in messages."""
        if self.denoiser is Denoiser.TRANSFORMER:
            return "text width (joint_attention_dim)"
        return "cross-attention width"

    @property
    def methods(self) -> frozenset[Method]:
        """The base methods this family's pipelines run."""
        return frozenset(self.pipeline_classes)

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
    key=ModelFamily.SD15.value,
    label=ModelFamily.SD15.label,
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
    default_controlnet_config="lllyasviel/control_v11p_sd15_canny",
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
    key=ModelFamily.SDXL.value,
    label=ModelFamily.SDXL.label,
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
    default_controlnet_config="diffusers/controlnet-canny-sdxl-1.0",
    lora_text_encoder_prefixes=("lora_te1_", "lora_te2_"),
    # The ViT-H editions: they share SD 1.5's image encoder (models/image_encoder).
    ip_adapter=IPAdapterLayout(
        subfolder="sdxl_models",
        weight_name="ip-adapter_sdxl_vit-h.safetensors",
        face_weight_name="ip-adapter-plus-face_sdxl_vit-h.safetensors",
        image_encoder_folder="models/image_encoder",
    ),
    inpaint_pipeline_class="StableDiffusionXLInpaintPipeline",
    refiner_pipeline_class="StableDiffusionXLImg2ImgPipeline",
    # stable-diffusion-xl-refiner-1.0 has no text_encoder: only the second one.
    refiner_text_encoding=TextEncoding(
        encoders=(("tokenizer_2", "text_encoder_2"),),
        hidden_layer="penultimate",
        pooled_from="text_encoder_2",
    ),
    latent_rgb=LatentRGB(
        factors=(
            (0.3448, 0.4168, 0.4395),
            (-0.1953, -0.0290, 0.0250),
            (0.1074, 0.0886, -0.0163),
            (-0.3730, -0.2499, -0.2088),
        )
    ),
)

FLUX = Family(
    key=ModelFamily.FLUX.value,
    label=ModelFamily.FLUX.label,
    pipeline_classes={
        Method.TEXT: "FluxPipeline",
        Method.IMG2IMG: "FluxImg2ImgPipeline",
        Method.CONTROLNET: "FluxControlNetPipeline",
        Method.HYBRID: "FluxControlNetImg2ImgPipeline",
        Method.REFERENCE_EDIT: "FluxKontextPipeline",
    },
    # FLUX.1 [dev], [schnell] and Kontext [dev] folders (the same components).
    model_index_classes=frozenset(
        {"FluxPipeline", "FluxImg2ImgPipeline", "FluxKontextPipeline"}
    ),
    addition_embed_type=None,
    # CLIP-L gives the pooled embedding, T5-XXL the sequence (512 tokens).
    text_encoding=TextEncoding(
        encoders=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
        hidden_layer="last",
        pooled_from="text_encoder",
        chunked=False,
        max_sequence_length=512,
    ),
    size_conditioning=False,
    default_size=1024,
    # Kontext's preferred resolutions of about one megapixel (a selection, as
    # diffusers' PREFERRED_KONTEXT_RESOLUTIONS lists them).
    native_sizes=(
        (1024, 1024),
        (1184, 880),
        (880, 1184),
        (1248, 832),
        (832, 1248),
        (1392, 752),
        (752, 1392),
    ),
    cross_attention_dim=4096,
    # A transformer alone, as BFL and ComfyUI publish flux1-kontext-dev.
    # safetensors (BFL's names, bare or under ComfyUI's model.diffusion_model.),
    # or saved from diffusers as one file; the other components come from the
    # model's config folder.
    single_file_keys=(
        "double_blocks.",
        "model.diffusion_model.double_blocks.",
        "single_transformer_blocks.",
    ),
    default_single_file_config="black-forest-labs/FLUX.1-Kontext-dev",
    default_controlnet_config=None,
    lora_text_encoder_prefixes=(),
    # XLabs' IP-Adapter (diffusers' FluxIPAdapterMixin): one weights file (no
    # plus-face edition: a face crop goes through the same one) and CLIP
    # ViT-L/14 as its image encoder.
    ip_adapter=IPAdapterLayout(
        subfolder="",
        weight_name="ip_adapter.safetensors",
        face_weight_name="ip_adapter.safetensors",
        image_encoder_folder="",
        image_encoder_source="openai/clip-vit-large-patch14",
    ),
    # FluxControlNetImg2ImgPipeline has no FluxIPAdapterMixin.
    ip_adapter_methods=frozenset(
        {Method.TEXT, Method.IMG2IMG, Method.CONTROLNET, Method.REFERENCE_EDIT}
    ),
    inpaint_pipeline_class=None,
    denoiser=Denoiser.TRANSFORMER,
    denoiser_classes=frozenset({"FluxTransformer2DModel"}),
    guidance=Guidance.DISTILLED,
    multi_reference=MultiReference.STITCH,
    # diffusers' names (single_transformer_blocks, ff_context), kohya's and the
    # original ones (double_blocks, single_blocks).
    lora_key_markers=(
        "single_transformer_blocks",
        "ff_context",
        "double_blocks",
        "single_blocks",
    ),
    # FLUX.1's 19 double-stream blocks (its 38 single ones have their own name).
    block_layout=BlockLayout(blocks=19, width=3072),
    scheduler_names=("FlowMatchEulerDiscreteScheduler",),
    size_multiple=16,
    controlnet_class="FluxControlNetModel",
    multi_controlnet_class="FluxMultiControlNetModel",
)

QWEN_IMAGE = Family(
    key=ModelFamily.QWEN_IMAGE.value,
    label=ModelFamily.QWEN_IMAGE.label,
    pipeline_classes={
        Method.TEXT: "QwenImagePipeline",
        Method.REFERENCE_EDIT: "QwenImageEditPlusPipeline",
    },
    # Qwen/Qwen-Image (text) and Qwen/Qwen-Image-Edit-2509 (1-3 references);
    # both share the transformer class, the VAE and the Qwen2.5-VL encoder.
    model_index_classes=frozenset({"QwenImagePipeline", "QwenImageEditPlusPipeline"}),
    addition_embed_type=None,
    # Qwen2.5-VL's last hidden state, its chat template's system prompt dropped
    # by the pipelines themselves; no pooled embedding.
    text_encoding=TextEncoding(
        encoders=(("tokenizer", "text_encoder"),),
        hidden_layer="last",
        chunked=False,
        max_sequence_length=512,
    ),
    size_conditioning=False,
    default_size=1024,
    # About one megapixel in steps of 32, as QwenImageEditPlusPipeline sizes its
    # output by default (calculate_dimensions(1024 * 1024, ratio)): 1:1, 4:3,
    # 3:2 and 16:9 each way.
    native_sizes=(
        (1024, 1024),
        (1184, 896),
        (896, 1184),
        (1248, 832),
        (832, 1248),
        (1376, 768),
        (768, 1376),
    ),
    cross_attention_dim=3584,
    single_file_keys=(),
    default_single_file_config="Qwen/Qwen-Image-Edit-2509",
    default_controlnet_config=None,
    lora_text_encoder_prefixes=(),
    ip_adapter=None,
    inpaint_pipeline_class=None,
    denoiser=Denoiser.TRANSFORMER,
    denoiser_classes=frozenset({"QwenImageTransformer2DModel"}),
    guidance=Guidance.TRUE_CFG,
    multi_reference=MultiReference.NATIVE,
    # The image and text streams' MLPs and modulations of a Qwen-Image block, in
    # diffusers' and ComfyUI's layout and kohya/musubi-tuner's (underscores).
    # FLUX.1's original blocks have img_mlp and img_mod too, but as img_mlp.0
    # and img_mod.lin: these names are Qwen-Image's alone.
    lora_key_markers=(
        "img_mlp.net",
        "txt_mlp.net",
        "img_mod.1",
        "txt_mod.1",
        "img_mlp_net",
        "txt_mlp_net",
        "img_mod_1",
        "txt_mod_1",
    ),
    block_layout=BlockLayout(blocks=60, width=3072),
    # The 20 B transformer and Qwen2.5-VL-7B (its text_encoder).
    quantized_components=("transformer", "text_encoder"),
    # Its pipelines pass flow-matching sigmas (and a resolution shift, mu).
    scheduler_names=("FlowMatchEulerDiscreteScheduler",),
    # The VAE downsamples by 8 and the transformer packs 2 x 2 latent patches.
    size_multiple=16,
)

FAMILIES: dict[str, Family] = {
    row.key: row
    for row in (
        SD15,
        SDXL,
        FLUX,
        QWEN_IMAGE,
    )
}
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
    pipeline_class: str | None = None
    """The pipeline class its ``model_index.json`` names (None: a single file or
    a folder without one): which of the family's pipelines its weights were
    made for (``check_model_runs``)."""
    block_layout: BlockLayout | None = None
    """A transformer model's own blocks, from its config (None: a UNet, or not
    known: the family's released layout stands in)."""


def traits_from_configs(
    model_index: Mapping[str, Any] | None,
    denoiser_config: Mapping[str, Any] | None,
    where: str,
) -> ModelTraits:
    """A model's family from its ``model_index.json`` and denoiser config.

    The class name chooses the row when one lists it; the denoiser config must
    agree (SDXL's ``addition_embed_type``, a transformer's ``_class_name``).
    Without a class name the denoiser config alone decides. Raises
    ``UnknownFamily`` naming what was found.
    """
    class_name = (model_index or {}).get("_class_name")
    found = []
    if class_name is not None:
        found.append(f"model_index.json _class_name {class_name!r}")
    if denoiser_config is not None:
        found.append(_describe_denoiser(denoiser_config))
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
        return ModelTraits(chosen, chosen.cross_attention_dim, description, class_name)
    by_denoiser = denoiser_family(denoiser_config)
    if by_denoiser is None or (by_class and by_denoiser is not by_class[0]):
        raise UnknownFamily(
            f"{where} is not a model family the studio serves ({description}). "
            f"Served: {_served()}."
        )
    return ModelTraits(
        by_denoiser,
        int(denoiser_config[by_denoiser.width_key]),
        description,
        class_name,
        BlockLayout.of(denoiser_config)
        if by_denoiser.denoiser is Denoiser.TRANSFORMER
        else None,
    )


def check_model_runs(model: ModelTraits, method: Method, model_name: str) -> None:
    """Refuse reference_edit on a model of an editing family whose own folder is
    not an editing model: Qwen/Qwen-Image or FLUX.1 [dev] (their
    ``model_index.json`` names the family's text pipeline) were not trained to
    edit, though the edit pipeline would load their weights. A model whose
    folder names no class (a single file) is not refused."""
    row = model.family
    needed = row.pipeline_classes.get(Method(method))
    if method != Method.REFERENCE_EDIT or needed is None:
        return
    if model.pipeline_class in (None, needed):
        return
    raise InvalidRequest(
        f"Model {model_name!r} is not a {row.label} editing model: its "
        f"model_index.json names {model.pipeline_class}, not {needed}, so its "
        f"weights were not trained to edit from references. reference_edit "
        f"needs a {row.label} model whose folder is a {needed} "
        "(docs/models.md); choose another method for this model."
    )


def denoiser_family(config: Mapping[str, Any]) -> Family | None:
    """The family whose denoiser (UNet or transformer) has this config, or None."""
    class_name = config.get("_class_name")
    by_class = [
        row
        for row in FAMILIES.values()
        if row.denoiser is Denoiser.TRANSFORMER and class_name in row.denoiser_classes
    ]
    if by_class:
        row = by_class[0]
        return row if isinstance(config.get(row.width_key), int) else None
    return unet_family(config)


def unet_family(config: Mapping[str, Any]) -> Family | None:
    """The family whose UNet (or ControlNet) has this config, or None."""
    if "cross_attention_dim" not in config:
        return None
    kind = config.get("addition_embed_type")
    matches = [
        f
        for f in FAMILIES.values()
        if f.denoiser is Denoiser.UNET and f.addition_embed_type == kind
    ]
    return matches[0] if len(matches) == 1 else None


def methods_offered(row: Family) -> tuple[Method, ...]:
    """The methods a person may choose for a model of this family, in the
    vocabulary's order: auto, the base methods its pipelines run, and
    ip_adapter where the family has an IP-Adapter layout."""
    return tuple(
        method
        for method in Method
        if method is Method.AUTO
        or method in row.pipeline_classes
        or (method is Method.IP_ADAPTER and row.ip_adapter is not None)
    )


def true_cfg_problem(row: Family) -> str | None:
    """Why ``true_cfg_scale`` means nothing on a family's models, or None where
    it is taken (FLUX.1, Qwen-Image): Stable Diffusion guides with
    ``guidance_scale`` against the negative prompt instead."""
    if row.guidance is not Guidance.CFG:
        return None
    return (
        f"true_cfg_scale is for FLUX.1 and Qwen-Image models; {row.label} uses "
        "guidance_scale with the negative prompt. Remove it."
    )


def families_with(method: Method) -> tuple[Family, ...]:
    """The served families whose pipelines run a base method (``reference_edit``:
    the reference-editing families)."""
    return tuple(row for row in FAMILIES.values() if method in row.pipeline_classes)


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
    """The family of a ControlNet from its ``config.json``: a transformer
    family's by its ``_class_name`` (``FluxControlNetModel``), a UNet family's
    by the UNet fields."""
    found = _describe_denoiser(config)
    class_name = config.get("_class_name")
    by_class = [
        row
        for row in FAMILIES.values()
        if row.denoiser is Denoiser.TRANSFORMER
        and Method.CONTROLNET in row.pipeline_classes
        and row.controlnet_class == class_name
    ]
    row = by_class[0] if by_class else unet_family(config)
    if row is None or not isinstance(config.get(row.width_key), int):
        raise UnknownFamily(f"The ControlNet {where} fits no served family ({found}).")
    return ModelTraits(row, int(config[row.width_key]), found)


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


def controlnet_file_traits(header: Mapping[str, Any], where: str) -> ModelTraits:
    """The family and width of a single-file ControlNet, from its tensor names.

    Both layouts in use are read: the original one (``control_model.`` or no
    prefix: ``input_hint_block``, ``zero_convs``; SDXL's size conditioning is
    ``label_emb``), as in ``control_v11p_sd15_openpose_fp16.safetensors``, and
    the diffusers one saved as one file (``controlnet_cond_embedding``,
    ``add_embedding``), as most SDXL ControlNets are published. The width is a
    cross-attention ``attn2.to_k`` input width.
    """
    keys = [key for key in header if key != "__metadata__"]
    if not any(
        "input_hint_block." in key or "controlnet_cond_embedding." in key
        for key in keys
    ):
        sample = ", ".join(sorted({key.split(".")[0] for key in keys})[:8]) or "none"
        raise UnknownFamily(
            f"{where} is not a ControlNet: it has no input_hint_block.* or "
            f"controlnet_cond_embedding.* tensors (its top-level key prefixes: "
            f"{sample})."
        )
    conditioning = next(
        (
            marker
            for marker in ("label_emb.", "add_embedding.")
            if any(marker in key for key in keys)
        ),
        None,
    )
    widths = [
        int(header[key]["shape"][-1])
        for key in keys
        if key.endswith("attn2.to_k.weight")
    ]
    if conditioning == "label_emb.":
        raise SourceRefused(SDXL_ORIGINAL_CONTROLNET_REFUSAL.format(where=where))
    row = SDXL if conditioning else SD15
    width = widths[0] if widths else row.cross_attention_dim
    found = (
        f"size conditioning {conditioning}*" if conditioning else "no size conditioning"
    ) + f", cross-attention width {width if widths else 'unknown'}"
    return ModelTraits(row, width, found)


SDXL_ORIGINAL_CONTROLNET_REFUSAL = (
    "{where} is an SDXL ControlNet in the original (SGM) key layout "
    "(control_model.*, its size conditioning under label_emb.*), which "
    "diffusers' single-file loader does not convert: its size conditioning "
    "would stay unloaded. Use the ControlNet's diffusers files (a folder or Hub "
    "id with config.json) or a single file in diffusers' key names "
    "(controlnet_cond_embedding.*, add_embedding.*), as SDXL ControlNets are "
    "mostly published (docs/models.md)."
)
"""Why an original-layout SDXL ControlNet file is refused before it loads:
diffusers' ``convert_controlnet_checkpoint`` maps no ``label_emb`` key, so
``from_single_file`` leaves ``add_embedding`` on the meta device and fails
(tests/engine/test_controlnet_files.py shows it)."""


def check_refiner_fits(row: Family, model_key: str) -> str:
    """The refiner class of a model's family, or ``InvalidRequest`` naming the
    model when its family has none."""
    if row.refiner_pipeline_class is None:
        raise InvalidRequest(
            f"Model {model_key!r} ({row.label}) has a refiner configured, but "
            f"{row.label} has no refiner: remove the model's refiner."
        )
    return row.refiner_pipeline_class


# --- Adapters: do they fit? ---------------------------------------------------------


def check_controlnet_fits(
    model: ModelTraits, controlnet: ModelTraits, model_name: str, name: str
) -> None:
    """Refuse a ControlNet of another family or width, with the reason."""
    _check_fits("ControlNet", name, controlnet, model, model_name)


def ip_adapter_traits(header: Mapping[str, Any], name: str) -> tuple[int, int]:
    """(cross-attention width, cross-attention layers) of an IP-Adapter file.

    Read from the ``ip_adapter.<n>.to_k_ip.weight`` shapes ([hidden, width]),
    or XLabs' FLUX.1 ``double_blocks.<n>.processor.ip_adapter_double_stream_
    k_proj.weight`` ([hidden, text width]).
    """
    shapes = [
        info["shape"]
        for key, info in header.items()
        if (key.startswith("ip_adapter.") and key.endswith("to_k_ip.weight"))
        or key.endswith("ip_adapter_double_stream_k_proj.weight")
    ]
    if not shapes:
        raise FamilyMismatch(
            f"The IP-Adapter {name} holds no ip_adapter.*.to_k_ip (nor XLabs "
            "ip_adapter_double_stream_k_proj) weights: it is not an IP-Adapter "
            "in the h94/IP-Adapter or XLabs layout."
        )
    return int(shapes[0][1]), len(shapes)


def check_ip_adapter_fits(
    model: ModelTraits, adapter: tuple[int, int], model_name: str, name: str
) -> None:
    """Refuse an IP-Adapter made for another cross-attention width."""
    width, layers = adapter
    layout = model.family.ip_adapter
    if layout is None:
        raise FamilyMismatch(
            f"The IP-Adapter {name} does not fit model {model_name!r}: the studio "
            f"serves no IP-Adapter for {model.family.label} (its "
            f"{model.family.denoiser.label} has no UNet cross-attention to add "
            "one to). Remove the IP-Adapter settings; reference_edit keeps the "
            "identity on this family."
        )
    if width == model.cross_attention_dim:
        return
    advice = (
        f"Configure its {model.family.label} IP-Adapter ("
        + (
            f"{layout.subfolder}/{layout.weight_name} in h94/IP-Adapter)."
            if layout.subfolder
            else f"{layout.weight_name}, docs/models.md)."
        )
    )
    raise FamilyMismatch(
        f"The IP-Adapter {name} does not fit model {model_name!r} "
        f"({model.family.label}): it was made for {_family_of_width(width)} "
        f"(cross-attention width {width}, {layers} cross-attention layers); the "
        f"model's width is {model.cross_attention_dim}. {advice}"
    )


_UNET_LORA_MARKERS = (
    "down_blocks",
    "up_blocks",
    "mid_block",
    "input_blocks",
    "output_blocks",
    "middle_block",
)
"""Block names of a UNet, in diffusers' and kohya's (and the original) layout."""
_TRANSFORMER_LORA_MARKERS = ("transformer_blocks", "double_blocks", "single_blocks")
"""Block names of a diffusion transformer (inside a UNet's keys only after one
of ``_UNET_LORA_MARKERS``: a UNet's attention has "transformer_blocks" too)."""


def lora_denoiser(header: Mapping[str, Any]) -> tuple[Denoiser | None, str]:
    """(the kind of denoiser a LoRA's keys are for, what was found): UNet keys
    (``down_blocks``...) or transformer keys (``transformer_blocks``,
    ``double_blocks``...) without any UNet block; None for a LoRA of text-encoder
    keys only."""
    keys = [key for key in header if key != "__metadata__"]
    for markers, kind in (
        (_UNET_LORA_MARKERS, Denoiser.UNET),
        (_TRANSFORMER_LORA_MARKERS, Denoiser.TRANSFORMER),
    ):
        hits = sorted({m for m in markers for key in keys if m in key})
        if hits:
            return kind, f"{kind.label} keys ({', '.join(hits)})"
    return None, ""


def lora_traits(header: Mapping[str, Any]) -> tuple[Family | None, int | None, str]:
    """(family by key style, cross-attention width, what was found) of a LoRA.

    A transformer LoRA's family is the one whose ``lora_key_markers`` most of its
    keys hold (None when none or several tie). A UNet LoRA's key style names the
    family where text-encoder keys are present (kohya's ``lora_te_`` vs
    ``lora_te1_``/``lora_te2_``, diffusers' ``text_encoder_2.``); the width comes
    from a cross-attention ``to_k`` down projection.
    """
    keys = [key for key in header if key != "__metadata__"]
    kind, kind_found = lora_denoiser(header)
    if kind is Denoiser.TRANSFORMER:
        counts = {
            row.key: sum(any(m in key for m in row.lora_key_markers) for key in keys)
            for row in FAMILIES.values()
            if row.denoiser is Denoiser.TRANSFORMER
        }
        best = max(counts.values(), default=0)
        winners = [name for name, count in counts.items() if count == best]
        by_marker = FAMILIES[winners[0]] if best and len(winners) == 1 else None
        blocks, width = lora_block_layout(header)
        if by_marker is None:
            by_marker = _family_by_layout(blocks, width)
        return by_marker, None, kind_found + _layout_found(blocks, width)
    by_style, style = None, ""
    unet_rows = [row for row in FAMILIES.values() if row.denoiser is Denoiser.UNET]
    for row in unet_rows:
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
    if kind_found:
        found.append(kind_found)
    return by_style, width, ", ".join(found) or "no text-encoder or attention keys"


def check_lora_fits(
    model: ModelTraits, header: Mapping[str, Any], model_name: str, name: str
) -> None:
    """Refuse a LoRA whose keys or shapes belong to another family or width: a
    UNet LoRA (Stable Diffusion's) on a transformer model (FLUX.1) and the
    reverse, or one of another family of the same kind."""
    by_style, width, found = lora_traits(header)
    kind, _ = lora_denoiser(header)
    own = model.family
    if kind is not None and kind is not own.denoiser:
        made_for = (
            by_style.label
            if by_style is not None
            else _family_of_width(width)
            if width is not None
            else f"a model whose denoiser is a {kind.label}"
        )
        raise FamilyMismatch(
            f"The LoRA {name!r} is for {made_for} ({found}); model "
            f"{model_name!r} is {own.label}, whose denoiser is a "
            f"{own.denoiser.label}: a {kind.label} LoRA does not fit it. Use a "
            f"LoRA trained for {own.label}."
        )
    if (by_style is None or by_style is own) and (
        width is None or width == model.cross_attention_dim
    ):
        if kind is Denoiser.TRANSFORMER:
            _check_lora_layout(model, header, model_name, name, found)
        return
    made_for = by_style.label if by_style is not None else _family_of_width(width)
    raise FamilyMismatch(
        f"The LoRA {name!r} is for {made_for} ({found}); model {model_name!r} is "
        f"{own.label} ({own.width_name} {model.cross_attention_dim}). Use a "
        f"LoRA trained for {own.label}."
    )


_BLOCK_KEY = re.compile(r"(single_)?transformer_blocks[._](\d+)[._]")
_ATTENTION_DOWN_KEY = re.compile(
    r"[._]attn[._]to_[qkv][._]lora(?:_A|_down|\.down)\.weight$"
)


def lora_block_layout(header: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(how many ``transformer_blocks`` a transformer LoRA's keys reach, the
    input width of its attention ``to_q``/``to_k``/``to_v`` down projections),
    in diffusers', ComfyUI's and kohya's key styles; None where its keys say
    nothing. FLUX.1's ``single_transformer_blocks`` are not counted."""
    blocks = width = None
    for key, info in header.items():
        found = _BLOCK_KEY.search(key)
        if key == "__metadata__" or found is None or found[1]:
            continue
        blocks = max(blocks or 0, int(found[2]) + 1)
        if width is None and _ATTENTION_DOWN_KEY.search(key):
            width = int(info["shape"][-1])
    return blocks, width


def _layout_fits(layout: BlockLayout, blocks: int | None, width: int | None) -> bool:
    return (blocks is None or blocks <= layout.blocks) and (
        width is None or width == layout.width
    )


def _family_by_layout(blocks: int | None, width: int | None) -> Family | None:
    """The one transformer family whose released blocks alone hold a LoRA's
    (a LoRA reaching block 19 or further is not FLUX.1's); None if not one."""
    if blocks is None and width is None:
        return None
    fitting = [
        row
        for row in FAMILIES.values()
        if row.block_layout is not None
        and _layout_fits(row.block_layout, blocks, width)
    ]
    return fitting[0] if len(fitting) == 1 else None


def _layout_found(blocks: int | None, width: int | None) -> str:
    parts = [f"transformer_blocks 0-{blocks - 1}"] if blocks else []
    if width is not None:
        parts.append(f"attention width {width}")
    return f"; {', '.join(parts)}" if parts else ""


def _check_lora_layout(
    model: ModelTraits,
    header: Mapping[str, Any],
    model_name: str,
    name: str,
    found: str,
) -> None:
    """Refuse a transformer LoRA whose blocks or attention shapes are not the
    model's own (its config's, else its family's released ones): an
    attention-only LoRA of another family has the same key names."""
    layout = model.block_layout or model.family.block_layout
    blocks, width = lora_block_layout(header)
    if layout is None or _layout_fits(layout, blocks, width):
        return
    own = model.family
    others = [
        row
        for row in FAMILIES.values()
        if row is not own
        and row.block_layout is not None
        and _layout_fits(row.block_layout, blocks, width)
    ]
    made_for = (
        " or ".join(row.label for row in others)
        if others
        else "a transformer of another size"
    )
    raise FamilyMismatch(
        f"The LoRA {name!r} is for {made_for} ({found}); model {model_name!r} is "
        f"{own.label} with {layout.blocks} transformer_blocks of attention width "
        f"{layout.width}, which its layers do not fit. Use a LoRA trained for "
        f"{own.label}."
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


def _describe_denoiser(config: Mapping[str, Any]) -> str:
    class_name = config.get("_class_name")
    transformer = [
        row for row in FAMILIES.values() if class_name in row.denoiser_classes
    ]
    if transformer or "joint_attention_dim" in config:
        return (
            f"{class_name or 'transformer'} joint_attention_dim "
            f"{config.get('joint_attention_dim')!r}"
        )
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
