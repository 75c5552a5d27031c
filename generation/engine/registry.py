"""The pipeline registry: loaded models kept warm and shared (DESIGN.md 3 and 4).

- One base pipeline per model (its family's text pipeline:
  ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``), keyed by source and
  revision (the registry has one dtype and one device). The model's family is
  detected from its files before anything loads (``traits``). Every job's
  pipeline, text, img2img, ControlNet or hybrid, is the family's class for the
  method (``families``), derived from the base with ``from_pipe``, so all of them
  share its UNet, VAE and text encoder(s): deriving copies no weights. The dtype
  is passed explicitly, since ``from_pipe`` otherwise casts the shared modules to
  float32; and when every module already has it (checked once per module
  object), ``from_pipe``'s final ``.to(dtype)`` is skipped (``_derive``): walking
  every submodule to cast nothing was about 90% of a derivation's time.
- Every derived pipeline gets a fresh scheduler built from the base's config (or a
  compatible scheduler class asked for by name), so no scheduler state survives
  a job.
- ControlNets are cached by source, loaded as the family's ControlNet class
  (``FluxControlNetModel`` for FLUX.1); several control types become one
  ``MultiControlNetModel`` (``FluxMultiControlNetModel``). A model's
  ControlNets and IP-Adapter are its own (``ModelSpec.controlnets``,
  ``ip_adapter``) or the engine-wide ones; one made for another family or
  width is refused before loading (``check_fits``).
- IP-Adapter and LoRA change the shared UNet (attention processors, adapter
  layers). ``job_state`` sets them for one job and undoes them afterwards, even
  when the job fails, so that no job changes another's output.
- Base pipelines, ControlNets and the IP-Adapter image encoder share one
  least-recently-used list: after each load, the oldest entries not used by the
  current call are dropped until the parameter bytes fit ``memory_budget_mb``.
- The pipelines are loaded without their own safety checker (which would
  blacken a flagged image silently); ``safety_checker`` gives the checker the
  engine runs itself, the same for every model (``safety.py``).
- Device and dtype default to cuda + float16, else mps, else cpu, in float32;
  both can be overridden. Footprint switches (CPU offload on CUDA, attention
  slicing, VAE tiling, channels-last, ``torch.compile``) apply to every base;
  ``reduce_footprint`` turns the memory savers on after an out-of-memory error.
- SDXL's VAE asks (``force_upcast``) to be cast to float32 around every img2img
  encode. A registry in float32 turns the flag off at load (the cast would be
  to the dtype the VAE has: same pixels), and diffusers' warning on such casts,
  when it names no module to keep in float32, is dropped (``_quiet_casts``):
  nothing in it is for a person to act on.

Compiled UNets (``compile`` on; DESIGN.md decision 3 keeps a worker warm):

- A UNet is compiled once, when its base loads, with ``dynamic=False``: one graph
  per size, not a symbolic one; ``warmup`` compiles each of
  ``EngineConfig.compile_sizes`` (else the native size) at a worker's start, with
  and without the IP-Adapter (plain and plus-face), so the first job finds them.
  Every pipeline class derived from the base shares the compiled UNet; text and
  img2img call it the same way.
- LoRA: before compiling, ``enable_lora_hotswap(target_rank=compile_lora_rank)``
  and a blank adapter (zeros on every attention projection, so it adds exactly
  nothing) make the LoRA layers part of the compiled graph. A job's LoRA is
  swapped into it in place (``hotswap=True``), its scale folded into its up
  weights (a changed scale would be a changed constant, so a recompile), and
  zeroed again afterwards; its text-encoder part (not compiled) is loaded
  beside and deleted. A LoRA of higher rank is refused by the plan; one on
  other layers than attention projections (or with per-layer alphas) when it
  runs, the blank adapter put back. The blank adapter costs its
  matrix products in every job (a few percent of a step at rank 64);
  ``compile_lora_rank`` 0 leaves it out, and every LoRA job then recompiles.
- IP-Adapter: the processors' scale stays 1.0 (each scale would be a graph) and
  the job's scale is folded into the IP value projections (attention is linear
  in its values). Graph guards check the processors' type, not identity, so
  loading the adapter again per job finds the graph compiled at warm-up.
- Still compiled on first use (each once, then cached): a size not in
  ``compile_sizes``, another batch size (images per prompt, guidance on or off),
  another number of IP-Adapter reference images, ControlNet residuals, and a
  transformer family's LoRAs (no blank adapter there).

A registry serves one job at a time: ``pipeline`` and ``job_state`` hold a
re-entrant lock, since the shared UNet cannot carry two jobs' adapters at once.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import inspect
import itertools
import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import diffusers
import safetensors.torch
import torch
from diffusers import ControlNetModel, DiffusionPipeline
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from peft.tuners.lora import LoraLayer
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from generation.engine.config import (
    ControlNetSpec,
    EngineConfig,
    IPAdapterSpec,
    ModelSpec,
    in_folder,
)
from generation.engine.errors import (
    EngineError,
    InvalidRequest,
    ModelNotFound,
    SourceRefused,
)
from generation.engine.face import crop_face
from generation.engine.families import (
    Family,
    FamilyMismatch,
    ModelTraits,
    check_controlnet_fits,
    check_lora_fits,
    check_model_runs,
    check_refiner_fits,
    family,
    safetensors_header,
)
from generation.engine.methods import MethodPlan, pipeline_class
from generation.engine.requests import (
    ControlType,
    IPAdapterInput,
    LoraInput,
    Method,
)
from generation.engine.resize import fit_for_image_encoder
from generation.engine.safety import (
    FEATURE_EXTRACTOR_FOLDER,
    SAFETY_CHECKER_FOLDER,
    flagged_images,
)
from generation.engine.sources import (
    MODEL_CONFIG_FILE,
    ResolvedSource,
    SourceKind,
    check_ip_adapter_file,
    controlnet_traits_of,
    fingerprint,
    load_controlnet,
    load_pipeline,
    load_vae,
    model_fingerprint,
    model_loading,
    model_traits,
    read_config,
    resolve_controlnet,
    resolve_ip_adapter,
    resolve_model,
    resolve_source,
    with_variant,
)
from generation.engine.vocabulary import (
    METHODS_WITH_CONTROL,
    QUANTIZATION_LIBRARIES,
    Denoiser,
    Footprint,
    Quantization,
    SafetyPolicy,
    footprint_of,
)

LORA_ADAPTER_NAME = "studio_lora"
LORA_TEXT_ADAPTER_NAME = "studio_lora_text"
"""A job's text-encoder LoRA where the UNet's is hotswapped (compiled UNets)."""
LORA_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
LORA_UP_SUFFIXES = ("lora_up.weight", "lora.up.weight", "lora_B.weight")
LORA_DOWN_SUFFIXES = ("lora_down.weight", "lora.down.weight", "lora_A.weight")
"""LoRA weight names in kohya, old diffusers and PEFT naming."""
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
"""The layers of a compiled UNet's blank LoRA: those every studio-trained and
most published Stable Diffusion LoRAs change."""
COMPILED_GRAPHS_PER_SIZE = 8
"""Graphs torch may keep per compiled function and declared size (adapter
states, batch sizes, ControlNet residuals) before it stops compiling."""
QUANTIZED_COMPONENTS = ("transformer", "text_encoder_2")
"""A transformer model's big modules, which ``STUDIO_QUANTIZATION`` quantizes,
where the family names none (``Family.quantized_components``: FLUX.1's
transformer and T5-XXL, Qwen-Image's transformer and Qwen2.5-VL)."""
_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def choose_device(requested: str | None = None) -> torch.device:
    """The requested device, else cuda, then mps, then cpu."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(
    requested: str | None, device: torch.device, row: Family | None = None
) -> torch.dtype:
    """The requested dtype, else on CUDA bfloat16 for a transformer family (FLUX.1
    and Qwen-Image are trained and released in bf16; fp16 overflows in them) and
    float16 for the others, and float32 elsewhere."""
    if requested:
        try:
            return _DTYPES[requested.lower()]
        except KeyError:
            raise ValueError(
                f"Unknown dtype {requested!r}: use one of {', '.join(_DTYPES)}."
            ) from None
    if device.type != "cuda":
        return torch.float32
    if row is not None and row.denoiser is Denoiser.TRANSFORMER:
        return torch.bfloat16
    return torch.float16


def _torchao_int8(component: str) -> Any:
    """torchao's int8 weight-only config for one module: diffusers' class for
    the denoiser, transformers' for a text encoder. Both take a torchao config
    object (not a name such as "int8wo"), and their signatures differ, so that
    ``PipelineQuantizationConfig`` refuses one backend name for both."""
    import diffusers
    import transformers
    from torchao.quantization import Int8WeightOnlyConfig

    library = transformers if component.startswith("text_encoder") else diffusers
    return library.TorchAoConfig(Int8WeightOnlyConfig())


def denoiser_of(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The pipeline's UNet or diffusion transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def quantization_config(
    quantization: Quantization, components: Sequence[str] = QUANTIZED_COMPONENTS
) -> Any:
    """diffusers' ``PipelineQuantizationConfig`` for a transformer family's big
    modules (``components``), or None; refuses one whose library is not
    installed."""
    quantization = Quantization(quantization)
    if quantization is Quantization.NONE:
        return None
    library = QUANTIZATION_LIBRARIES[quantization]
    if importlib.util.find_spec(library) is None:
        raise ModelNotFound(
            f"STUDIO_QUANTIZATION={quantization.value} needs the {library} "
            f"library, which is not installed here: install it (pip install "
            f"{library}) or set STUDIO_QUANTIZATION=none."
        )
    from diffusers.quantizers import PipelineQuantizationConfig

    if quantization is Quantization.TORCHAO_INT8:
        return PipelineQuantizationConfig(
            quant_mapping={name: _torchao_int8(name) for name in components}
        )
    backend, kwargs = {
        Quantization.BNB_8BIT: ("bitsandbytes_8bit", {"load_in_8bit": True}),
        Quantization.BNB_4BIT: (
            "bitsandbytes_4bit",
            {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": torch.bfloat16,
            },
        ),
    }[quantization]
    return PipelineQuantizationConfig(
        quant_backend=backend,
        quant_kwargs=kwargs,
        components_to_quantize=list(components),
    )


@dataclass
class _Entry:
    """One loaded model in the least-recently-used list."""

    kind: str  # "base", "controlnet" or "image_encoder"
    label: str
    source: ResolvedSource
    model: Any
    nbytes: int
    load_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class PipelineRegistry:
    """Loads, shares, derives and evicts pipelines for one device (see module doc)."""

    OFFLOAD_DEVICE_TYPES: frozenset[str] = frozenset({"cuda"})
    """The device types CPU offload applies to: it trades speed for memory
    between a GPU and the CPU; where the device is the CPU or shares its memory
    (mps) it would only cost time. (A test class adds the CPU, where diffusers'
    offload hooks run as they would on a GPU.)"""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._device = choose_device(config.device)
        self._dtype = choose_dtype(config.dtype, self._device)
        self._footprint = footprint_of(config)
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()
        self._sources: dict[str, ResolvedSource] = {}
        self._traits: dict[str, ModelTraits] = {}
        self._fingerprints: dict[str, dict[str, Any]] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.RLock()
        # Modules whose floating tensors were all seen in one dtype, and which.
        self._in_dtype: weakref.WeakKeyDictionary[torch.nn.Module, torch.dtype] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def config(self) -> EngineConfig:
        return self._config

    def model_dtype(self, model_key: str) -> torch.dtype:
        """The dtype a model's pipelines run in: the configured one, else its
        family's default on this device (``choose_dtype``)."""
        if self._config.dtype:
            return self._dtype
        try:
            row = self.family(model_key)
        except (ModelNotFound, SourceRefused):
            return self._dtype
        return choose_dtype(None, self._device, row)

    @property
    def footprint(self) -> Footprint:
        """The switches in force (a copy: change them through the config)."""
        return replace(self._footprint)

    # Sources ---------------------------------------------------------------------

    def source(self, model_key: str) -> ResolvedSource:
        """The checked source of a configured model; raises before any loading."""
        if model_key not in self._sources:
            self._sources[model_key] = resolve_model(
                self._spec(model_key), self._config
            )
        return self._sources[model_key]

    def traits(self, model_key: str) -> ModelTraits:
        """A configured model's family and cross-attention width, from its files
        (read once; no weights). Raises ``UnknownFamily`` with what was found."""
        if model_key not in self._traits:
            spec = self._spec(model_key)
            self._traits[model_key] = model_traits(
                self.source(model_key),
                declared=spec.family,
                where=f"Model {model_key!r} ({spec.source})",
            )
        return self._traits[model_key]

    def family(self, model_key: str) -> Family:
        """The family of a configured model (see ``traits``)."""
        return self.traits(model_key).family

    def plan_family(self, model_key: str) -> Family:
        """The family a request for this model is planned with: detected where its
        files are here; else the declared one, else SD 1.5 (a web host may hold
        no weights; the worker, which has them, plans again)."""
        try:
            return self.family(model_key)
        except (ModelNotFound, SourceRefused):
            declared = self._config.models[model_key].family
            return family(declared or "sd15")

    def controlnet_source(
        self, control_type: ControlType, model_key: str | None = None
    ) -> ResolvedSource:
        """The checked source of the ControlNet configured for a control type
        (the model's own ControlNets when ``model_key`` has some)."""
        return resolve_controlnet(
            self._controlnet_spec(control_type, model_key), self._config
        )

    def ip_adapter_fits(self, model_key: str) -> bool:
        """Whether the model's IP-Adapter is installed and made for its family
        (True where the files cannot be read here): ``auto`` adds only one that
        fits, an explicit request for one that does not is refused."""
        if not self.ip_adapter_installed_for(model_key):
            return False
        try:
            model = self.traits(model_key)
            for face_crop in (False, True):
                self._check_ip_adapter_fits(
                    model, model_key, IPAdapterInput(face_crop=face_crop)
                )
        except (ModelNotFound, SourceRefused):
            return True
        except FamilyMismatch:
            return False
        return True

    def controlnet_types(self, model_key: str) -> list[str]:
        """The control types that have a ControlNet configured for a model."""
        return sorted(self._controlnets(model_key))

    def check_fits(
        self, model_key: str, plan: MethodPlan, lora: LoraInput | None = None
    ) -> None:
        """Refuse, with the reason, the plan's ControlNets, IP-Adapter and the
        LoRA where one was made for another family; reads no weights.

        Skipped where the model's files are not here (see ``plan_family``).
        """
        try:
            model = self.traits(model_key)
        except (ModelNotFound, SourceRefused):
            return
        check_model_runs(model, plan.base, model_key)
        for control_type in dict.fromkeys(plan.control_types):
            source = self.controlnet_source(control_type, model_key)
            name = f"{ControlType(control_type).value!r} ({source.location})"
            traits = controlnet_traits_of(source, name)
            if traits is not None:
                check_controlnet_fits(model, traits, model_key, name)
        if plan.ip_adapter is not None:
            self._check_ip_adapter_fits(model, model_key, plan.ip_adapter)
        if lora is not None:
            try:
                header = safetensors_header(lora.weights)
            except InvalidRequest as error:
                raise InvalidRequest(
                    f"The LoRA {lora.name!r} is not a readable .safetensors file: "
                    f"{error}"
                ) from error
            check_lora_fits(model, header, model_key, lora.name)
            if (
                self._footprint.compile
                and self._config.compile_lora_rank > 0
                and model.family.denoiser is Denoiser.UNET
            ):
                check_compiled_lora_rank(header, self._config.compile_lora_rank, lora)

    def fingerprint(self, model_key: str) -> dict[str, Any]:
        """Source, revision and commit or content hash of a model (with its
        variant, external VAE and refiner), for snapshots.

        Computed once per registry: hashing a local model reads all its files.
        """
        spec = self._spec(model_key)
        return model_fingerprint(spec, self._config, self._fingerprint_of)

    def controlnet_fingerprint(
        self, control_type: ControlType, model_key: str | None = None
    ) -> dict[str, Any]:
        """The same for the ControlNet of a control type (of a model), with
        its variant when it has one."""
        source = self.controlnet_source(control_type, model_key)
        variant = self._controlnet_spec(control_type, model_key).variant
        return with_variant(self._fingerprint_of(source), variant)

    def ip_adapter_fingerprint(self, model_key: str | None = None) -> dict[str, Any]:
        """The same for the IP-Adapter of a model (its folder or Hub commit),
        with its variant when it has one."""
        source = self._ip_adapter_source(model_key)
        spec = self._ip_adapter_spec(model_key)
        if source is None or spec is None:
            raise ModelNotFound("No IP-Adapter is installed: configure its weights.")
        return with_variant(self._fingerprint_of(source), spec.variant)

    # Pipelines -------------------------------------------------------------------

    def pipeline(
        self,
        model_key: str,
        method: Method,
        control_types: Sequence[ControlType] = (),
        *,
        scheduler: str | None = None,
    ) -> tuple[DiffusionPipeline, bool]:
        """A pipeline for one job, and whether the base model was already loaded.

        ``method`` is a base method (text, img2img, controlnet, hybrid);
        ``control_types`` lists the ControlNets of controlnet and hybrid, in unit
        order. ``scheduler`` names a diffusers scheduler class compatible with the
        model (None: the model's own). The pipeline is new, with a new scheduler;
        its modules are the base's own objects.
        """
        pipeline_cls = pipeline_class(method, self.family(model_key))
        method = Method(method)
        control_types = [ControlType(t) for t in control_types]
        if (method in METHODS_WITH_CONTROL) != bool(control_types):
            raise InvalidRequest(
                f"The {method.value} method takes "
                + ("at least one" if method in METHODS_WITH_CONTROL else "no")
                + " ControlNet unit."
            )
        with self._lock:
            base_key = self._base_key(model_key)
            pinned = {base_key} | {
                self._controlnet_key(t, model_key) for t in set(control_types)
            }
            base, hit = self._base(model_key, pinned)
            components: dict[str, Any] = {
                "scheduler": self._fresh_scheduler(base, scheduler)
            }
            if control_types:
                controlnets = [
                    self._controlnet(t, pinned, model_key) for t in control_types
                ]
                multi = getattr(
                    diffusers, self.family(model_key).multi_controlnet_class
                )
                components["controlnet"] = (
                    controlnets[0] if len(controlnets) == 1 else multi(controlnets)
                )
            pipe = self._derive(
                pipeline_cls, base, components, self.model_dtype(model_key)
            )
            self._offload(pipe)
            pipe.set_progress_bar_config(disable=True)
            return pipe, hit

    def inpaint_pipeline(
        self, model_key: str, *, scheduler: str | None = None
    ) -> tuple[DiffusionPipeline, bool]:
        """The family's inpaint pipeline for one job, derived from the base with
        ``from_pipe`` (its modules are the base's own, its scheduler new), and
        whether the base was already loaded."""
        row = self.family(model_key)
        if row.inpaint_pipeline_class is None:
            raise InvalidRequest(
                f"The studio has no inpaint (nor face detailer) for {row.label} "
                "models: choose a Stable Diffusion base model for it."
            )
        pipeline_cls = getattr(
            importlib.import_module("diffusers"), row.inpaint_pipeline_class
        )
        with self._lock:
            base_key = self._base_key(model_key)
            base, hit = self._base(model_key, {base_key})
            pipe = pipeline_cls.from_pipe(
                base,
                dtype=self.model_dtype(model_key),
                scheduler=self._fresh_scheduler(base, scheduler),
            )
            self._offload(pipe)
            pipe.set_progress_bar_config(disable=True)
            return pipe, hit

    def refiner(
        self, model_key: str, *, scheduler: str | None = None
    ) -> DiffusionPipeline | None:
        """The model's refiner for one job (its family's refiner class, a new
        scheduler, the loaded modules), or None when it has none. Refused, with
        the reason, for a family without a refiner or a refiner of another
        family. Loaded once, like a base, and in the same LRU list."""
        spec = self._spec(model_key)
        if spec.refiner is None:
            return None
        row = self.family(model_key)
        class_name = check_refiner_fits(row, model_key)
        source = resolve_source(spec.refiner, self._config)
        refiner_family = model_traits(
            source, where=f"The refiner of {model_key!r} ({spec.refiner})"
        ).family
        if refiner_family is not row:
            raise FamilyMismatch(
                f"The refiner {spec.refiner} of model {model_key!r} is a "
                f"{refiner_family.label} model; the model is {row.label}."
            )
        pipeline_cls = getattr(importlib.import_module("diffusers"), class_name)
        with self._lock:
            key = ("refiner", source.location, source.revision or "")
            key += (spec.variant or "",)
            entry = self._entries.get(key)
            if entry is None:
                started = time.perf_counter()
                loaded = load_pipeline(
                    source,
                    pipeline_cls,
                    self.model_dtype(model_key),
                    variant=spec.variant,
                )
                self._apply_footprint(loaded)
                loaded.set_progress_bar_config(disable=True)
                entry = _Entry(
                    kind="refiner",
                    label=f"{model_key} refiner",
                    source=source,
                    model=loaded,
                    nbytes=_parameter_bytes(loaded.components.values()),
                    load_seconds=time.perf_counter() - started,
                )
                self._add(key, entry, {key, self._base_key(model_key)})
            self._entries.move_to_end(key)
            pipe = self._derive(
                pipeline_cls,
                entry.model,
                {"scheduler": self._fresh_scheduler(entry.model, scheduler)},
                self.model_dtype(model_key),
            )
            self._offload(pipe)
            pipe.set_progress_bar_config(disable=True)
            return pipe

    def controlnet(
        self, control_type: ControlType, model_key: str | None = None
    ) -> ControlNetModel:
        """The cached ControlNet of a control type (of a model), loaded on first
        use."""
        with self._lock:
            key = self._controlnet_key(control_type, model_key)
            return self._controlnet(control_type, {key}, model_key)

    def preload(self, model_keys: Sequence[str]) -> None:
        """Load base models ahead of the first job (the worker does this at start),
        each with its refiner when it has one, and hash their weights now rather
        than in the first job's snapshot."""
        for model_key in model_keys:
            with self._lock:
                self._base(model_key, {self._base_key(model_key)})
                if self._spec(model_key).refiner is not None:
                    self.refiner(model_key)
            self.fingerprint(model_key)

    @property
    def warmup_pays(self) -> bool:
        """Whether ``warmup`` saves the first job time: with ``compile`` on, or
        on a GPU (kernel loading and selection); not on a CPU without it."""
        return self._footprint.compile or self._device.type != "cpu"

    def warmup(self, model_key: str) -> None:
        """Run one denoising step per size and adapter state a job may need.

        The first run on a device pays for kernel selection, and with
        ``compile`` on for compilation (module doc, "Compiled UNets"): each of
        ``compile_sizes`` (else the model's native size), without and (where the
        model's IP-Adapter fits, unless ``compile_ip_adapter`` is off) with the
        IP-Adapter, plain and plus-face. A worker does it at start rather than
        in a job. The safety checker is loaded and run once as well.
        """
        pipe, _ = self.pipeline(model_key, Method.TEXT)
        # A blank LoRA takes a job's LoRA path (conversion, hotswap, the text
        # encoders' adapter) once; elsewhere the warm-up runs with no LoRA.
        lora = None
        if _hotswaps(denoiser_of(pipe)):
            weights = safetensors.torch.save(_blank_lora(pipe, 1, text_encoders=True))
            lora = LoraInput(weights=weights, name="warm-up")
        states: list[IPAdapterInput | None] = [None]
        if (
            self._footprint.compile
            and self._config.compile_ip_adapter
            and self.ip_adapter_fits(model_key)
        ):
            states += [IPAdapterInput(face_crop=False), IPAdapterInput()]
        for ip_adapter in states:
            with self.job_state(
                pipe, ip_adapter=ip_adapter, lora=lora, model_key=model_key
            ):
                for width, height in self.warmup_sizes(model_key):
                    extra = {}
                    if ip_adapter is not None:
                        # As the runner prepares it: the face crop's first call
                        # loads dlib's models (a second), the fit's first call
                        # imports torchvision's transforms.
                        reference = Image.new("RGB", (width, height), "grey")
                        if ip_adapter.face_crop:
                            reference, _ = crop_face(reference)
                        extra["ip_adapter_image"] = [
                            [fit_for_image_encoder(reference)]
                        ]
                    image = pipe(
                        "warm-up",
                        num_inference_steps=1,
                        width=width,
                        height=height,
                        generator=torch.Generator("cpu").manual_seed(0),
                        output_type="pil",
                        **extra,
                    ).images[0]
        # The engine checks every output: load the checker and run it once too.
        checker = None
        if self._config.safety_policy is not SafetyPolicy.OFF:
            checker = self.safety_checker(model_key)
        if checker is not None:
            flagged_images(checker[0], checker[1], [image])

    def warmup_sizes(self, model_key: str) -> list[tuple[int, int]]:
        """The (width, height) ``warmup`` runs: ``compile_sizes`` with
        ``compile`` on, where given, else the model's native size."""
        if self._footprint.compile and self._config.compile_sizes:
            return list(self._config.compile_sizes)
        pipe, _ = self._base(model_key, {self._base_key(model_key)})
        unet = getattr(pipe, "unet", None)
        # A UNet knows its native latent size; a Flux pipeline has its default.
        samples = (
            unet.config.sample_size if unet is not None else pipe.default_sample_size
        )
        size = samples * pipe.vae_scale_factor
        return [(size, size)]

    # Per-job state ---------------------------------------------------------------

    @property
    def ip_adapter_installed(self) -> bool:
        """Whether the engine-wide IP-Adapter weights can be found."""
        return self.ip_adapter_installed_for(None)

    def check_ip_adapter_installed(self, model_key: str) -> None:
        """Raise why the model's configured IP-Adapter cannot be found here
        (``ModelNotFound`` naming the repository, revision and missing file);
        nothing when it is found or none is configured."""
        self._ip_adapter_source(model_key)

    def ip_adapter_installed_for(self, model_key: str | None) -> bool:
        """Whether the IP-Adapter weights of a model (None: the engine-wide
        IP-Adapter) can be found."""
        try:
            return self._ip_adapter_source(model_key) is not None
        except EngineError:
            return False

    def image_encoder(
        self, model_key: str | None = None
    ) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor] | None:
        """The IP-Adapter's CLIP image encoder and its preprocessing, or None.

        Loaded once per encoder and shared by every IP-Adapter job (and by
        scoring); ``model_key`` chooses that model's IP-Adapter.
        """
        if not self.ip_adapter_installed_for(model_key):
            return None
        spec = self._ip_adapter_spec(model_key)
        assert spec is not None
        source = self._image_encoder_source(spec, model_key)
        with self._lock:
            key = (
                "image_encoder",
                source.location,
                source.revision or "",
                spec.image_encoder_folder,
                spec.variant or "",
            )
            entry = self._entries.get(key)
            if entry is None:
                entry = self._load_image_encoder(key, source, spec)
            self._entries.move_to_end(key)
            return entry.model, entry.extra["processor"]

    def safety_checker(self, model_key: str) -> tuple[Any, Any, str] | None:
        """The safety checker for a model's outputs (model, image processor,
        source), loaded once; None when none is configured or the model has none.
        """
        source = self._safety_checker_source(model_key)
        if source is None:
            return None
        with self._lock:
            key = ("safety_checker", source.location, source.revision or "")
            entry = self._entries.get(key)
            if entry is None:
                entry = self._load_safety_checker(key, source)
            self._entries.move_to_end(key)
            return entry.model, entry.extra["processor"], source.location

    @contextmanager
    def job_state(
        self,
        pipe: DiffusionPipeline,
        *,
        ip_adapter: IPAdapterInput | None = None,
        lora: LoraInput | None = None,
        model_key: str | None = None,
    ) -> Iterator[DiffusionPipeline]:
        """Set a job's IP-Adapter and LoRA on ``pipe``; undo both on exit.

        ``model_key`` names the model whose IP-Adapter is loaded (None: the
        model whose base ``pipe`` was derived from).

        The IP-Adapter is plus-face when ``ip_adapter.face_crop`` is on. Its
        loading replaces every attention processor of the shared UNet (attention
        slicing included, which is off while it is loaded), so the processors in
        place before are put back afterwards. The LoRA comes from the bytes of a
        ``.safetensors`` file, weighted by ``lora.scale``.
        """
        with self._lock:
            unet = denoiser_of(pipe)
            processors = unet.attn_processors if ip_adapter is not None else None
            swapped = lora is not None and _hotswaps(unet)
            try:
                if ip_adapter is not None:
                    self._set_ip_adapter(
                        pipe, ip_adapter, model_key or self._model_key_of(pipe)
                    )
                    # The image encoder came after the offload hooks were set.
                    self._offload_added(pipe)
                if lora is not None:
                    self._set_lora(pipe, lora)
                yield pipe
            finally:
                if swapped:
                    _blank_swapped_lora(pipe)
                elif lora is not None:
                    pipe.unload_lora_weights()
                if ip_adapter is not None:
                    pipe.unload_ip_adapter()
                    unet.set_attn_processor(processors)

    # Memory ----------------------------------------------------------------------

    def evict(self, model_key: str) -> None:
        """Drop a base model (its derived pipelines go with it)."""
        with self._lock:
            key = self._base_key(model_key)
            if key in self._entries:
                self._drop(key)

    def reduce_footprint(self) -> None:
        """After an out-of-memory error: slice attention, tile the VAE (and offload
        to the CPU on CUDA) for every base, and give cached memory back."""
        with self._lock:
            self._footprint.attention_slicing = True
            self._footprint.vae_tiling = True
            self._footprint.cpu_offload |= (
                self._device.type in self.OFFLOAD_DEVICE_TYPES
            )
            for entry in self._entries.values():
                if entry.kind == "base":
                    self._apply_footprint(entry.model)
            self._release_memory()

    def stats(self) -> dict[str, Any]:
        """Counters and what is loaded, oldest first, with its parameter bytes."""
        with self._lock:
            loaded = [
                {
                    "kind": entry.kind,
                    "label": entry.label,
                    "source": entry.source.location,
                    "bytes": entry.nbytes,
                    "load_seconds": round(entry.load_seconds, 4),
                }
                for entry in self._entries.values()
            ]
            budget = self._config.memory_budget_mb
            return {
                "device": str(self._device),
                "dtype": str(self._dtype).removeprefix("torch."),
                "footprint": vars(self.footprint),
                "hits": self._counts["hits"],
                "misses": self._counts["misses"],
                "loads": self._counts["loads"],
                "controlnet_loads": self._counts["controlnet_loads"],
                "image_encoder_loads": self._counts["image_encoder_loads"],
                "evictions": self._counts["evictions"],
                "budget_bytes": None if budget is None else budget * 2**20,
                "total_bytes": sum(item["bytes"] for item in loaded),
                "loaded": loaded,
            }

    # Internals -------------------------------------------------------------------

    @property
    def _offloading(self) -> bool:
        footprint = self._footprint
        offload = footprint.cpu_offload or footprint.sequential_cpu_offload
        return offload and self._device.type in self.OFFLOAD_DEVICE_TYPES

    def _offload(self, pipe: DiffusionPipeline) -> None:
        """Hook a pipeline's modules for CPU offload, when it is on: layer by
        layer (sequential) or module by module."""
        if not self._offloading:
            return
        if self._footprint.sequential_cpu_offload:
            pipe.enable_sequential_cpu_offload(device=self._device)
        else:
            pipe.enable_model_cpu_offload(device=self._device)

    def _offload_added(self, pipe: DiffusionPipeline) -> None:
        """Hook for offload the modules a job added to an offloaded pipeline (the
        IP-Adapter's image encoder). Model offload hooks every module again, in
        its order; sequential offload cannot be set twice (the weights of the
        modules it hooked are on the meta device, kept by their hooks), so only
        the modules without a hook get one."""
        if not self._offloading:
            return
        if not self._footprint.sequential_cpu_offload:
            self._offload(pipe)
            return
        from accelerate import cpu_offload

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module) and not hasattr(module, "_hf_hook"):
                cpu_offload(
                    module, self._device, offload_buffers=len(module._parameters) > 0
                )

    def _spec(self, model_key: str) -> ModelSpec:
        try:
            return self._config.models[model_key]
        except KeyError:
            known = ", ".join(sorted(self._config.models)) or "none"
            raise ModelNotFound(
                f"Unknown model {model_key!r}. Configured models: {known}."
            ) from None

    def _base_key(self, model_key: str) -> tuple[str, ...]:
        source, spec = self.source(model_key), self._spec(model_key)
        variant_and_vae = (spec.variant or "", spec.vae or "")
        return ("base", source.location, source.revision or "", *variant_and_vae)

    def _vae_source(self, spec: ModelSpec) -> ResolvedSource:
        assert spec.vae is not None
        return resolve_source(spec.vae, self._config, required_file=MODEL_CONFIG_FILE)

    def _controlnet_key(
        self, control_type: ControlType, model_key: str | None = None
    ) -> tuple[str, ...]:
        source = self.controlnet_source(control_type, model_key)
        variant = self._controlnet_spec(control_type, model_key).variant
        return ("controlnet", source.location, source.revision or "", variant or "")

    def _controlnet_spec(
        self, control_type: ControlType, model_key: str | None
    ) -> ControlNetSpec:
        control_type = ControlType(control_type)
        spec = self._config.controlnet_spec(control_type.value, model_key)
        if spec is None:
            configured = ", ".join(sorted(self._controlnets(model_key))) or "none"
            raise ModelNotFound(
                f"No ControlNet is configured for {control_type.value!r}. "
                f"Configured: {configured}."
            )
        return spec

    def _controlnets(self, model_key: str | None) -> dict[str, Any]:
        return self._config.controlnets_for(model_key)

    def _model_key_of(self, pipe: DiffusionPipeline) -> str | None:
        """The model whose loaded base shares ``pipe``'s UNet."""
        for entry in self._entries.values():
            if entry.kind == "base" and denoiser_of(entry.model) is denoiser_of(
                pipe
            ):
                return entry.label
        return None

    def _base(
        self, model_key: str, pinned: set[tuple[str, ...]]
    ) -> tuple[DiffusionPipeline, bool]:
        key = self._base_key(model_key)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._counts["hits"] += 1
            return entry.model, True
        self._counts["misses"] += 1
        source = self.source(model_key)
        started = time.perf_counter()
        base_cls = self._base_class(model_key)
        # The engine runs the safety checker itself (safety.py).
        own_checker = "safety_checker" in inspect.signature(base_cls).parameters
        components: dict[str, Any] = {"safety_checker": None} if own_checker else {}
        spec = self._spec(model_key)
        dtype = self.model_dtype(model_key)
        if spec.vae is not None:
            components["vae"] = load_vae(self._vae_source(spec), dtype)
        if self.family(model_key).denoiser is Denoiser.TRANSFORMER:
            quantization = quantization_config(
                self._config.quantization,
                self.family(model_key).quantized_components,
            )
            if quantization is not None:
                components["quantization_config"] = quantization
        pipe = load_pipeline(
            source, base_cls, dtype, variant=spec.variant, **components
        )
        vae = getattr(pipe, "vae", None)
        if self._dtype == torch.float32 and getattr(vae.config, "force_upcast", False):
            vae.register_to_config(force_upcast=False)
        self._apply_footprint(pipe)
        pipe.set_progress_bar_config(disable=True)
        self._counts["loads"] += 1
        self._add(
            key,
            _Entry(
                kind="base",
                label=model_key,
                source=source,
                model=pipe,
                nbytes=_parameter_bytes(pipe.components.values()),
                load_seconds=time.perf_counter() - started,
            ),
            pinned,
        )
        return pipe, False

    def _base_class(self, model_key: str) -> type[DiffusionPipeline]:
        """The class a model's base is loaded with: the one its folder names
        where the family runs it, so that every component the folder has is
        loaded (Qwen-Image-Edit's processor, which the family's text pipeline
        would leave out); else the family's text pipeline."""
        traits = self.traits(model_key)
        row = traits.family
        if traits.pipeline_class in row.pipeline_classes.values():
            method = next(
                method
                for method, name in row.pipeline_classes.items()
                if name == traits.pipeline_class
            )
            return pipeline_class(method, row)
        return pipeline_class(Method.TEXT, row)

    def _controlnet(
        self,
        control_type: ControlType,
        pinned: set[tuple[str, ...]],
        model_key: str | None = None,
    ) -> ControlNetModel:
        key = self._controlnet_key(control_type, model_key)
        entry = self._entries.get(key)
        if entry is None:
            source = self.controlnet_source(control_type, model_key)
            variant = self._controlnet_spec(control_type, model_key).variant
            started = time.perf_counter()
            model = load_controlnet(
                source,
                self._dtype,
                variant=variant,
                class_name=self.family(model_key).controlnet_class
                if model_key is not None
                else "ControlNetModel",
            )
            if not self._offloading:
                model.to(self._device)
            self._counts["controlnet_loads"] += 1
            entry = _Entry(
                kind="controlnet",
                label=ControlType(control_type).value,
                source=source,
                model=model,
                nbytes=_parameter_bytes([model]),
                load_seconds=time.perf_counter() - started,
            )
            self._add(key, entry, pinned)
        self._entries.move_to_end(key)
        return entry.model

    def _load_image_encoder(
        self, key: tuple[str, ...], source: ResolvedSource, spec: IPAdapterSpec
    ) -> _Entry:
        started = time.perf_counter()
        with model_loading(source.location):
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                source.location,
                subfolder=spec.image_encoder_folder,
                revision=source.revision,
                dtype=self._dtype,
                local_files_only=source.offline,
                variant=spec.variant,
            )
        if not self._offloading:
            encoder.to(self._device)
        size = encoder.config.image_size
        self._counts["image_encoder_loads"] += 1
        entry = _Entry(
            kind="image_encoder",
            label="ip-adapter image encoder",
            source=source,
            model=encoder,
            nbytes=_parameter_bytes([encoder]),
            load_seconds=time.perf_counter() - started,
            # What diffusers' load_ip_adapter builds when a pipeline has none.
            extra={"processor": CLIPImageProcessor(size=size, crop_size=size)},
        )
        self._add(key, entry, {key})
        return entry

    def _safety_checker_source(self, model_key: str) -> ResolvedSource | None:
        configured = self._config.safety_checker
        required = f"{SAFETY_CHECKER_FOLDER}/{MODEL_CONFIG_FILE}"
        if configured:
            return resolve_source(configured, self._config, required_file=required)
        source = self.source(model_key)
        if (
            source.kind is SourceKind.SINGLE_FILE
            or read_config(source, required) is None
        ):
            return None
        return source

    def _load_safety_checker(
        self, key: tuple[str, ...], source: ResolvedSource
    ) -> _Entry:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )

        started = time.perf_counter()
        options = {"revision": source.revision, "local_files_only": source.offline}
        with model_loading(source.location):
            checker = StableDiffusionSafetyChecker.from_pretrained(
                source.location,
                subfolder=SAFETY_CHECKER_FOLDER,
                dtype=self._dtype,
                **options,
            )
            processor = CLIPImageProcessor.from_pretrained(
                source.location, subfolder=FEATURE_EXTRACTOR_FOLDER, **options
            )
        checker.to(self._device)
        self._counts["safety_checker_loads"] += 1
        entry = _Entry(
            kind="safety_checker",
            label="safety checker",
            source=source,
            model=checker,
            nbytes=_parameter_bytes([checker]),
            load_seconds=time.perf_counter() - started,
            extra={"processor": processor},
        )
        self._add(key, entry, {key})
        return entry

    def _check_ip_adapter_fits(
        self, model: ModelTraits, model_key: str, settings: IPAdapterInput
    ) -> None:
        spec = self._ip_adapter_spec(model_key)
        source = self._ip_adapter_source(model_key)
        if spec is None or source is None:
            return
        weight = spec.weight_file(_ip_weight_name(spec, settings))
        check_ip_adapter_file(source, weight, model, model_key)

    def _ip_adapter_spec(self, model_key: str | None) -> IPAdapterSpec | None:
        if model_key is None:
            return self._config.ip_adapter
        return self._config.ip_adapter_for(model_key)

    def _ip_adapter_source(self, model_key: str | None = None) -> ResolvedSource | None:
        spec = self._ip_adapter_spec(model_key)
        if spec is None:
            return None
        return resolve_ip_adapter(spec, self._config)

    def _image_encoder_source(
        self, spec: IPAdapterSpec, model_key: str | None
    ) -> ResolvedSource:
        """Where the IP-Adapter's image encoder lies: its own source when the
        spec names one, else the IP-Adapter's."""
        if spec.image_encoder_source is None:
            source = self._ip_adapter_source(model_key)
            assert source is not None
            return source
        return resolve_source(
            spec.image_encoder_source,
            self._config,
            required_file=in_folder(spec.image_encoder_folder, MODEL_CONFIG_FILE),
        )

    def _set_ip_adapter(
        self,
        pipe: DiffusionPipeline,
        settings: IPAdapterInput,
        model_key: str | None,
    ) -> None:
        spec = self._ip_adapter_spec(model_key)
        image_encoder = self.image_encoder(model_key)
        if spec is None or image_encoder is None:
            raise ModelNotFound("No IP-Adapter is installed: configure its weights.")
        source = self._ip_adapter_source(model_key)
        assert source is not None
        # The shared encoder, loaded once: load_ip_adapter only loads one when the
        # pipeline has none.
        pipe.register_modules(image_encoder=image_encoder[0])
        if self.family(model_key).denoiser is Denoiser.UNET:
            # load_ip_adapter rebuilds each processor with its class's defaults,
            # which a sliced processor does not have.
            pipe.unet.set_attn_processor(AttnProcessor2_0())
            # (FLUX.1's loader, FluxIPAdapterMixin, names the encoder's folder
            # otherwise; the encoder is already there.)
            encoder = {"image_encoder_folder": spec.image_encoder_folder}
        else:
            encoder = {}
        with model_loading(source.location):
            pipe.load_ip_adapter(
                source.location,
                subfolder=spec.subfolder,
                weight_name=_ip_weight_name(spec, settings),
                revision=source.revision,
                local_files_only=source.offline,
                **encoder,
            )
        unet = getattr(pipe, "unet", None)  # FLUX.1 has a transformer instead
        if unet is not None and _compiled(unet):
            _fold_ip_adapter_scale(unet, settings.scale)
        else:
            pipe.set_ip_adapter_scale(settings.scale)

    def _set_lora(self, pipe: DiffusionPipeline, lora: LoraInput) -> None:
        try:
            state_dict = safetensors.torch.load(lora.weights)
        except Exception as error:  # safetensors raises its own error types
            raise InvalidRequest(
                f"The LoRA {lora.name!r} is not a readable .safetensors file: {error}"
            ) from error
        if _hotswaps(denoiser_of(pipe)):
            self._swap_lora(pipe, state_dict, lora)
            return
        try:
            pipe.load_lora_weights(state_dict, adapter_name=LORA_ADAPTER_NAME)
        except (ValueError, KeyError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0]  # a shape list can follow
            raise InvalidRequest(
                f"The LoRA {lora.name!r} does not fit this model: {reason}"
            ) from error
        if not any(
            LORA_ADAPTER_NAME in names for names in pipe.get_list_adapters().values()
        ):
            raise InvalidRequest(
                f"The LoRA {lora.name!r} has no weights for this model's UNet or "
                "text encoder."
            )
        pipe.set_adapters([LORA_ADAPTER_NAME], adapter_weights=[lora.scale])

    def _swap_lora(
        self, pipe: DiffusionPipeline, state_dict: dict[str, Any], lora: LoraInput
    ) -> None:
        """Swap a job's LoRA into a compiled UNet's blank adapter (module doc,
        "Compiled UNets"); its text-encoder part is loaded as its own adapter."""
        weighted = {
            key: value * lora.scale if key.endswith(LORA_UP_SUFFIXES) else value
            for key, value in state_dict.items()
        }
        try:
            converted, alphas = pipe.lora_state_dict(weighted)
        except (ValueError, KeyError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0]
            raise InvalidRequest(
                f"The LoRA {lora.name!r} does not fit this model: {reason}"
            ) from error
        if not any(key.startswith(("unet.", "text_encoder")) for key in converted):
            raise InvalidRequest(
                f"The LoRA {lora.name!r} has no weights for this model's UNet or "
                "text encoder."
            )
        check_compiled_lora_rank(converted, self._config.compile_lora_rank, lora)
        try:
            pipe.load_lora_into_unet(
                converted,
                network_alphas=alphas,
                unet=pipe.unet,
                adapter_name=LORA_ADAPTER_NAME,
                _pipeline=pipe,
                hotswap=True,
            )
        except (ValueError, KeyError, RuntimeError) as error:
            if LORA_ADAPTER_NAME in getattr(pipe.unet, "peft_config", {}):
                _blank_swapped_lora(pipe)
            else:
                # diffusers deletes the adapter when a hotswap fails: put the
                # blank one back, so that the compiled graph finds it again.
                _prepare_unet_for_hotswap(
                    pipe, self._config.compile_lora_rank, check_compiled="ignore"
                )
            reason = str(error).strip().splitlines()[0]
            raise InvalidRequest(
                f"The LoRA {lora.name!r} cannot be swapped into the compiled UNet "
                f"(STUDIO_TORCH_COMPILE swaps LoRAs on attention projections only, "
                f"of one alpha): {reason[:300]}"
            ) from error
        for name in LORA_TEXT_ENCODERS:
            text_encoder = getattr(pipe, name, None)
            if text_encoder is None or not any(
                key.startswith(f"{name}.") for key in converted
            ):
                continue
            pipe.load_lora_into_text_encoder(
                converted,
                network_alphas=alphas,
                text_encoder=text_encoder,
                prefix=name,
                adapter_name=LORA_TEXT_ADAPTER_NAME,
                _pipeline=pipe,
            )

    def _compile(self, pipe: DiffusionPipeline) -> None:
        """Compile a base's denoiser once, a UNet with its blank LoRA first
        (module doc, "Compiled UNets")."""
        denoiser = denoiser_of(pipe)
        if _compiled(denoiser):
            return
        rank = self._config.compile_lora_rank
        if denoiser is getattr(pipe, "unet", None) and rank > 0:
            _prepare_unet_for_hotswap(pipe, rank)
        limit = COMPILED_GRAPHS_PER_SIZE * max(1, len(self._config.compile_sizes))
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, limit)
        denoiser.compile(dynamic=False, backend=self._config.compile_backend)

    def _derive(
        self,
        pipeline_cls: type[DiffusionPipeline],
        base: DiffusionPipeline,
        components: dict[str, Any],
        dtype: torch.dtype,
    ) -> DiffusionPipeline:
        """``from_pipe`` with the registry's dtype, without its cast when needless.

        ``from_pipe`` ends with ``pipe.to(dtype)``, which walks every submodule even
        when nothing changes. When every module of the new pipeline already has the
        dtype, the pipeline is built through a subclass whose ``to`` does nothing
        and then given back its own class: same modules (by identity), same
        config, same pixels, no cast. Otherwise the plain ``from_pipe`` casts.
        """
        modules = [
            module
            for module in itertools.chain(base.components.values(), components.values())
            if isinstance(module, torch.nn.Module)
        ]
        if not all(self._has_dtype(module, dtype) for module in modules):
            return pipeline_cls.from_pipe(base, dtype=dtype, **components)
        pipe = _uncast_class(pipeline_cls).from_pipe(base, dtype=dtype, **components)
        pipe.__class__ = pipeline_cls
        return pipe

    def _has_dtype(self, module: torch.nn.Module, dtype: torch.dtype) -> bool:
        """Whether every floating parameter and buffer has ``dtype`` (a quantized
        module's integer weights are not floating)."""
        if self._in_dtype.get(module) == dtype:
            return True
        tensors = itertools.chain(module.parameters(), module.buffers())
        if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
            self._in_dtype[module] = dtype
            return True
        return False

    def _fresh_scheduler(self, base: DiffusionPipeline, name: str | None) -> Any:
        scheduler_cls = type(base.scheduler)
        if name is not None:
            compatible = {cls.__name__: cls for cls in base.scheduler.compatibles}
            compatible[scheduler_cls.__name__] = scheduler_cls
            if name not in compatible:
                raise InvalidRequest(
                    f"Unknown scheduler {name!r}. This model takes: "
                    f"{', '.join(sorted(compatible))}."
                )
            scheduler_cls = compatible[name]
        return scheduler_cls.from_config(base.scheduler.config)

    def _apply_footprint(self, pipe: DiffusionPipeline) -> None:
        footprint = self._footprint
        if self._offloading:
            self._offload(pipe)
        else:
            pipe.to(self._device)
        denoiser = denoiser_of(pipe)
        if footprint.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
            pipe.enable_attention_slicing()
        if footprint.vae_tiling:
            pipe.vae.enable_tiling()
        if footprint.channels_last and denoiser is getattr(pipe, "unet", None):
            denoiser.to(memory_format=torch.channels_last)
        if footprint.compile:
            self._compile(pipe)

    def _fingerprint_of(self, source: ResolvedSource) -> dict[str, Any]:
        cache_key = f"{source.kind.value}:{source.location}@{source.revision}"
        if cache_key not in self._fingerprints:
            self._fingerprints[cache_key] = fingerprint(source)
        return self._fingerprints[cache_key]

    def _add(
        self, key: tuple[str, ...], entry: _Entry, pinned: set[tuple[str, ...]]
    ) -> None:
        """Add a loaded entry, then drop the oldest unpinned ones past the budget."""
        self._entries[key] = entry
        budget = self._config.memory_budget_mb
        if budget is None:
            return
        victims = [k for k in self._entries if k not in pinned | {key}]
        dropped = False
        for victim in victims:
            if sum(e.nbytes for e in self._entries.values()) <= budget * 2**20:
                break
            self._drop(victim, release=False)
            dropped = True
        if dropped:
            self._release_memory()

    def _drop(self, key: tuple[str, ...], *, release: bool = True) -> None:
        del self._entries[key]
        self._counts["evictions"] += 1
        if release:
            self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._device.type == "mps":
            torch.mps.empty_cache()


