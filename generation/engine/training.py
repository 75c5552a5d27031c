"""LoRA training: DreamBooth-style LoRA on a persona's own images (DESIGN.md
decision 12), framework-free like the rest of the engine.

``check_training`` refuses settings that cannot work before any model is
loaded. ``Trainer.train`` loads its own float32 copy of the base model (the
registry's shared pipeline is never changed), adds PEFT LoRA layers to the UNet's
attention projections (and the text encoder's when asked), and trains on latents
cached once per image and flip. Every random choice of a step (the batch, its
flips, the noise, the timesteps) comes from a generator seeded by ``(seed,
step)``, so a run resumed from a checkpoint continues exactly as the uninterrupted
run would have. The result is a ``.safetensors`` file in kohya's layout
(``lora_unet_*``/``lora_te_*`` with ``lora_down``, ``lora_up`` and ``alpha``), which
AUTOMATIC1111, ComfyUI and diffusers' ``load_lora_weights`` read.

A model family is a row here too (``TrainingFamily``): which pipeline class it
loads, which text encoders it has and their kohya prefixes, how captions become
UNet conditioning, and which resolutions it trains at. SD 1.5 is the one row so
far; SDXL adds a row with its two text encoders and added time ids.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import convert_state_dict_to_kohya
from PIL import Image, ImageOps
from safetensors.torch import load_file, save, save_file

from .errors import GenerationCancelled, InvalidRequest
from .registry import PipelineRegistry
from .requests import GenerationRequest, LoraInput, Method
from .runner import Engine
from .snapshot import image_sha256, library_versions
from .sources import load_pipeline
from .vocabulary import MAX_PROMPT_LENGTH, MAX_SEED, MIN_SEED, SIZE_MULTIPLE

UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
MIN_TRAINING_IMAGES = 3
"""DreamBooth needs a few views of the subject; fewer learns one picture."""
MAX_TRAINING_IMAGES = 200
MIN_TRAINING_STEPS, MAX_TRAINING_STEPS = 1, 20_000
MIN_RANK, MAX_RANK = 1, 256
MAX_BATCH_SIZE = 16
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-7, 1e-2
MAX_NOISE_OFFSET = 1.0
MAX_BUCKET_ASPECT = 2.0
"""The widest bucket is twice as wide as high (and the reverse)."""
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_LORA = "lora.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_RNG = "rng.safetensors"
CHECKPOINT_STATE = "state.json"
KOHYA_NETWORK_MODULE = "networks.lora"
CONVERTER_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
"""The text encoder prefixes ``convert_state_dict_to_kohya`` writes."""
KOHYA_CLIP_ROOT = "text_model_"


class TrainingCancelled(GenerationCancelled):
    """Staff cancelled the run; it ended before its next step."""


# --- Settings and presets --------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """The hyperparameters of one run.

    ``gradient_checkpointing`` and ``mixed_precision`` None mean "on where it
    helps" (a GPU) and off on the CPU. ``checkpoint_every`` and ``sample_every``
    0 mean never (a final sample set is still made when validation prompts are
    given). ``text_encoder_learning_rate`` None uses ``learning_rate``.
    """

    steps: int = 800
    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 1e-4
    resolution: int = 512
    batch_size: int = 1
    train_text_encoder: bool = False
    text_encoder_learning_rate: float | None = None
    noise_offset: float = 0.0
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 0
    sample_every: int = 0
    sample_steps: int = 20
    gradient_checkpointing: bool | None = None
    mixed_precision: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingSettings:
        """Settings from a mapping (a form, a row); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidRequest(
                f"Unknown training settings: {', '.join(unknown)}. Known: "
                f"{', '.join(sorted(known))}."
            )
        return cls(**values)


@dataclass(frozen=True)
class TrainingPreset:
    name: str
    label: str
    settings: TrainingSettings


