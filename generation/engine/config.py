"""Engine configuration: which models exist, where they may live, how to run them.

Plain dataclasses with documented defaults (STYLE.md habit 5), filled by the Django
side from settings or by tests directly. Importing this module costs nothing: no
torch, no diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.engine.errors import InvalidConfiguration, InvalidRequest
from generation.engine.families import Family, family
from generation.engine.vocabulary import (
    DEFAULT_QUANTIZATION,
    DEFAULT_SAFETY_POLICY,
    TINY_FLUX_MODEL_KEY,
    TINY_FLUX_MODEL_LABEL,
    TINY_MODEL_KEY,
    TINY_MODEL_LABEL,
    TINY_QWEN_IMAGE_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_LABEL,
    TINY_SDXL_MODEL_KEY,
    TINY_SDXL_MODEL_LABEL,
    ControlType,
    Denoiser,
    Footprint,
    PreviewMethod,
    Quantization,
    SafetyPolicy,
)

# Layout of the built-in tiny model (written by ``tiny_model.write_tiny_model``).
TINY_MARKER_FILE = "TINY_MODEL.json"
TINY_PIPELINE_DIR = "sd15"
TINY_SINGLE_FILE = "sd15.safetensors"
TINY_CONTROLNET_DIR = "controlnet"
TINY_IP_ADAPTER_DIR = "ip-adapter"
TINY_LORA_FILE = "lora/persona.safetensors"
# The tiny SDXL model beside it (``tiny_sdxl.write_tiny_sdxl``); its IP-Adapter
# lies in TINY_IP_ADAPTER_DIR's ``sdxl_models/``, as in h94/IP-Adapter.
TINY_SDXL_PIPELINE_DIR = "sdxl"
TINY_SDXL_SINGLE_FILE = "sdxl.safetensors"
TINY_SDXL_CONTROLNET_DIR = "controlnet-sdxl"
TINY_SDXL_LORA_FILE = "lora/persona-sdxl.safetensors"
# Its refiner (``tiny_sdxl.random_sdxl_refiner``): the second expert of SDXL's
# ensemble of denoisers, configured per model (``ModelSpec.refiner``).
TINY_SDXL_REFINER_DIR = "sdxl-refiner"
# The base's share of the schedule before the refiner takes over (the
# "high_noise_frac" of diffusers' SDXL guide).
DEFAULT_REFINER_SWITCH = 0.8
TINY_FLUX_PIPELINE_DIR = "flux"
TINY_FLUX_LORA_FILE = "lora/persona-flux.safetensors"
TINY_FLUX_KOHYA_LORA_FILE = "lora/persona-flux-kohya.safetensors"
TINY_FLUX_CONTROLNET_DIR = "controlnet-flux"
# Its XLabs-layout IP-Adapter; the image encoder is the tiny SD model's
# (TINY_IP_ADAPTER_DIR/models/image_encoder), as XLabs' is another repo's.
TINY_FLUX_IP_ADAPTER_DIR = "ip-adapter-flux"
TINY_FLUX_SINGLE_FILE = "flux-transformer.safetensors"
TINY_FLUX_BFL_SINGLE_FILE = "flux1-tiny-bfl.safetensors"
# The tiny Qwen-Image model (``tiny_qwen.write_tiny_qwen_image``): one folder in
# the layout of Qwen/Qwen-Image-Edit-2509, and a Qwen-Image LoRA.
TINY_QWEN_PIPELINE_DIR = "qwen-image"
TINY_QWEN_LORA_FILE = "lora/persona-qwen-image.safetensors"


@dataclass
class ModelSpec:
    """A base model the studio serves.

    ``source`` is a Hub id, a local diffusers folder or a single-file
    ``.safetensors`` checkpoint (see ``sources.resolve_source``). ``config`` is only
    read for single-file checkpoints: the diffusers folder or Hub id whose
    component configs describe the checkpoint's architecture (None: the default
    SD 1.5 configs, which must then be in the Hugging Face cache when offline).
    ``tiny`` marks a model whose weights are random (``is_tiny`` asks).

    ``family`` is the model family the configuration declares (a key of
    ``families.FAMILIES``; None: detected from the model's files, see
    ``PipelineRegistry.traits``); a declared family that the files contradict
    is refused. ``controlnets`` and ``ip_adapter``, when given, replace the
    engine-wide ones for this model (an SDXL model next to an SD 1.5 one needs
    its own).

    ``variant`` loads a variant's files (``"fp16"``:
    ``diffusion_pytorch_model.fp16.safetensors``), for repositories that hold
    only those. ``vae`` replaces the model's VAE by another (a Hub id or a
    folder with ``config.json``: ``stabilityai/sd-vae-ft-mse``,
    ``madebyollin/sdxl-vae-fp16-fix`` for SDXL in half precision).

    ``refiner`` (SDXL) names a refiner pipeline (a Hub id or folder:
    ``stabilityai/stable-diffusion-xl-refiner-1.0``, loaded with the model's
    ``variant``); text and img2img jobs then run
    the base to ``refiner_switch`` of the schedule and the refiner the rest.
    """

    key: str
    source: str
    revision: str | None = None
    label: str = ""
    config: str | None = None
    tiny: bool = False
    family: str | None = None
    controlnets: dict[str, Any] | None = None
    ip_adapter: IPAdapterSpec | None = None
    variant: str | None = None
    vae: str | None = None
    refiner: str | None = None
    refiner_switch: float = DEFAULT_REFINER_SWITCH

    def __post_init__(self) -> None:
        if self.family is not None:
            family(self.family)  # an unknown key is refused at configuration
        if not 0.0 < self.refiner_switch < 1.0:
            raise ValueError(
                f"Model {self.key!r}: refiner_switch is the fraction of the "
                f"schedule the base denoises, between 0 and 1 (exclusive); got "
                f"{self.refiner_switch!r}."
            )
        for entry in (self.controlnets or {}).values():
            ControlNetSpec.of(entry)  # a malformed entry is refused here too

    @property
    def is_tiny(self) -> bool:
        """The one test of "is this the tiny model" (its images are noise):
        marked so, or its source lies in a folder the tiny-model writer marked."""
        return self.tiny or is_tiny_model_path(self.source)


def is_tiny_model_path(path: Path | str) -> bool:
    """True when ``path`` is the tiny model's folder or lies inside it."""
    path = Path(path).expanduser()
    for folder in (path, *path.parents):
        marker = folder / TINY_MARKER_FILE
        if marker.is_file():
            try:
                return json.loads(marker.read_text()).get("tiny") is True
            except (OSError, ValueError):
                return False
    return False


