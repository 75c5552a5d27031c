"""The engine: turns a ``GenerationRequest`` into images through real diffusers
pipelines from the registry.

One ``generate`` call: check and plan the request (``methods.plan_method``; every
awkward request fails here, before any model work), prepare the inputs (the
reference fitted to the size, control images, face crops), take the pipeline
from the registry, set the job's IP-Adapter and LoRA for the call only
(``PipelineRegistry.job_state``), call the pipeline with the same arguments a
person would give raw diffusers, and record a snapshot (``snapshot.py``).

The pipeline classes, the prompt encoding and the size micro-conditioning are
the model family's (``families``): the same code runs SD 1.5 and SDXL. A model
with a refiner (SDXL) runs text and img2img as diffusers' "ensemble of expert
denoisers": the base to ``denoising_end`` with latent output, then the refiner
from ``denoising_start`` on those latents.

The call matches raw diffusers on purpose: a prompt that fits the text encoder
goes in as ``prompt=``; SDXL's size micro-conditioning is passed with the
pipeline's own defaults (the output size, no crop), so the snapshot shows it;
our conditioning scale is always passed (the hybrid pipeline's default differs
from plain ControlNet's); the seed seeds a CPU
``torch.Generator`` (see ``snapshot.GENERATOR_DEVICE``); images come back as PIL.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .config import EngineConfig
from .editing import EditInputs, edit_inputs
from .embeddings import EmbeddingCache
from .errors import GenerationCancelled, InvalidRequest, ModelNotFound, OutOfMemory
from .face import crop_face
from .families import Family, family
from .inpaint import check_inpaint_request, inpaint_region, paste_back
from .methods import (
    MethodPlan,
    asks_for_ip_adapter,
    plan_method,
)
from .preprocessors import make_control_image
from .preview import PreviewCallback, PreviewDecoder
from .prompts import encode_long_prompt, needs_chunking_for, prompt_token_ids
from .registry import PipelineRegistry
from .requests import (
    ControlImageOutput,
    GenerationRequest,
    GenerationResult,
    InpaintRequest,
    InpaintResult,
    Method,
    ReferenceInput,
    Timings,
)
from .resize import fit_for_image_encoder, fit_to_size
from .safety import check_outputs
from .snapshot import (
    GENERATOR_DEVICE,
    build_inpaint_snapshot,
    build_snapshot,
    image_sha256,
    images_by_hash,
)
from .vocabulary import (
    METHODS_WITH_CONTROL,
    METHODS_WITH_STRENGTH,
    REFINED_METHODS,
    TINY_MODEL_NOTICE,
    Denoiser,
    Guidance,
    MultiReference,
    ProgressPhase,
    ReferenceRole,
    SafetyPolicy,
)

# The refiner pipeline's own defaults, passed explicitly so the snapshot has them.
REFINER_AESTHETIC_SCORE = 6.0
REFINER_NEGATIVE_AESTHETIC_SCORE = 2.5

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
PhaseCallback = Callable[[ProgressPhase], None]


@dataclass
class _Inputs:
    """The images a job hands to the pipeline, made before any model is loaded."""

    init_image: Image.Image | None = None
    control_images: list[Image.Image] = field(default_factory=list)
    ip_adapter_images: list[Image.Image] = field(default_factory=list)
    face_crops: list[dict[str, Any]] = field(default_factory=list)
    edit: EditInputs | None = None


class Engine:
    """Generates images for requests; one instance per worker process (it owns a
    pipeline registry, whose loaded models stay warm across jobs)."""

    def __init__(
        self, config: EngineConfig, registry: PipelineRegistry | None = None
    ) -> None:
        self._config = config
        self._registry = registry if registry is not None else PipelineRegistry(config)
        self._previews: PreviewDecoder | None = None

    @property
    def registry(self) -> PipelineRegistry:
        return self._registry

    def plan(self, request: GenerationRequest) -> MethodPlan:
        """Check ``request`` and resolve its method (see ``methods``), then check
        that its ControlNets, IP-Adapter and LoRA fit the model's family."""
        if request.model not in self._config.models:
            return plan_method(
                request,
                models=self._config.models,
                controlnets=self._config.controlnets,
                ip_adapter_installed=self._registry.ip_adapter_installed,
            )
        if (
            asks_for_ip_adapter(request)
            and self._registry.plan_family(request.model).ip_adapter is not None
        ):
            # Asked for: why a configured one is not here (its repository,
            # revision and missing file), not only that it is not installed.
            self._registry.check_ip_adapter_installed(request.model)
        plan = plan_method(
            request,
            models=self._config.models,
            controlnets=self._registry.controlnet_types(request.model),
            # auto adds only an IP-Adapter made for the model's family; an
            # explicit one of another family is refused below, with the reason.
            ip_adapter_installed=self._registry.ip_adapter_fits(request.model)
            if request.method == Method.AUTO
            else self._registry.ip_adapter_installed_for(request.model),
            model_family=self._registry.plan_family(request.model),
        )
        self._registry.check_fits(request.model, plan, request.lora)
        return plan

    def validate(self, request: GenerationRequest) -> None:
        """Raise ``InvalidRequest`` or ``ModelNotFound`` for a request that cannot
        run; loads nothing."""
        self.plan(request)

    def choose_method(self, request: GenerationRequest) -> tuple[Method, str]:
        """The method the request runs with, and why (the auto rules)."""
        plan = self.plan(request)
        return plan.method, plan.reason

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_phase: PhaseCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> GenerationResult:
        """Run ``request``. ``on_step(step, total)`` is called after every
        denoising step; ``should_cancel()`` is checked before the run and after
        every step, and True ends the job with ``GenerationCancelled``.
        ``on_phase(phase)`` is told when preparing the inputs, loading the model
        and denoising begin; ``on_preview(step, total, image)`` gets a live
        preview of the latents every few steps (``PreviewConfig``). Running out
        of device memory shrinks the registry's footprint and raises
        ``OutOfMemory`` (transient: a retry may fit)."""
        started = time.perf_counter()
        plan = self.plan(request)
        notes: list[str] = []
        if on_phase is not None:
            on_phase(ProgressPhase.PREPARING)
        inputs = self._prepare(request, plan, notes)
        preprocess = time.perf_counter() - started

        if on_phase is not None:
            on_phase(ProgressPhase.LOADING)
        loading = time.perf_counter()
        try:
            pipe, hit = self._registry.pipeline(
                request.model,
                plan.base,
                plan.control_types,
                scheduler=request.scheduler,
            )
            refiner = (
                self._registry.refiner(request.model, scheduler=request.scheduler)
                if plan.base in REFINED_METHODS and request.use_refiner
                else None
            )
            with self._registry.job_state(
                pipe,
                ip_adapter=plan.ip_adapter,
                lora=request.lora,
                model_key=request.model,
            ):
                load = time.perf_counter() - loading
                encoding = time.perf_counter()
                kwargs, prompt_encoding = self._call_kwargs(request, plan, inputs, pipe)
                refiner_kwargs = refiner_encoding = None
                if refiner is not None:
                    switch = self._config.models[request.model].refiner_switch
                    kwargs["denoising_end"] = switch
                    kwargs["output_type"] = "latent"
                    refiner_kwargs, refiner_encoding = _refiner_kwargs(
                        request, kwargs, switch, refiner, family(plan.family)
                    )
                preprocess += time.perf_counter() - encoding
                if on_phase is not None:
                    on_phase(ProgressPhase.DENOISING)
                inference_started = time.perf_counter()
                preview = self._preview_hook(request.model, on_preview)
                images = self._run(pipe, kwargs, on_step, should_cancel, preview)
                if refiner is not None:
                    # The base's latents, denoised the rest of the way.
                    images = self._run(
                        refiner,
                        {**refiner_kwargs, "image": images},
                        on_step,
                        should_cancel,
                        preview,
                        step_offset=pipe.num_timesteps,
                    )
                safety = check_outputs(
                    images,
                    self._config.safety_policy,
                    None
                    if self._config.safety_policy is SafetyPolicy.OFF
                    else self._registry.safety_checker(request.model),
                )
                images = safety.images
                inference = time.perf_counter() - inference_started
        except torch.OutOfMemoryError as error:
            self._registry.reduce_footprint()
            raise OutOfMemory(
                "The device ran out of memory; attention slicing and VAE tiling are "
                "now on, so a retry may fit. Otherwise lower the size or the number "
                "of images."
            ) from error

        if prompt_encoding.get("truncated"):
            notes.append(
                f"The prompt has {prompt_encoding['prompt_tokens']} tokens; the "
                f"text encoder reads {prompt_encoding['window']}: the rest was cut."
            )
        distilled = family(plan.family).guidance is Guidance.DISTILLED
        if distilled and request.negative_prompt and "negative_prompt" not in kwargs:
            notes.append(
                f"{family(plan.family).label} is guidance-distilled: the negative "
                "prompt was not used (it is used with true_cfg_scale above 1)."
            )
        if prompt_encoding["chunks"] > 1:
            notes.append(
                f"The prompt was longer than the text encoder's window: it was "
                f"encoded in {prompt_encoding['chunks']} chunks, not truncated."
            )
        refiner_record = None
        if refiner is not None:
            refiner_record = {
                "pipe": refiner,
                "call_kwargs": refiner_kwargs,
                "prompt_encoding": refiner_encoding,
                "without": _refiner_skips(plan, request),
            }
            if refiner_record["without"]:
                refiner_record["without_reason"] = REFINER_SKIP_REASON
                notes.append(refiner_skip_note(refiner_record["without"]))
        elif (
            plan.base in REFINED_METHODS
            and self._config.models[request.model].refiner is not None
        ):
            notes.append(
                "The refiner was switched off for this run: the base ran alone."
            )
        model_fingerprint = dict(self._registry.fingerprint(request.model))
        if refiner is None:
            # What did not run is not recorded (nor verified by a replay).
            model_fingerprint.pop("refiner", None)
        tiny = self._config.models[request.model].is_tiny
        if not (tiny and safety.flagged is None):
            # (The tiny model's notice already says its images mean nothing.)
            notes.extend(safety.notes)
        if tiny:
            notes.append(TINY_MODEL_NOTICE)
        snapshot = build_snapshot(
            request,
            plan,
            pipe=pipe,
            call_kwargs=kwargs,
            model_fingerprint=model_fingerprint,
            controlnet_fingerprints=[
                self._registry.controlnet_fingerprint(control_type, request.model)
                for control_type in plan.control_types
            ],
            ip_adapter_weights=self._ip_adapter_weights(request.model, plan),
            face_crops=inputs.face_crops,
            prompt_encoding=prompt_encoding,
            outputs=images,
            device=str(self._registry.device),
            dtype=str(self._registry.model_dtype(request.model)).removeprefix(
                "torch."
            ),
            safety=safety.record,
            refiner=refiner_record,
            reference_edit=None if inputs.edit is None else inputs.edit.record,
        )
        return GenerationResult(
            images=images,
            control_images=[
                ControlImageOutput(control_type=control_type, image=image)
                for control_type, image in zip(
                    plan.control_types, inputs.control_images, strict=True
                )
            ],
            method=plan.method,
            method_reason=plan.reason,
            snapshot=snapshot,
            timings=Timings(
                load=load,
                preprocess=preprocess,
                inference=inference,
                total=time.perf_counter() - started,
            ),
            registry_hit=hit,
            notes=notes,
            flagged=safety.flagged,
            call_images=images_by_hash(kwargs),
        )

    def _prepare(
        self, request: GenerationRequest, plan: MethodPlan, notes: list[str]
    ) -> _Inputs:
        """Fit the init reference, make the control images, crop the faces."""
        inputs = _Inputs()
        if plan.init_reference is not None:
            inputs.init_image = fit_to_size(
                request.references[plan.init_reference].image,
                request.width,
                request.height,
                request.resize_mode,
            )
        for unit, reference in zip(
            request.control_units, plan.unit_references, strict=True
        ):
            # The reference is fitted with the same mode as the init image, so a
            # control map lines up with it pixel for pixel.
            inputs.control_images.append(
                make_control_image(
                    unit,
                    unit.control_image
                    if reference is None
                    else request.references[reference].image,
                    request.width,
                    request.height,
                    annotators_dir=self._config.annotators_dir,
                    seg_model=self._config.seg_model,
                    offline=self._config.offline,
                    resize_mode=request.resize_mode,
                    # Every detector with weights follows its parameters' device.
                    device=str(self._registry.device),
                )
            )
        if plan.ip_adapter is not None:
            inputs.ip_adapter_images, inputs.face_crops = _ip_adapter_images(
                request.references,
                plan.ip_adapter_references,
                plan.ip_adapter.face_crop,
                notes,
            )
        if plan.base is Method.REFERENCE_EDIT:
            inputs.edit = edit_inputs(
                [reference.image for reference in request.references],
                plan.edit_references,
                family(plan.family),
                request.width,
                request.height,
            )
        return inputs

    def inpaint(
        self,
        request: InpaintRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> InpaintResult:
        """Redraw the masked region of ``request.image`` with the family's inpaint
        pipeline (``inpaint`` has the geometry) and paste it back."""
        started = time.perf_counter()
        if request.model not in self._config.models:
            raise ModelNotFound(
                f"Unknown model {request.model!r}; configured: "
                f"{', '.join(self._config.models) or 'none'}."
            )
        check_inpaint_request(request)
        row = self._registry.family(request.model)
        # The same fit checks as generation (its IP-Adapter and LoRA).
        adapters = MethodPlan(
            Method.TEXT,
            Method.TEXT,
            "inpaint",
            ip_adapter=request.ip_adapter,
            family=row.key,
        )
        self._registry.check_fits(request.model, adapters, request.lora)
        region = inpaint_region(request, row.default_size)
        notes: list[str] = []
        ip_images: list[Image.Image] = []
        face_crops: list[dict[str, Any]] = []
        indexes = _inpaint_ip_references(request)
        if request.ip_adapter is not None:
            ip_images, face_crops = _ip_adapter_images(
                request.references, indexes, request.ip_adapter.face_crop, notes
            )
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "image": region.image,
            "mask_image": region.mask,
            "strength": request.strength,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "width": region.width,
            "height": region.height,
            "generator": torch.Generator(GENERATOR_DEVICE).manual_seed(request.seed),
            "output_type": "pil",
        }
        if row.size_conditioning:
            size = (region.height, region.width)
            kwargs["original_size"] = size
            kwargs["target_size"] = size
            kwargs["crops_coords_top_left"] = (0, 0)
        if ip_images:
            kwargs["ip_adapter_image"] = [ip_images]
        preprocess = time.perf_counter() - started
        loading = time.perf_counter()
        try:
            pipe, hit = self._registry.inpaint_pipeline(
                request.model, scheduler=request.scheduler
            )
            with self._registry.job_state(
                pipe,
                ip_adapter=request.ip_adapter,
                lora=request.lora,
                model_key=request.model,
            ):
                load = time.perf_counter() - loading
                inference_started = time.perf_counter()
                output = self._run(pipe, kwargs, on_step, should_cancel)[0]
                inference = time.perf_counter() - inference_started
        except torch.OutOfMemoryError as error:
            self._registry.reduce_footprint()
            raise OutOfMemory(
                "The device ran out of memory while inpainting; attention slicing "
                "and VAE tiling are now on, so a retry may fit."
            ) from error
        image = paste_back(request.image, output, region.box, region.feathered)
        if self._config.models[request.model].is_tiny:
            notes.append(TINY_MODEL_NOTICE)
        ip_weights = self._ip_adapter_weights(request.model, adapters)
        snapshot = build_inpaint_snapshot(
            request,
            pipe=pipe,
            family_key=row.key,
            call_kwargs=kwargs,
            box=region.box,
            feathered=region.feathered,
            model_fingerprint=self._registry.fingerprint(request.model),
            ip_adapter_weights=ip_weights,
            ip_adapter_references=indexes,
            face_crops=face_crops,
            output=image,
            device=str(self._registry.device),
            dtype=str(self._registry.model_dtype(request.model)).removeprefix(
                "torch."
            ),
        )
        call_images = images_by_hash(kwargs)
        call_images.update(images_by_hash({"feathered": region.feathered}))
        return InpaintResult(
            image=image,
            before=request.image.convert("RGB"),
            box=region.box,
            feathered_mask=region.feathered,
            snapshot=snapshot,
            timings=Timings(
                load=load,
                preprocess=preprocess,
                inference=inference,
                total=time.perf_counter() - started,
            ),
            registry_hit=hit,
            notes=notes,
            call_images=call_images,
        )

    def detail(
        self, request: Any, *, should_cancel: CancelCheck | None = None
    ) -> Any:
        """The face detailer pass of a ``detailer.DetailerRequest`` (a
        ``DetailerResult``): each face redrawn through ``inpaint``, cancellable
        at every step."""
        from .detailer import detail_faces  # detailer builds on this module

        return detail_faces(self, request, should_cancel=should_cancel)

    def _call_kwargs(
        self,
        request: GenerationRequest,
        plan: MethodPlan,
        inputs: _Inputs,
        pipe: Any,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pipeline's keyword arguments, and how the prompt was encoded."""
        kwargs: dict[str, Any] = {
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": torch.Generator(GENERATOR_DEVICE).manual_seed(request.seed),
            "output_type": "pil",
        }
        row = family(plan.family)
        encoding = row.text_encoding
        if not encoding.chunked:
            prompt_encoding = _long_context_prompt(request, row, pipe, kwargs)
        elif needs_chunking_for(
            pipe, encoding, request.prompt
        ) or needs_chunking_for(pipe, encoding, request.negative_prompt):
            embeds, prompt_encoding = encode_long_prompt(
                pipe,
                encoding,
                request.prompt,
                request.negative_prompt,
                pipe._execution_device,
                _uses_classifier_free_guidance(pipe, request.guidance_scale),
            )
            kwargs.update(embeds)
        else:
            kwargs["prompt"] = request.prompt
            kwargs["negative_prompt"] = request.negative_prompt
            prompt_encoding = {"chunks": 1, "truncated": False}
        if plan.base in METHODS_WITH_STRENGTH:
            kwargs["image"] = inputs.init_image
            kwargs["strength"] = request.strength
        if plan.base is not Method.IMG2IMG or row.denoiser is Denoiser.TRANSFORMER:
            # SD's img2img pipelines take their size from the init image.
            kwargs["width"] = request.width
            kwargs["height"] = request.height
        if inputs.edit is not None:
            several = row.multi_reference is MultiReference.NATIVE
            kwargs["image"] = inputs.edit.images if several else inputs.edit.images[0]
            if row.multi_reference is MultiReference.STITCH:
                # The canvas is already sized (``editing``): the output keeps
                # the requested size, and the pipeline resizes nothing.
                kwargs["max_area"] = request.width * request.height
                kwargs["_auto_resize"] = False
        if row.size_conditioning:
            # The pipelines' defaults for an output of this size, made explicit.
            size = (request.height, request.width)
            kwargs["original_size"] = size
            kwargs["target_size"] = size
            kwargs["crops_coords_top_left"] = (0, 0)
        if plan.base in METHODS_WITH_CONTROL:
            units = request.control_units
            several = len(units) > 1
            # SD's text ControlNet pipeline takes the map as ``image``; its hybrid
            # and every FLUX.1 ControlNet pipeline as ``control_image``.
            takes = inspect.signature(pipe.__call__).parameters
            control_key = "control_image" if "control_image" in takes else "image"
            kwargs[control_key] = (
                inputs.control_images if several else inputs.control_images[0]
            )
            scales = [unit.conditioning_scale for unit in units]
            kwargs["controlnet_conditioning_scale"] = (
                [float(scale) for scale in scales] if several else float(scales[0])
            )
            kwargs["control_guidance_start"] = [unit.guidance_start for unit in units]
            kwargs["control_guidance_end"] = [unit.guidance_end for unit in units]
        if plan.ip_adapter is not None:
            # One list per loaded adapter (we load one); several references give
            # that adapter several images.
            kwargs["ip_adapter_image"] = [inputs.ip_adapter_images]
        return kwargs, prompt_encoding

    def _run(
        self,
        pipe: Any,
        kwargs: dict[str, Any],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
        on_latents: Callable[[int, int, Any], None] | None = None,
        *,
        step_offset: int = 0,
    ) -> Any:
        """Call the pipeline, reporting progress and honouring cancellation;
        ``step_offset`` steps were run before it (a refiner's, the base's)."""
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled("The generation was cancelled before it started.")

        def step_end(
            pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                on_step(step_offset + index + 1, step_offset + pipeline.num_timesteps)
            if on_latents is not None:
                on_latents(
                    step_offset + index + 1,
                    step_offset + pipeline.num_timesteps,
                    tensors["latents"],
                )
            if should_cancel is not None and should_cancel():
                # Raising (rather than setting ``_interrupt``) skips the VAE
                # decode of a result nobody wants; job_state still resets.
                raise GenerationCancelled(
                    f"The generation was cancelled after step {index + 1} of "
                    f"{pipeline.num_timesteps}."
                )
            return tensors

        return pipe(
            **_with_ip_adapter_embeds(pipe, kwargs), callback_on_step_end=step_end
        ).images

    def _preview_hook(
        self, model_key: str, on_preview: PreviewCallback | None
    ) -> Callable[[int, int, Any], None] | None:
        """The per-step latents hook that makes throttled previews for
        ``on_preview``; None when nobody asked or previews are off."""
        if on_preview is None:
            return None
        if self._previews is None:
            self._previews = PreviewDecoder(
                self._config.preview,
                device=self._registry.device,
                dtype=self._registry.dtype,
            )
        decoder = self._previews
        if not decoder.enabled:
            return None
        family_row = self._registry.family(model_key)
        if family_row.denoiser is Denoiser.TRANSFORMER:
            return None  # packed latents: no cheap preview of them (yet)
        throttle = decoder.throttle()

        def on_latents(step: int, total: int, latents: Any) -> None:
            if throttle.due(step, total):
                image = decoder.decode(latents, family_row)
                if image is not None:
                    on_preview(step, total, image)

        return on_latents

    def _ip_adapter_weights(
        self, model_key: str, plan: MethodPlan
    ) -> dict[str, Any] | None:
        """Which IP-Adapter files the job loaded (for the snapshot)."""
        spec = self._config.ip_adapter_for(model_key)
        if plan.ip_adapter is None or spec is None:
            return None
        return {
            "source": spec.source,
            "subfolder": spec.subfolder,
            "weight_name": spec.face_weight_name
            if plan.ip_adapter.face_crop
            else spec.weight_name,
            "image_encoder_folder": spec.image_encoder_folder,
            **(
                {"image_encoder_source": spec.image_encoder_source}
                if spec.image_encoder_source
                else {}
            ),
            # Verified by "regenerate exactly" (generation.services).
            "fingerprint": self._registry.ip_adapter_fingerprint(model_key),
        }


REFINER_SKIPS = {
    "ip_adapter": "the IP-Adapter",
    "lora": "the LoRA",
}
REFINER_SKIP_REASON = (
    "their weights are made for the base's UNet (its 2048-wide cross-attention "
    "and block layout), and diffusers refuses them on the refiner's (1280-wide, "
    "other blocks) for their shapes"
)
"""Why a refiner runs without the job's IP-Adapter and LoRA (docs/models.md):
diffusers' refiner pipeline has the loaders, but h94's SDXL adapters and SDXL
LoRAs target the base's UNet, and loading them on the refiner fails on the
shapes (tests/engine/test_sdxl_refiner.py shows it). They act on the base's
part of the schedule only."""


def _refiner_skips(plan: MethodPlan, request: GenerationRequest) -> list[str]:
    """What of the job the refiner runs without (``REFINER_SKIPS`` keys)."""
    return [
        name
        for name, used in (
            ("ip_adapter", plan.ip_adapter is not None),
            ("lora", request.lora is not None),
        )
        if used
    ]


def refiner_skip_note(skipped: list[str]) -> str:
    """The content's note for a refiner that ran without ``skipped``."""
    names = " and ".join(REFINER_SKIPS[name] for name in skipped)
    return (
        f"The refiner ran without {names}: {REFINER_SKIP_REASON}. They shaped the "
        "base's part of the schedule only; switch the refiner off for this run "
        "to keep them for every step."
    )


def _refiner_kwargs(
    request: GenerationRequest,
    base_kwargs: dict[str, Any],
    switch: float,
    refiner: Any,
    row: Family,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The refiner's keyword arguments (its ``image`` is the base's latents)
    and how its prompt was encoded: the prompts as text (the refiner encodes
    them with its one encoder), or, when one does not fit its window, their
    chunked embeddings (``prompts.encode_long_prompt`` with the family's
    ``refiner_text_encoding``), as for the base; the same steps, guidance,
    seed and size conditioning, the schedule from ``switch`` on, and the
    aesthetic scores the refiner's UNet is conditioned on (the pipeline's
    defaults, made explicit)."""
    size_conditioning = {
        name: base_kwargs[name]
        for name in ("original_size", "target_size", "crops_coords_top_left")
    }
    encoding = row.refiner_text_encoding
    prompts: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
    }
    prompt_encoding: dict[str, Any] = {"chunks": 1, "truncated": False}
    if encoding is not None and (
        needs_chunking_for(refiner, encoding, request.prompt)
        or needs_chunking_for(refiner, encoding, request.negative_prompt)
    ):
        prompts, prompt_encoding = encode_long_prompt(
            refiner,
            encoding,
            request.prompt,
            request.negative_prompt,
            refiner._execution_device,
            _uses_classifier_free_guidance(refiner, request.guidance_scale),
        )
    kwargs = {
        **prompts,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "num_images_per_prompt": request.num_images,
        "denoising_start": switch,
        "generator": torch.Generator(GENERATOR_DEVICE).manual_seed(request.seed),
        "output_type": "pil",
        **size_conditioning,
        "aesthetic_score": REFINER_AESTHETIC_SCORE,
        "negative_aesthetic_score": REFINER_NEGATIVE_AESTHETIC_SCORE,
    }
    return kwargs, prompt_encoding


def _inpaint_ip_references(request: InpaintRequest) -> tuple[int, ...]:
    """The references an inpaint's IP-Adapter sees: the chosen ones, else the
    face references, else the first."""
    if request.ip_adapter is None:
        return ()
    if request.ip_adapter.reference_indexes is not None:
        indexes = tuple(request.ip_adapter.reference_indexes)
    else:
        indexes = tuple(
            index
            for index, reference in enumerate(request.references)
            if reference.role == ReferenceRole.FACE
        ) or (0,)
    for index in indexes:
        if not 0 <= index < len(request.references):
            raise InvalidRequest(
                f"IP-Adapter: reference index {index} is out of range; the inpaint "
                f"request has {len(request.references)} reference image(s)."
            )
    return indexes


def _ip_adapter_images(
    references: list[ReferenceInput],
    indexes: tuple[int, ...],
    face_crop: bool,
    notes: list[str],
) -> tuple[list[Image.Image], list[dict[str, Any]]]:
    """The IP-Adapter's images (each reference cropped to its face for
    plus-face) and the face crops made, for the snapshot."""
    images: list[Image.Image] = []
    face_crops: list[dict[str, Any]] = []
    for index in indexes:
        image = references[index].image
        if face_crop:
            image, info = crop_face(image)
            face_crops.append({"reference": index, **info})
            if not info["face_found"]:
                notes.append(
                    f"No face found in reference {index}: the IP-Adapter saw the "
                    "whole image."
                )
        images.append(fit_for_image_encoder(image))
    return images, face_crops


def _long_context_prompt(
    request: GenerationRequest, row: Family, pipe: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Prompt arguments of a family whose sequence comes from a long-context
    encoder (FLUX.1's T5, Qwen-Image's Qwen2.5-VL): the prompt as it is, up to
    the encoder's window; the negative prompt where the guidance uses one:
    always for true CFG (Qwen-Image's pipelines guide with any negative prompt,
    an empty one too, at their ``true_cfg_scale``, 4.0 by default; 1 turns it
    off), and for FLUX.1 only with ``true_cfg_scale`` above 1. Returns the
    encoding record for the snapshot (token counts, truncation)."""
    encoding = row.text_encoding
    window = encoding.max_sequence_length
    kwargs["prompt"] = request.prompt
    kwargs["max_sequence_length"] = window
    true_cfg = request.true_cfg_scale
    if true_cfg is not None:
        kwargs["true_cfg_scale"] = true_cfg
    if row.guidance is Guidance.TRUE_CFG or (true_cfg is not None and true_cfg > 1):
        kwargs["negative_prompt"] = request.negative_prompt
    tokenizer_name = encoding.encoders[-1][0]
    tokens = len(prompt_token_ids(getattr(pipe, tokenizer_name), request.prompt))
    return {
        "chunks": 1,
        "prompt_tokens": tokens,
        "window": window,
        "truncated": window is not None and tokens + 1 > window,
    }