PRESETS: dict[str, TrainingPreset] = {
    preset.name: preset
    for preset in (
        TrainingPreset(
            "quick",
            "Quick (a first look, minutes on a GPU)",
            TrainingSettings(steps=400, rank=8, alpha=8.0, learning_rate=2e-4),
        ),
        TrainingPreset(
            "standard",
            "Standard",
            TrainingSettings(steps=1000, rank=16, alpha=16.0, learning_rate=1e-4),
        ),
        TrainingPreset(
            "strong",
            "Strong (text encoder too; may overfit)",
            TrainingSettings(
                steps=2000,
                rank=32,
                alpha=32.0,
                learning_rate=1e-4,
                train_text_encoder=True,
                text_encoder_learning_rate=5e-5,
            ),
        ),
    )
}
DEFAULT_PRESET = "standard"
PRESET_FIELDS = (
    "steps",
    "rank",
    "alpha",
    "learning_rate",
    "resolution",
    "batch_size",
    "train_text_encoder",
)
"""The settings a preset chooses; the others keep their own defaults."""


def preset_settings(name: str, **overrides: Any) -> TrainingSettings:
    """The settings of preset ``name``, with ``overrides`` on top."""
    if name not in PRESETS:
        raise InvalidRequest(
            f"Unknown training preset {name!r}. Choose one of: {', '.join(PRESETS)}."
        )
    return replace(PRESETS[name].settings, **overrides)


# --- Families --------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family: pipeline attribute names and kohya prefix."""

    encoder: str
    tokenizer: str
    kohya_prefix: str


@dataclass(frozen=True)
class TrainingFamily:
    """How one model family trains: its pipeline class, text encoders, sizes and
    how captions become the UNet's conditioning (``encode``)."""

    name: str
    pipeline_class: type
    text_encoders: tuple[TextEncoderSlot, ...]
    min_resolution: int
    max_resolution: int
    base_model_version: str
    encode: Callable[[Any, list[str]], dict[str, torch.Tensor]]
    """Captions -> conditioning tensors (one row per caption), cacheable."""
    unet_kwargs: Callable[
        [Any, dict[str, torch.Tensor], tuple[int, int]], dict[str, Any]
    ] = lambda pipe, conditioning, size: dict(conditioning)
    """Conditioning of a batch and its bucket (width, height) -> UNet kwargs."""