class _NamesNoFloat32Module(logging.Filter):
    """Drops diffusers' "There are modules in X that should be kept in float32:
    []" warning, which every ``ModelMixin.to(dtype)`` logs (the SDXL pipelines'
    VAE upcast included) even when the list is empty; one that names a module
    passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def _quiet_casts() -> None:
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _NamesNoFloat32Module) for f in modeling.filters):
        modeling.addFilter(_NamesNoFloat32Module())


_quiet_casts()

_UNCAST_CLASSES: dict[type, type] = {}


def _uncast_class(pipeline_cls: type[DiffusionPipeline]) -> type[DiffusionPipeline]:
    """A subclass of ``pipeline_cls`` whose ``to`` returns the pipeline as it is.

    Used only while ``from_pipe`` builds a pipeline whose modules already have the
    dtype; the result gets ``pipeline_cls`` back as its class at once.
    """
    uncast = _UNCAST_CLASSES.get(pipeline_cls)
    if uncast is None:

        def to(self: DiffusionPipeline, *args: Any, **kwargs: Any) -> Any:
            return self

        uncast = type(
            pipeline_cls.__name__,
            (pipeline_cls,),
            {"to": to, "__module__": pipeline_cls.__module__},
        )
        _UNCAST_CLASSES[pipeline_cls] = uncast
    return uncast


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def _hotswaps(denoiser: torch.nn.Module) -> bool:
    """Whether a job's LoRA is swapped into ``denoiser``'s blank adapter: a
    compiled UNet prepared by ``_prepare_unet_for_hotswap``."""
    return _compiled(denoiser) and LORA_ADAPTER_NAME in getattr(
        denoiser, "peft_config", {}
    )


def _prepare_unet_for_hotswap(
    pipe: DiffusionPipeline, rank: int, check_compiled: str = "error"
) -> None:
    """Give an uncompiled UNet its blank LoRA, ready for hotswaps of up to
    ``rank``, and its IP-Adapter projection slot (``check_compiled``
    "ignore": give a compiled one its blank LoRA back)."""
    unet = pipe.unet
    # A UNet keeps ``encoder_hid_proj`` as a plain attribute until an IP-Adapter
    # is loaded and unloaded, after which it is a module slot holding None; the
    # compiled graph's guards tell the two apart (one more compile after the
    # first IP-Adapter job), so it is a module slot from the start.
    if "encoder_hid_proj" not in unet._modules:
        unet.register_module("encoder_hid_proj", unet.__dict__.pop("encoder_hid_proj"))
    pipe.enable_lora_hotswap(target_rank=rank, check_compiled=check_compiled)
    pipe.load_lora_weights(
        _blank_lora(pipe, rank, text_encoders=False), adapter_name=LORA_ADAPTER_NAME
    )


def _blank_lora(
    pipe: DiffusionPipeline, rank: int, *, text_encoders: bool
) -> dict[str, torch.Tensor]:
    """A LoRA of zeros (it adds exactly nothing) on the UNet's attention
    projections and, with ``text_encoders``, on the text encoders' too, in
    diffusers' (PEFT) naming."""
    targets = [
        (f"unet.{name}.{projection}", module.get_submodule(projection))
        for name, module in pipe.unet.named_modules()
        if isinstance(module, Attention)
        for projection in ATTENTION_PROJECTIONS
    ]
    for component in LORA_TEXT_ENCODERS if text_encoders else ():
        text_encoder = getattr(pipe, component, None)
        if text_encoder is None:
            continue
        targets += [
            (f"{component}.{name}", module)
            for name, module in text_encoder.named_modules()
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))
        ]
    blank = {}
    for prefix, linear in targets:
        options = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        blank[f"{prefix}.lora_A.weight"] = torch.zeros(
            rank, linear.in_features, **options
        )
        blank[f"{prefix}.lora_B.weight"] = torch.zeros(
            linear.out_features, rank, **options
        )
    return blank