def model_catalog(
    models: Mapping[str, str | Mapping[str, Any]], *, tiny_model_dir: Path | str
) -> dict[str, ModelSpec]:
    """The base models a studio serves, from its ``STUDIO_MODELS`` mapping (key ->
    source, or key -> {"source", "revision", "label", "config", "tiny",
    "family", "controlnets", "ip_adapter", "variant", "vae", "refiner",
    "refiner_switch"}); an empty mapping
    serves the built-in tiny models from ``tiny_model_dir`` (SD 1.5, and SDXL
    when it was written)."""
    if not models:
        return tiny_model_specs(Path(tiny_model_dir))
    catalog = {}
    for key, spec in models.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        ip_adapter = spec.get("ip_adapter")
        catalog[key] = ModelSpec(
            key=key,
            source=spec["source"],
            revision=spec.get("revision"),
            label=spec.get("label", key),
            config=spec.get("config"),
            tiny=bool(spec.get("tiny", False)),
            family=spec.get("family"),
            controlnets=spec.get("controlnets"),
            variant=spec.get("variant"),
            vae=spec.get("vae"),
            refiner=spec.get("refiner"),
            refiner_switch=float(spec.get("refiner_switch", DEFAULT_REFINER_SWITCH)),
            ip_adapter=None
            if ip_adapter is None
            else IPAdapterSpec.for_family(spec.get("family"), **ip_adapter),
        )
    return catalog