def _encode_sd15(pipe: Any, captions: list[str]) -> dict[str, torch.Tensor]:
    tokens = pipe.tokenizer(
        captions,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return {"encoder_hidden_states": pipe.text_encoder(tokens)[0]}


def _encode_sdxl(pipe: Any, captions: list[str]) -> dict[str, torch.Tensor]:
    # The pipeline's own encoding: both encoders' penultimate layers, pooled.
    embeds, _, pooled, _ = pipe.encode_prompt(
        captions,
        device=pipe.text_encoder_2.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    return {"encoder_hidden_states": embeds, "text_embeds": pooled}


def _sdxl_unet_kwargs(
    pipe: Any, conditioning: dict[str, torch.Tensor], size: tuple[int, int]
) -> dict[str, Any]:
    width, height = size
    pooled = conditioning["text_embeds"]
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=pooled.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).to(pooled.device)
    return {
        "encoder_hidden_states": conditioning["encoder_hidden_states"],
        "added_cond_kwargs": {
            "text_embeds": pooled,
            "time_ids": time_ids.repeat(pooled.shape[0], 1),
        },
    }


SD15 = TrainingFamily(
    name="sd15",
    pipeline_class=StableDiffusionPipeline,
    text_encoders=(TextEncoderSlot("text_encoder", "tokenizer", "lora_te"),),
    # 64 is the tiny model's size; real SD 1.5 trains at 512 to 768.
    min_resolution=64,
    max_resolution=1024,
    base_model_version="sd_v1",
    encode=_encode_sd15,
)
SDXL = TrainingFamily(
    name="sdxl",
    pipeline_class=StableDiffusionXLPipeline,
    text_encoders=(
        TextEncoderSlot("text_encoder", "tokenizer", "lora_te1"),
        TextEncoderSlot("text_encoder_2", "tokenizer_2", "lora_te2"),
    ),
    # 64 is the tiny SDXL model's size; real SDXL trains at 1024.
    min_resolution=64,
    max_resolution=2048,
    base_model_version="sdxl_base_v1-0",
    encode=_encode_sdxl,
    unet_kwargs=_sdxl_unet_kwargs,
)
FAMILIES: dict[str, TrainingFamily] = {SD15.name: SD15, SDXL.name: SDXL}


# --- Requests and results --------------------------------------------------------


@dataclass
class TrainingImage:
    """One training image and its full caption (trigger word, caption, base
    appearance)."""

    image: Image.Image
    caption: str


@dataclass
class TrainingRequest:
    model: str
    images: list[TrainingImage]
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    family: str | None = None
    """A key of ``FAMILIES``; None: the model's own family (``Trainer.check``)."""
    validation_prompts: list[str] = field(default_factory=list)
    validation_seeds: list[int] = field(default_factory=lambda: [0])
    output_name: str = "persona"
    trigger_word: str = ""


@dataclass
class ValidationSample:
    step: int
    prompt: str
    seed: int
    image: Image.Image


@dataclass
class TrainingResult:
    lora: bytes
    """The ``.safetensors`` file, in kohya's layout."""
    losses: list[float]
    steps: int
    seconds: float
    resumed_from: int
    snapshot: dict[str, Any]

    @property
    def steps_per_second(self) -> float:
        done = self.steps - self.resumed_from
        return done / self.seconds if self.seconds else 0.0


StepCallback = Callable[[int, int, float], None]
CancelCheck = Callable[[], bool]
CheckpointCallback = Callable[[int, Path], None]
SampleCallback = Callable[[int, list[ValidationSample]], None]


# --- Checks ----------------------------------------------------------------------


def check_training(request: TrainingRequest) -> TrainingFamily:
    """Refuse a request that cannot work, with the reason; loads nothing."""
    family = check_training_plan(
        family=request.family or SD15.name,
        settings=request.settings,
        captions=[item.caption for item in request.images],
        validation_prompts=request.validation_prompts,
    )
    for index, item in enumerate(request.images, start=1):
        if min(item.image.size) < SIZE_MULTIPLE:
            raise InvalidRequest(f"Image {index} is too small to train on.")
    return family


def check_training_plan(
    *,
    family: str,
    settings: TrainingSettings,
    captions: Sequence[str],
    validation_prompts: Sequence[str] = (),
) -> TrainingFamily:
    """The checks that need no image: where a person starts a run (one caption
    per chosen image) as well as in the worker."""
    chosen = FAMILIES.get(family)
    if chosen is None:
        raise InvalidRequest(
            f"LoRA training is not available for the {family!r} family. "
            f"Available: {', '.join(FAMILIES)}."
        )
    s = settings
    count = len(captions)
    if count < MIN_TRAINING_IMAGES:
        raise InvalidRequest(
            f"Training needs at least {MIN_TRAINING_IMAGES} images; {count} "
            f"{'was' if count == 1 else 'were'} chosen. Add references to the "
            "gallery or choose more of them."
        )
    if count > MAX_TRAINING_IMAGES:
        raise InvalidRequest(
            f"Training takes at most {MAX_TRAINING_IMAGES} images; {count} were chosen."
        )
    if not isinstance(s.resolution, int) or s.resolution % SIZE_MULTIPLE:
        raise InvalidRequest(
            f"The resolution {s.resolution} is not a multiple of {SIZE_MULTIPLE}."
        )
    if not chosen.min_resolution <= s.resolution <= chosen.max_resolution:
        raise InvalidRequest(
            f"The {chosen.name} family trains at {chosen.min_resolution} to "
            f"{chosen.max_resolution} pixels; {s.resolution} was asked."
        )
    _check_int("steps", s.steps, MIN_TRAINING_STEPS, MAX_TRAINING_STEPS)
    _check_int("rank", s.rank, MIN_RANK, MAX_RANK)
    _check_int("batch size", s.batch_size, 1, MAX_BATCH_SIZE)
    _check_int("seed", s.seed, MIN_SEED, MAX_SEED)
    _check_int("checkpoint interval", s.checkpoint_every, 0, MAX_TRAINING_STEPS)
    _check_int("sample interval", s.sample_every, 0, MAX_TRAINING_STEPS)
    _check_int("sample steps", s.sample_steps, 1, 150)
    if not 0 < s.alpha <= 4 * MAX_RANK:
        raise InvalidRequest(
            f"The alpha must be above 0 and at most {4 * MAX_RANK}; {s.alpha} was "
            "given."
        )
    for label, rate in (
        ("learning rate", s.learning_rate),
        ("text encoder learning rate", s.text_encoder_learning_rate),
    ):
        if rate is not None and not MIN_LEARNING_RATE <= rate <= MAX_LEARNING_RATE:
            raise InvalidRequest(
                f"The {label} must be between {MIN_LEARNING_RATE:g} and "
                f"{MAX_LEARNING_RATE:g}; {rate:g} was given."
            )
    if not 0 <= s.noise_offset <= MAX_NOISE_OFFSET:
        raise InvalidRequest(
            f"The noise offset must be between 0 and {MAX_NOISE_OFFSET}; "
            f"{s.noise_offset} was given."
        )
    for index, caption in enumerate(captions, start=1):
        if not caption.strip():
            raise InvalidRequest(f"Image {index} has no caption.")
        if len(caption) > MAX_PROMPT_LENGTH:
            raise InvalidRequest(f"The caption of image {index} is too long.")
    for prompt in validation_prompts:
        if not prompt.strip() or len(prompt) > MAX_PROMPT_LENGTH:
            raise InvalidRequest("A validation prompt is empty or too long.")
    return chosen


def _check_int(label: str, value: Any, low: int, high: int) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (low <= value <= high)
    ):
        raise InvalidRequest(
            f"The {label} must be a whole number from {low} to {high}; {value!r} "
            "was given."
        )