def _blank_swapped_lora(pipe: DiffusionPipeline) -> None:
    """Zero the swapped-in LoRA of a compiled UNet (in place: no recompile) and
    delete its text-encoder part."""
    with torch.no_grad():
        for module in pipe.unet.modules():
            if isinstance(module, LoraLayer) and LORA_ADAPTER_NAME in module.lora_A:
                module.lora_A[LORA_ADAPTER_NAME].weight.zero_()
                module.lora_B[LORA_ADAPTER_NAME].weight.zero_()
    for name in LORA_TEXT_ENCODERS:
        text_encoder = getattr(pipe, name, None)
        if LORA_TEXT_ADAPTER_NAME in getattr(text_encoder, "peft_config", {}):
            pipe.delete_adapters(LORA_TEXT_ADAPTER_NAME)
            break


def _fold_ip_adapter_scale(unet: torch.nn.Module, scale: float) -> None:
    """Weight a just-loaded IP-Adapter by ``scale`` through its value
    projections, its processors' own scale left at 1.0 (module doc)."""
    with torch.no_grad():
        for processor in unet.attn_processors.values():
            for projection in getattr(processor, "to_v_ip", ()):
                projection.weight.mul_(scale)
            if hasattr(processor, "to_v_ip"):
                processor.scale = [1.0] * len(processor.scale)