def tiny_model_specs(root: Path) -> dict[str, ModelSpec]:
    """The tiny models written under ``root``: SD 1.5 always, SDXL, FLUX.1
    Kontext and Qwen-Image if present."""
    root = Path(root)
    specs = [
        ModelSpec(
            key=TINY_MODEL_KEY,
            source=str(root / TINY_PIPELINE_DIR),
            label=TINY_MODEL_LABEL,
            tiny=True,
            family="sd15",
        )
    ]
    if (root / TINY_SDXL_PIPELINE_DIR).is_dir():
        specs.append(
            ModelSpec(
                key=TINY_SDXL_MODEL_KEY,
                source=str(root / TINY_SDXL_PIPELINE_DIR),
                label=TINY_SDXL_MODEL_LABEL,
                tiny=True,
                family="sdxl",
                controlnets=_tiny_controlnets(root / TINY_SDXL_CONTROLNET_DIR),
                ip_adapter=IPAdapterSpec.for_family(
                    "sdxl", source=str(root / TINY_IP_ADAPTER_DIR)
                ),
            )
        )
    # The transformer families' tiny models: FLUX.1's ControlNets and
    # IP-Adapter (Qwen-Image has neither here).
    flux_ip_adapter = IPAdapterSpec.for_family(
        "flux",
        source=str(root / TINY_FLUX_IP_ADAPTER_DIR),
        image_encoder_source=str(root / TINY_IP_ADAPTER_DIR),
        image_encoder_folder="models/image_encoder",
    )
    for folder, key, label, family_key, controlnets, ip_adapter in (
        (
            TINY_FLUX_PIPELINE_DIR,
            TINY_FLUX_MODEL_KEY,
            TINY_FLUX_MODEL_LABEL,
            "flux",
            _tiny_controlnets(root / TINY_FLUX_CONTROLNET_DIR),
            flux_ip_adapter,
        ),
        (
            TINY_QWEN_PIPELINE_DIR,
            TINY_QWEN_IMAGE_MODEL_KEY,
            TINY_QWEN_IMAGE_MODEL_LABEL,
            "qwen-image",
            {},
            None,
        ),
    ):
        if (root / folder).is_dir():
            specs.append(
                ModelSpec(
                    key=key,
                    source=str(root / folder),
                    label=label,
                    tiny=True,
                    family=family_key,
                    controlnets=controlnets,
                    ip_adapter=ip_adapter,
                )
            )
    return {spec.key: spec for spec in specs}