# --- Buckets ---------------------------------------------------------------------


def aspect_buckets(resolution: int) -> list[tuple[int, int]]:
    """(width, height) buckets of about ``resolution``² pixels, sides in steps of
    ``resolution // 8`` (a multiple of 8), aspect ratios up to 2:1."""
    step = max(SIZE_MULTIPLE, resolution // 8 // SIZE_MULTIPLE * SIZE_MULTIPLE)
    area = resolution * resolution
    buckets = set()
    width = step
    while width <= 2 * resolution:
        height = int(area / width) // step * step
        if height >= step and (
            max(width, height) / min(width, height) <= MAX_BUCKET_ASPECT
        ):
            buckets.add((width, height))
        width += step
    return sorted(buckets)


def choose_bucket(
    size: tuple[int, int], buckets: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (larger area wins
    ties)."""
    aspect = math.log(size[0] / size[1])
    return min(
        buckets,
        key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]),
    )


# --- The trainer -----------------------------------------------------------------


@dataclass
class _Example:
    bucket: tuple[int, int]
    latents: list[torch.Tensor]  # [plain, flipped]
    caption: str


class Trainer:
    """Trains LoRAs with the engine's models; validation samples go through the
    engine's own generation path with the LoRA file loaded."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def registry(self) -> PipelineRegistry:
        return self._engine.registry

    def check(self, request: TrainingRequest) -> TrainingFamily:
        """``check_training`` plus the model: it must be configured."""
        self.registry.source(request.model)
        if request.family is None:
            request.family = self.registry.family(request.model).key
        return check_training(request)

    def train(
        self,
        request: TrainingRequest,
        *,
        work_dir: Path,
        resume_from: Path | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        on_samples: SampleCallback | None = None,
    ) -> TrainingResult:
        """Train; return the LoRA file and the loss history.

        ``work_dir`` receives checkpoints (``step-NNNNNN/`` folders, each handed to
        ``on_checkpoint(step, folder)`` once complete). ``resume_from`` is such a
        folder: its weights, optimizer, step and loss history are restored.
        ``on_step(step, total, loss)`` follows every step; ``should_cancel()`` is
        checked before every step and ends the run with ``TrainingCancelled``.
        ``on_samples(step, samples)`` receives validation samples.
        """
        family = self.check(request)
        settings = request.settings
        started = time.perf_counter()
        device = self.registry.device
        on_gpu = device.type == "cuda"
        mixed = on_gpu if settings.mixed_precision is None else settings.mixed_precision
        weight_dtype = torch.float32
        if mixed and on_gpu:
            weight_dtype = (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            )
        pipe = load_pipeline(
            self.registry.source(request.model), family.pipeline_class, torch.float32
        )
        model = _TrainableModel(pipe, family, settings, device, weight_dtype)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        examples = model.cache_examples(request.images)
        embeddings = (
            None if settings.train_text_encoder else model.cache_embeddings(examples)
        )
        optimizer = _optimizer(model.parameter_groups(), on_gpu)
        scaler = torch.amp.GradScaler(
            "cuda", enabled=mixed and weight_dtype == torch.float16
        )

        first_step, losses = 0, []
        if resume_from is not None:
            first_step, losses = _load_checkpoint(
                resume_from, model, optimizer, settings
            )
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        by_bucket = _group_by_bucket(examples)

        for step in range(first_step + 1, settings.steps + 1):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(
                    f"Training was cancelled before step {step} of {settings.steps}."
                )
            loss = self._step(
                model,
                noise_scheduler,
                optimizer,
                scaler,
                by_bucket,
                embeddings,
                step,
                weight_dtype if mixed else None,
            )
            losses.append(loss)
            if on_step is not None:
                on_step(step, settings.steps, loss)
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                folder = _save_checkpoint(
                    work_dir, step, model, optimizer, settings, losses
                )
                if on_checkpoint is not None:
                    on_checkpoint(step, folder)
            if (
                settings.sample_every
                and step % settings.sample_every == 0
                and step != settings.steps
            ):
                self._samples(request, model, family, step, on_samples)
        lora = model.kohya_file(request, losses)
        seconds = time.perf_counter() - started
        self._samples(request, model, family, settings.steps, on_samples, lora)
        return TrainingResult(
            lora=lora,
            losses=losses,
            steps=settings.steps,
            seconds=seconds,
            resumed_from=first_step,
            snapshot=training_snapshot(
                request, self.registry.fingerprint(request.model)
            ),
        )

    def _step(
        self,
        model: _TrainableModel,
        noise_scheduler: DDPMScheduler,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        by_bucket: dict[tuple[int, int], list[_Example]],
        embeddings: dict[str, dict[str, torch.Tensor]] | None,
        step: int,
        autocast_dtype: torch.dtype | None,
    ) -> float:
        settings = model.settings
        chooser = random.Random(settings.seed * 1_000_003 + step)
        buckets = sorted(by_bucket)
        weights = [len(by_bucket[b]) for b in buckets]
        bucket = chooser.choices(buckets, weights=weights)[0]
        batch = [chooser.choice(by_bucket[bucket]) for _ in range(settings.batch_size)]
        flips = [settings.flip and chooser.random() < 0.5 for _ in batch]
        latents = torch.cat(
            [
                example.latents[int(flip)]
                for example, flip in zip(batch, flips, strict=True)
            ]
        ).to(model.device)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        noise = torch.randn(latents.shape, generator=generator)
        if settings.noise_offset:
            noise += settings.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=generator
            )
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
        )
        noise, timesteps = noise.to(model.device), timesteps.to(model.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        captions = [example.caption for example in batch]
        with torch.autocast(
            device_type=model.device.type,
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        ):
            if embeddings is None:
                conditioning = model.family.encode(model.pipe, captions)
            else:
                conditioning = {
                    name: torch.cat([embeddings[c][name] for c in captions])
                    for name in embeddings[captions[0]]
                }
            prediction = model.pipe.unet(
                noisy.to(model.weight_dtype),
                timesteps,
                **model.family.unet_kwargs(model.pipe, conditioning, bucket),
            ).sample
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach().cpu())

    def _samples(
        self,
        request: TrainingRequest,
        model: _TrainableModel,
        family: TrainingFamily,
        step: int,
        on_samples: SampleCallback | None,
        lora: bytes | None = None,
    ) -> None:
        if on_samples is None or not request.validation_prompts:
            return
        weights = lora if lora is not None else model.kohya_file(request, [])
        settings = request.settings
        samples = []
        for prompt in request.validation_prompts:
            for seed in request.validation_seeds:
                result = self._engine.generate(
                    GenerationRequest(
                        model=request.model,
                        prompt=prompt,
                        method=Method.TEXT,
                        seed=seed,
                        steps=settings.sample_steps,
                        width=settings.resolution,
                        height=settings.resolution,
                        lora=LoraInput(
                            weights=weights, scale=1.0, name=request.output_name
                        ),
                    )
                )
                samples.append(ValidationSample(step, prompt, seed, result.images[0]))
        on_samples(step, samples)