def check_compiled_lora_rank(
    weights: Any, rank: int, lora: LoraInput | None = None
) -> None:
    """Refuse a LoRA whose rank exceeds a compiled UNet's ``rank``.

    ``weights`` maps names to tensors or to ``safetensors`` header entries.
    """
    ranks = [
        value["shape"][0] if isinstance(value, dict) else value.shape[0]
        for key, value in weights.items()
        if key.endswith(LORA_DOWN_SUFFIXES)
    ]
    if ranks and max(ranks) > rank:
        name = f" {lora.name!r}" if lora is not None else ""
        raise InvalidRequest(
            f"The LoRA{name} has rank {max(ranks)}; compiled workers swap in LoRAs "
            f"of rank up to {rank} (STUDIO_COMPILE_LORA_RANK)."
        )


def _ip_weight_name(spec: IPAdapterSpec, settings: IPAdapterInput) -> str:
    """The plus-face weights when faces are cropped, else the plain ones."""
    return spec.face_weight_name if settings.face_crop else spec.weight_name


def _parameter_bytes(modules: Any) -> int:
    """Bytes of the distinct parameters and buffers of the given torch modules."""
    tensors = {
        id(tensor): tensor
        for module in modules
        if isinstance(module, torch.nn.Module)
        for tensor in itertools.chain(module.parameters(), module.buffers())
    }
    return sum(t.numel() * t.element_size() for t in tensors.values())