def _tiny_controlnets(folder: Path) -> dict[str, str]:
    return {
        control_type.value: str(folder / control_type.value)
        for control_type in ControlType
    }


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet entry: its source and how to load it.

    ``source`` is a Hub id, a diffusers folder (``config.json``) or a single
    ``.safetensors`` file (``control_v11p_sd15_openpose_fp16.safetensors``, as
    AUTOMATIC1111 and ComfyUI keep them), whose ``config`` (a folder or Hub id
    holding ``config.json``; None: the family's, see
    ``Family.default_controlnet_config``) describes its architecture.
    ``revision`` pins a Hub commit; ``variant`` loads a variant's files
    (``diffusion_pytorch_model.fp16.safetensors``).
    """

    source: str
    revision: str | None = None
    variant: str | None = None
    config: str | None = None

    @classmethod
    def of(cls, entry: str | Mapping[str, Any]) -> ControlNetSpec:
        """A spec from a configuration entry: a source, or a mapping of the
        fields (unknown keys are refused, naming them)."""
        if isinstance(entry, str):
            return cls(source=entry)
        if isinstance(entry, ControlNetSpec):
            return entry
        unknown = set(entry) - {"source", "revision", "variant", "config"}
        if unknown or "source" not in entry:
            raise ValueError(
                f"A ControlNet entry is a source or an object with 'source' and "
                f"optional 'revision', 'variant', 'config'; got {dict(entry)!r}."
            )
        return cls(**entry)


@dataclass
class IPAdapterSpec:
    """Where the IP-Adapter weights live, in the layout of ``h94/IP-Adapter``.

    ``revision`` pins a Hub commit of ``source``; ``variant`` loads the image
    encoder's variant files (``model.fp16.safetensors``).
    ``image_encoder_source`` is where the image encoder lies when it is not in
    ``source`` (FLUX.1's XLabs IP-Adapter uses ``openai/clip-vit-large-
    patch14``); ``image_encoder_folder`` is its folder there ("" for a repo's
    root, as ``subfolder`` may be).
    """

    source: str
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    face_weight_name: str = "ip-adapter-plus-face_sd15.safetensors"
    image_encoder_folder: str = "models/image_encoder"
    revision: str | None = None
    variant: str | None = None
    image_encoder_source: str | None = None

    def weight_file(self, weight_name: str | None = None) -> str:
        """The path of a weights file (the plain one by default) in ``source``."""
        return in_folder(self.subfolder, weight_name or self.weight_name)

    @classmethod
    def for_family(
        cls, family_key: str | Family | None, **values: str
    ) -> IPAdapterSpec:
        """A spec whose unset fields are the family's ``h94/IP-Adapter`` layout
        (SD 1.5's when the family is None). A family without an IP-Adapter
        layout (FLUX.1, Qwen-Image) is refused with the reason."""
        row = family(family_key or "sd15")
        if row.ip_adapter is None:
            raise InvalidRequest(
                f"The studio serves no IP-Adapter for {row.label} models: remove "
                "the model's ip_adapter entry (reference_edit keeps the identity "
                "on this family)."
            )
        return cls(**{**vars(row.ip_adapter), **values})

    def files(self) -> list[str]:
        """The repository's files a job can load: both adapters and the image
        encoder (of its variant), as ``hf download`` names them."""
        weights = f"model.{self.variant}.safetensors" if self.variant else (
            "model.safetensors"
        )
        files = [self.weight_file(), self.weight_file(self.face_weight_name)]
        if self.image_encoder_source is None:  # the encoder lies in this repo
            files += [
                in_folder(self.image_encoder_folder, "config.json"),
                in_folder(self.image_encoder_folder, weights),
            ]
        return files


def in_folder(folder: str, name: str) -> str:
    """``folder/name`` of a repo, or ``name`` where the folder is its root."""
    return f"{folder}/{name}" if folder else name


@dataclass
class PreviewConfig:
    """How the engine makes a run's live previews (``preview.py``) when a caller
    asks for them: ``method`` (``vocabulary.PreviewMethod``), a preview every
    ``every_steps`` denoising steps and at most one per ``min_interval_seconds``;
    ``tiny_autoencoders`` maps a family key to a local ``AutoencoderTiny``
    folder (TAESD) for ``PreviewMethod.TINY_AUTOENCODER``."""

    method: PreviewMethod = PreviewMethod.APPROX
    every_steps: int = 2
    min_interval_seconds: float = 0.5
    tiny_autoencoders: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = _member(PreviewMethod, self.method, "preview method")
        if self.every_steps < 1:
            raise ValueError(
                f"Previews every {self.every_steps} steps: give 1 or more."
            )
        for key in self.tiny_autoencoders:
            row = family(key)  # an unknown family key is refused at configuration
            if row.denoiser is Denoiser.TRANSFORMER:
                raise ValueError(
                    f"No live preview is made for {row.label} models (their "
                    "latents are packed for the transformer): remove "
                    f"{key!r} from the tiny autoencoders."
                )


@dataclass
class EngineConfig(Footprint):
    """Everything the engine needs to know about its models and its device.

    ``controlnets`` maps a ``ControlType`` value to a ControlNet entry: a source
    (Hub id, local folder or single ``.safetensors`` file) or a mapping of
    ``ControlNetSpec``'s fields (``controlnet_spec`` reads either). ``device``
    None picks cuda, then mps, then cpu; ``dtype`` None picks float16 on cuda
    (bfloat16 for a transformer family's model) and float32 elsewhere.
    ``quantization`` quantizes a transformer model's big modules as they load
    (``vocabulary.Quantization``; its library must be installed).
    ``memory_budget_mb`` None never evicts. ``offline`` True (the default) never
    downloads, like ``HF_HUB_OFFLINE=1``, which is honoured as well. The
    footprint switches (the fields of ``vocabulary.Footprint``, keyword-only) are
    applied to every base pipeline when it is loaded.

    ``safety_policy`` says what happens to an output the safety checker flags
    (``vocabulary.SafetyPolicy``; the pipelines themselves never blacken an
    image: the engine runs the checker). ``safety_checker`` is where the checker
    lives, in the diffusers pipeline layout (``safety_checker/`` and
    ``feature_extractor/``; a Hub id such as
    ``stable-diffusion-v1-5/stable-diffusion-v1-5`` or a folder); None: the
    model's own, where its folder or Hub repo has one. So every model, however
    installed and of whatever family, can be checked by one checker.

    With ``compile`` on, ``compile_sizes`` lists the (width, height) the UNet is
    compiled for at a worker's start (empty: each model's native size; another
    size compiles once on first use), ``compile_lora_rank`` is the highest LoRA
    rank swapped in without recompiling, ``compile_backend`` is
    ``torch.compile``'s backend, and ``compile_ip_adapter`` says whether the
    warm-up compiles the IP-Adapter's graphs too (``registry.py``, "Compiled
    UNets").
    """

    models: dict[str, ModelSpec]
    model_roots: list[Path]
    controlnets: dict[str, Any] = field(default_factory=dict)
    ip_adapter: IPAdapterSpec | None = None
    annotators_dir: Path | None = None
    seg_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    memory_budget_mb: int | None = None
    quantization: Quantization = DEFAULT_QUANTIZATION
    offline: bool = True
    safety_policy: SafetyPolicy = DEFAULT_SAFETY_POLICY
    safety_checker: str | None = None
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    compile_sizes: tuple[tuple[int, int], ...] = ()
    compile_lora_rank: int = 64
    compile_backend: str = "inductor"
    compile_ip_adapter: bool = True

    def __post_init__(self) -> None:
        for entry in self.controlnets.values():
            ControlNetSpec.of(entry)
        self.safety_policy = _member(
            SafetyPolicy, self.safety_policy, "safety checker policy"
        )

    def controlnets_for(self, model_key: str | None) -> dict[str, Any]:
        """Control type -> ControlNet entry for one model (its own, else the
        engine-wide ones; None: the engine-wide ones)."""
        spec = None if model_key is None else self.models.get(model_key)
        if spec is not None and spec.controlnets is not None:
            return spec.controlnets
        return self.controlnets

    def controlnet_spec(
        self, control_type: str, model_key: str | None = None
    ) -> ControlNetSpec | None:
        """The ControlNet configured for a control type (of a model), or None."""
        entry = self.controlnets_for(model_key).get(str(control_type))
        return None if entry is None else ControlNetSpec.of(entry)

    def ip_adapter_for(self, model_key: str) -> IPAdapterSpec | None:
        """The IP-Adapter of one model (its own, else the engine-wide one)."""
        spec = self.models.get(model_key)
        if spec is not None and spec.ip_adapter is not None:
            return spec.ip_adapter
        return self.ip_adapter


def _member(terms: type[Any], value: Any, what: str) -> Any:
    """``value`` as a member of the vocabulary enum ``terms``, or a ValueError
    that names the choices."""
    try:
        return terms(value)
    except ValueError:
        choices = ", ".join(member.value for member in terms)
        raise ValueError(
            f"Unknown {what} {value!r}; choose one of: {choices}."
        ) from None


def tiny_engine_config(root: Path) -> EngineConfig:
    """A configuration serving the tiny models written by ``write_tiny_model(root)``
    (the engine-wide ControlNets and IP-Adapter are SD 1.5's; the tiny SDXL model
    carries its own)."""
    root = Path(root)
    return EngineConfig(
        models=tiny_model_specs(root),
        model_roots=[root],
        controlnets=_tiny_controlnets(root / TINY_CONTROLNET_DIR),
        ip_adapter=IPAdapterSpec(source=str(root / TINY_IP_ADAPTER_DIR)),
    )


def engine_config_from_settings(settings: Any) -> EngineConfig:
    """An ``EngineConfig`` from an object holding the studio's ``STUDIO_*``
    settings as attributes (Django's ``settings``; the engine imports no
    Django, so the caller passes it in). The one reading of those settings:
    ``generation.engine_settings`` and ``personas`` (which may import nothing
    of ``generation`` but the engine) both call it.

    With ``STUDIO_MODELS`` empty it serves the tiny model of
    ``STUDIO_TINY_MODEL_DIR``."""
    tiny_model_dir = settings.STUDIO_TINY_MODEL_DIR
    if not settings.STUDIO_MODELS:
        config = tiny_engine_config(Path(tiny_model_dir))
    else:
        config = EngineConfig(
            models=model_catalog(settings.STUDIO_MODELS, tiny_model_dir=tiny_model_dir),
            model_roots=[Path(root) for root in settings.STUDIO_MODEL_ROOTS],
        )
    if settings.STUDIO_CONTROLNETS:
        config.controlnets = dict(settings.STUDIO_CONTROLNETS)
    if settings.STUDIO_IP_ADAPTER:
        config.ip_adapter = IPAdapterSpec(**settings.STUDIO_IP_ADAPTER)
    annotators_dir = settings.STUDIO_ANNOTATORS_DIR
    config.annotators_dir = Path(annotators_dir) if annotators_dir else None
    config.seg_model = settings.STUDIO_SEG_MODEL or None
    config.device = settings.STUDIO_DEVICE or None
    config.dtype = settings.STUDIO_DTYPE or None
    config.quantization = Quantization(settings.STUDIO_QUANTIZATION)
    config.memory_budget_mb = settings.STUDIO_MEMORY_BUDGET_MB or None
    config.safety_policy = SafetyPolicy(settings.STUDIO_SAFETY_CHECKER)
    config.safety_checker = settings.STUDIO_SAFETY_CHECKER_MODEL or None
    # The fields of ``vocabulary.Footprint``, each from the setting it names
    # (tests/engine/test_vocabulary.py keeps the two lists equal).
    config.cpu_offload = settings.STUDIO_CPU_OFFLOAD
    config.sequential_cpu_offload = settings.STUDIO_SEQUENTIAL_CPU_OFFLOAD
    config.attention_slicing = settings.STUDIO_ATTENTION_SLICING
    config.vae_tiling = settings.STUDIO_VAE_TILING
    config.channels_last = settings.STUDIO_CHANNELS_LAST
    config.compile = settings.STUDIO_TORCH_COMPILE
    config.compile_sizes = compile_sizes(settings.STUDIO_COMPILE_SIZES)
    config.compile_lora_rank = settings.STUDIO_COMPILE_LORA_RANK
    config.compile_backend = settings.STUDIO_COMPILE_BACKEND
    config.compile_ip_adapter = settings.STUDIO_COMPILE_IP_ADAPTER
    config.preview = PreviewConfig(
        method=settings.STUDIO_PREVIEW_METHOD,
        every_steps=settings.STUDIO_PREVIEW_EVERY_STEPS,
        min_interval_seconds=settings.STUDIO_PREVIEW_MIN_INTERVAL_MS / 1000,
        tiny_autoencoders=dict(settings.STUDIO_PREVIEW_TINY_AUTOENCODERS),
    )
    return config


def compile_sizes(values: str) -> tuple[tuple[int, int], ...]:
    """``STUDIO_COMPILE_SIZES`` ("512x512,512x768") as (width, height) pairs;
    refuses, naming it, an entry that is not WIDTHxHEIGHT in positive pixels."""
    sizes = []
    for value in filter(None, (part.strip() for part in values.split(","))):
        width, _, height = value.lower().partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise InvalidConfiguration(
                f"STUDIO_COMPILE_SIZES: {value!r} is not WIDTHxHEIGHT (512x512, say)."
            )
        sizes.append((int(width), int(height)))
    return tuple(sizes)