class _TrainableModel:
    """The training copy of a base model with its LoRA layers."""

    def __init__(
        self,
        pipe: Any,
        family: TrainingFamily,
        settings: TrainingSettings,
        device: torch.device,
        weight_dtype: torch.dtype,
    ) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.pipe, self.family, self.settings = pipe, family, settings
        self.device, self.weight_dtype = device, weight_dtype
        on_gpu = device.type == "cuda"
        checkpointing = (
            on_gpu
            if settings.gradient_checkpointing is None
            else settings.gradient_checkpointing
        )
        pipe.vae.requires_grad_(False)
        pipe.unet.requires_grad_(False)
        for slot in family.text_encoders:
            getattr(pipe, slot.encoder).requires_grad_(False)
        pipe.to(device)
        if weight_dtype != torch.float32:
            for name in ("vae", "unet", *(s.encoder for s in family.text_encoders)):
                getattr(pipe, name).to(dtype=weight_dtype)
        # A fixed seed for the adapters' initial weights (lora_B starts at zero).
        torch.manual_seed(settings.seed)
        pipe.unet.add_adapter(
            LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                init_lora_weights="gaussian",
                target_modules=list(UNET_TARGET_MODULES),
            )
        )
        if checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            for slot in family.text_encoders:
                encoder = getattr(pipe, slot.encoder)
                # peft directly: transformers' add_adapter wants a newer peft.
                inject_adapter_in_model(
                    LoraConfig(
                        r=settings.rank,
                        lora_alpha=settings.alpha,
                        init_lora_weights="gaussian",
                        target_modules=list(TEXT_ENCODER_TARGET_MODULES),
                    ),
                    encoder,
                )
                if checkpointing:
                    encoder.gradient_checkpointing_enable()
        # The trained weights stay float32 under mixed precision.
        for module in self.trained_modules().values():
            for parameter in module.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
            module.train()

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """kohya prefix -> module, for every module with LoRA layers."""
        modules: dict[str, torch.nn.Module] = {"lora_unet": self.pipe.unet}
        if self.settings.train_text_encoder:
            for slot in self.family.text_encoders:
                modules[slot.kohya_prefix] = getattr(self.pipe, slot.encoder)
        return modules

    def parameter_groups(self) -> list[dict[str, Any]]:
        settings = self.settings
        groups = []
        for prefix, module in self.trained_modules().items():
            rate = settings.learning_rate
            if prefix != "lora_unet" and settings.text_encoder_learning_rate:
                rate = settings.text_encoder_learning_rate
            params = [p for p in module.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": rate})
        return groups

    @torch.no_grad()
    def cache_examples(self, images: Sequence[TrainingImage]) -> list[_Example]:
        """Latents of every image in its bucket, plain and flipped (computed
        once: the VAE is frozen)."""
        buckets = aspect_buckets(self.settings.resolution)
        vae = self.pipe.vae
        examples = []
        for index, item in enumerate(images):
            rgb = ImageOps.exif_transpose(item.image).convert("RGB")
            bucket = choose_bucket(rgb.size, buckets)
            fitted = ImageOps.fit(rgb, bucket, Image.Resampling.LANCZOS)
            latents = []
            for picture in (fitted, ImageOps.mirror(fitted)):
                pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32))
                pixels = (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)
                generator = torch.Generator().manual_seed(self.settings.seed + index)
                distribution = vae.encode(
                    pixels.to(self.device, self.weight_dtype)
                ).latent_dist
                sample = distribution.mean + distribution.std * torch.randn(
                    distribution.mean.shape, generator=generator
                ).to(self.device, distribution.mean.dtype)
                latents.append(
                    (sample * vae.config.scaling_factor).to(self.weight_dtype).cpu()
                )
            examples.append(_Example(bucket, latents, item.caption))
        return examples

    @torch.no_grad()
    def cache_embeddings(
        self, examples: Sequence[_Example]
    ) -> dict[str, dict[str, torch.Tensor]]:
        return {
            example.caption: self.family.encode(self.pipe, [example.caption])
            for example in examples
        }

    def peft_state(self) -> dict[str, torch.Tensor]:
        """The trained LoRA weights, PEFT-named under each module's prefix."""
        from peft.utils import get_peft_model_state_dict

        state = {}
        for prefix, module in self.trained_modules().items():
            for key, value in get_peft_model_state_dict(module).items():
                state[f"{prefix}/{key}"] = value.detach().float().cpu().contiguous()
        return state

    def load_peft_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        for prefix, module in self.trained_modules().items():
            own = {
                key.split("/", 1)[1]: value
                for key, value in state.items()
                if key.startswith(prefix + "/")
            }
            set_peft_model_state_dict(module, own)

    def kohya_file(self, request: TrainingRequest, losses: list[float]) -> bytes:
        """The LoRA as a kohya-layout ``.safetensors`` file."""
        settings = self.settings
        module_names = {"lora_unet": "unet"} | {
            slot.kohya_prefix: slot.encoder for slot in self.family.text_encoders
        }
        peft_named = {}
        for key, value in self.peft_state().items():
            prefix, name = key.split("/", 1)
            # convert_state_dict_to_kohya knows the pipelines' attribute names.
            peft_named[f"{module_names[prefix]}.{name}"] = value
        renames = {
            CONVERTER_PREFIXES[slot.encoder]: slot.kohya_prefix + "_"
            for slot in self.family.text_encoders
        }
        weights = {}
        for key, value in convert_state_dict_to_kohya(peft_named).items():
            for converted, wanted in renames.items():
                if key.startswith(converted):
                    rest = key[len(converted) :]
                    # kohya and AUTOMATIC1111 name CLIP's layers under
                    # text_model, a level transformers 5 no longer has.
                    if not rest.startswith(KOHYA_CLIP_ROOT):
                        rest = KOHYA_CLIP_ROOT + rest
                    key = wanted + rest
            if key.endswith(".alpha"):
                # The converter writes alpha = rank; ours may differ.
                value = torch.tensor(float(settings.alpha))
            weights[key] = value.contiguous()
        metadata = {
            "ss_network_module": KOHYA_NETWORK_MODULE,
            "ss_network_dim": str(settings.rank),
            "ss_network_alpha": str(settings.alpha),
            "ss_base_model_version": self.family.base_model_version,
            "ss_output_name": request.output_name,
            "ss_max_train_steps": str(settings.steps),
            "ss_learning_rate": str(settings.learning_rate),
            "ss_resolution": str(settings.resolution),
            "ss_seed": str(settings.seed),
            "studio_trigger_word": request.trigger_word,
            "studio_settings": json.dumps(settings.to_dict(), sort_keys=True),
        }
        return save(dict(sorted(weights.items())), metadata=metadata)