IP_ADAPTER_EMBEDDINGS = EmbeddingCache()
"""The IP-Adapter's image embeddings of references in this process, by the
hashes of the pixels the encoder sees (``embeddings``)."""


def _with_ip_adapter_embeds(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``ip_adapter_image`` replaced by the embeddings the
    pipeline would make of it (its own ``prepare_ip_adapter_image_embeds``, for
    one image per prompt), from ``IP_ADAPTER_EMBEDDINGS`` when the same images
    were encoded before: the same tensors, so the same pixels, without running
    the image encoder again. The pipeline repeats them per image as it does its
    own. Other calls go through as they are, FLUX.1's too (its pipelines
    prepare the embeddings another way, with a negative image for true CFG)."""
    images = kwargs.get("ip_adapter_image")
    encoder = getattr(pipe, "image_encoder", None)
    if (
        images is None
        or encoder is None
        or "guidance_scale" not in kwargs
        or getattr(pipe, "unet", None) is None
    ):
        return kwargs
    guided = _uses_classifier_free_guidance(pipe, kwargs["guidance_scale"])
    key = (
        "ip_adapter",
        guided,
        tuple(
            type(layer).__name__
            for layer in pipe.unet.encoder_hid_proj.image_projection_layers
        ),
        # The processor that turns the images into the encoder's input.
        pipe.feature_extractor.to_json_string(),
        tuple(tuple(image_sha256(image) for image in group) for group in images),
    )
    embeds = IP_ADAPTER_EMBEDDINGS.get(
        encoder,
        key,
        lambda: pipe.prepare_ip_adapter_image_embeds(
            images, None, pipe._execution_device, 1, guided
        ),
    )
    called = {name: kwargs[name] for name in kwargs if name != "ip_adapter_image"}
    return {**called, "ip_adapter_image_embeds": embeds}


def _uses_classifier_free_guidance(pipe: Any, guidance_scale: float) -> bool:
    """The rule of the pipelines' ``do_classifier_free_guidance`` property, which is
    only set inside a call."""
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