def _optimizer(groups: list[dict[str, Any]], on_gpu: bool) -> torch.optim.Optimizer:
    """8-bit AdamW where bitsandbytes is installed and a GPU runs; AdamW else."""
    if on_gpu:
        try:
            import bitsandbytes
        except ImportError:
            pass
        else:
            return bitsandbytes.optim.AdamW8bit(groups)
    return torch.optim.AdamW(groups)


def _group_by_bucket(
    examples: Sequence[_Example],
) -> dict[tuple[int, int], list[_Example]]:
    groups: dict[tuple[int, int], list[_Example]] = {}
    for example in examples:
        groups.setdefault(example.bucket, []).append(example)
    return groups


# --- Checkpoints -----------------------------------------------------------------


def checkpoint_folder(work_dir: Path, step: int) -> Path:
    return Path(work_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The last complete checkpoint folder under ``work_dir``, if any."""
    folders = sorted(
        folder
        for folder in Path(work_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if (folder / CHECKPOINT_STATE).is_file()
    )
    return folders[-1] if folders else None


def _resume_key(settings: TrainingSettings) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (the
    intervals may change)."""
    values = settings.to_dict()
    for name in ("checkpoint_every", "sample_every", "sample_steps"):
        values.pop(name)
    return values


def _save_checkpoint(
    work_dir: Path,
    step: int,
    model: _TrainableModel,
    optimizer: torch.optim.Optimizer,
    settings: TrainingSettings,
    losses: list[float],
) -> Path:
    """Write a checkpoint atomically: into a temporary folder, then renamed (the
    state file, written last, marks it complete)."""
    folder = checkpoint_folder(work_dir, step)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(model.peft_state(), partial / CHECKPOINT_LORA)
    torch.save(optimizer.state_dict(), partial / CHECKPOINT_OPTIMIZER)
    save_file({"cpu": torch.get_rng_state()}, partial / CHECKPOINT_RNG)
    (partial / CHECKPOINT_STATE).write_text(
        json.dumps(
            {"step": step, "losses": losses, "settings": _resume_key(settings)},
            indent=1,
        )
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _load_checkpoint(
    folder: Path,
    model: _TrainableModel,
    optimizer: torch.optim.Optimizer,
    settings: TrainingSettings,
) -> tuple[int, list[float]]:
    folder = Path(folder)
    try:
        state = json.loads((folder / CHECKPOINT_STATE).read_text())
    except (OSError, ValueError) as error:
        raise InvalidRequest(
            f"The checkpoint {folder.name} is unreadable: {error}"
        ) from None
    if state.get("settings") != _resume_key(settings):
        raise InvalidRequest(
            f"The checkpoint {folder.name} was made with other settings; start a "
            "new run instead of resuming this one."
        )
    step = int(state["step"])
    if step > settings.steps:
        raise InvalidRequest(
            f"The checkpoint is at step {step}, past the run's {settings.steps}."
        )
    model.load_peft_state(load_file(folder / CHECKPOINT_LORA))
    optimizer.load_state_dict(
        torch.load(folder / CHECKPOINT_OPTIMIZER, weights_only=True)
    )
    torch.set_rng_state(load_file(folder / CHECKPOINT_RNG)["cpu"])
    return step, [float(loss) for loss in state["losses"]]


# --- Snapshot --------------------------------------------------------------------


def training_snapshot(
    request: TrainingRequest, model_fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """What produced a LoRA: inputs by hash, captions, settings, base model
    fingerprint and library versions."""
    return {
        "model": request.model,
        "family": request.family,
        "model_fingerprint": model_fingerprint,
        "images": [
            {"sha256": image_sha256(item.image), "caption": item.caption}
            for item in request.images
        ],
        "settings": request.settings.to_dict(),
        "validation_prompts": list(request.validation_prompts),
        "validation_seeds": list(request.validation_seeds),
        "trigger_word": request.trigger_word,
        "libraries": library_versions(),
    }
