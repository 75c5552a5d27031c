"""Writes on content records: the only way in for the admin, the gallery, the
command line, the job, the worker and the reconciler.

Rows first, jobs second (DESIGN.md decision 1): every service that starts work
creates or updates the row inside a transaction and enqueues its RQ job with
``transaction.on_commit``. When Redis is down at that moment the row stays
``queued`` without a job, and the reconciler enqueues it later. An active row's
``rq_job_id`` names the only job allowed to run it; state changes on an active row
are conditional on that id, so a stale or duplicate job is a no-op.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from generation import grids, selectors
from generation.cleanup import content_attempt_files, content_attempt_files_remove
from generation.engine.errors import EngineError
from generation.engine.plan import Problem, inpaint_problems, plan_problems
from generation.engine.requests import GenerationResult, InpaintRequest, InpaintResult
from generation.engine.vocabulary import (
    MAX_BATCH_COUNT,
    MAX_SEED,
    METHODS_NEEDING_REFERENCE,
    METHODS_WITH_CONTROL,
    Method,
    SeedPolicy,
)
from generation.engine_settings import (
    configured_models,
    engine_config,
    model_family,
)
from generation.grids import GridAxis
from generation.models import (
    INPAINT_KIND,
    Batch,
    BatchKind,
    Content,
    ContentControlImage,
    ContentStatus,
    ProgressPhase,
    ReviewState,
)
from generation.parameters import (
    DETAILER_KEY,
    GenerationOverrides,
    before_reference,
    detailer_outline,
    inpaint_outline,
    is_inpaint_request,
    open_stored_image,
    read_stored_bytes,
    request_for_persona,
    request_outline,
)
from generation.queued_rows import (
    RowJob,
    row_claim,
    row_finish_active,
    row_queue,
    row_requeue,
)
from generation.queues import get_queue
from generation.score_services import content_queue_scoring
from personas.files import files_delete_on_commit, written_files_removed_on_failure
from personas.models import Persona, ReferenceImage
from personas.services import control_unit_save, persona_update
from personas.uploads import PNG, encode_thumbnail, validate_image_upload
from personas.validators import validate_prompt_text

logger = logging.getLogger(__name__)

ENCODER_THREADS = 4
"""Threads that encode a finished job's files at the same time (output PNG,
thumbnails, control images): see ``_encoded_files``."""
PARALLEL_ENCODE_PIXELS = 512 * 512
"""Outputs of more pixels than this are encoded on the encoder threads; smaller
ones in the job's own thread, where handing them over costs more than it saves
(BENCHMARKS.md, issue 17: 64x64 outputs took longer on threads on a loaded
machine)."""

JOB_FUNCTION = "generation.jobs.content_generate"


# --- Starting generations -------------------------------------------------------


def content_enqueue(
    *,
    persona: Persona,
    prompt: str,
    negative_prompt: str = "",
    overrides: GenerationOverrides | None = None,
    user: AbstractBaseUser | None = None,
) -> Content:
    """Queue one generation for ``persona``; its job starts once this commits."""
    overrides = overrides or GenerationOverrides()
    (content,) = _create_contents(
        persona=persona,
        prompt=prompt,
        negative_prompt=negative_prompt,
        overrides=overrides,
        seeds=_seeds(persona, overrides, count=1),
        user=user,
    )
    return content


def content_enqueue_batch(
    *,
    persona: Persona,
    prompt: str,
    count: int,
    negative_prompt: str = "",
    overrides: GenerationOverrides | None = None,
    user: AbstractBaseUser | None = None,
    keep_best: int | None = None,
) -> Batch:
    """Queue ``count`` generations of one prompt, grouped in a batch.

    With a seed (overridden, or the persona's fixed one) the rows get that seed
    and the next ones (seed, seed + 1, ...); otherwise each gets a random seed.
    ``keep_best`` (best K of N): once all are scored, the outputs not among the
    ``keep_best`` of highest identity are marked "not kept"
    (``score_services.batch_apply_best_of``).
    """
    if keep_best is not None and not 1 <= keep_best < count:
        raise ValidationError(
            {
                "keep_best": ValidationError(
                    "Keep between 1 and %(most)s of %(count)s outputs (fewer than "
                    "you generate); got %(keep)s.",
                    code="keep_best_out_of_range",
                    params={"most": count - 1, "count": count, "keep": keep_best},
                )
            }
        )
    if not 1 <= count <= MAX_BATCH_COUNT:
        raise ValidationError(
            {
                "count": ValidationError(
                    "Generate between 1 and %(max)s images at once; got %(count)s.",
                    code="count_out_of_range",
                    params={"max": MAX_BATCH_COUNT, "count": count},
                )
            }
        )
    overrides = overrides or GenerationOverrides()
    with transaction.atomic():
        batch = Batch.objects.create(
            persona=persona,
            kind=BatchKind.BATCH,
            prompt=prompt,
            created_by=user,
            keep_best=keep_best,
        )
        _create_contents(
            persona=persona,
            prompt=prompt,
            negative_prompt=negative_prompt,
            overrides=overrides,
            seeds=_seeds(persona, overrides, count=count),
            user=user,
            batch=batch,
        )
    return batch


@dataclass(frozen=True)
class GridValueChoice:
    """What "use this value" changed: the persona, and the change in words."""

    persona: Persona
    setting: str
    value: str
    axis: str

    def __str__(self) -> str:
        return f"{self.persona}: {self.setting} {self.value}"


def content_grid(
    *,
    persona: Persona,
    prompt: str,
    axes: Sequence[GridAxis],
    negative_prompt: str = "",
    overrides: GenerationOverrides | None = None,
    user: AbstractBaseUser | None = None,
) -> Batch:
    """An X/Y/Z grid: one generation per tile, each the grid's overrides with
    its axis values, all with one seed unless an axis varies it, grouped in a
    batch of kind grid.

    The axes are checked against the persona first (``grids.axes_resolve``),
    then every tile's request by the plan check; when any tile is sure to
    fail, nothing is queued and the refusal names the tile. The method is the
    grid's (``overrides.method``) or the persona's, never replaced: a strength
    axis on a hybrid persona runs hybrid, and the sheet says which method
    each tile ran.
    """
    overrides = overrides or GenerationOverrides()
    try:
        axes = grids.axes_resolve(axes, persona=persona, overrides=overrides)
    except ValidationError as error:
        raise ValidationError({"axes": error.error_list}) from None
    (seed,) = _seeds(persona, overrides, count=1)
    base = replace(overrides, seed=seed, seed_policy=SeedPolicy.FIXED)
    units = {unit.pk: unit for unit in persona.control_units.all()}
    with transaction.atomic():
        batch = Batch.objects.create(
            persona=persona,
            kind=BatchKind.GRID,
            prompt=prompt,
            axes=[axis.as_json() for axis in axes],
            created_by=user,
        )
        tiles = []
        for cell in grids.grid_cells(axes):
            tile = grids.tile_overrides(axes, cell, base=base, units=units)
            try:
                (content,) = _create_contents(
                    persona=persona,
                    prompt=prompt,
                    negative_prompt=negative_prompt,
                    overrides=tile,
                    seeds=[tile.seed],
                    user=user,
                    batch=batch,
                )
            except ValidationError as error:
                # The whole grid is refused (the transaction rolls back: no
                # row stays, no job is enqueued), naming the tile.
                raise ValidationError(
                    "The tile %(tile)s is sure to fail, so nothing was queued: "
                    "%(reason)s",
                    code=_first_code(error) or "tile_sure_to_fail",
                    params={
                        "tile": grids.tile_label(axes, cell),
                        "reason": " ".join(error.messages),
                    },
                ) from None
            tiles.append([content.pk, list(cell)])
        batch.tiles = tiles
        batch.save(update_fields=["tiles"])
    return batch


def _first_code(error: ValidationError) -> str | None:
    return next((item.code for item in error.error_list if item.code), None)


@transaction.atomic
def persona_use_grid_value(
    *,
    batch: Batch,
    axis_index: int,
    value_index: int,
    user: AbstractBaseUser | None = None,
) -> GridValueChoice:
    """Write one value of one axis of a grid on its persona ("use this
    value"): a persona setting, or a setting of the ControlNet unit the axis
    varies, through the personas services like every persona write."""
    axes = [grids.GridAxis.from_json(data) for data in batch.axes]
    if not 0 <= axis_index < len(axes) or not (
        0 <= value_index < len(axes[axis_index].values)
    ):
        raise ValidationError(
            "Choose a value of one of this grid's axes.", code="no_such_value"
        )
    axis = axes[axis_index]
    value = axis.values[value_index]
    persona = Persona.objects.select_for_update().get(pk=batch.persona_id)
    if axis.parameter in grids.UNIT_PARAMETERS:
        unit = persona.control_units.filter(pk=axis.unit_id).first()
        if unit is None:
            raise ValidationError(
                "The ControlNet unit this axis varied is no longer on %(persona)s.",
                code="unit_gone",
                params={"persona": persona},
            )
        for name, unit_value in grids.unit_change(axis, value).items():
            setattr(unit, name, unit_value)
        control_unit_save(unit=unit)
    else:
        persona_update(persona=persona, data=grids.persona_change(axis, value))
    return GridValueChoice(
        persona=persona,
        setting=axis.label,
        value=axis.value_label(value_index),
        axis=grids.AXIS_NAMES[axis_index],
    )


def content_regenerate(
    *, content: Content, user: AbstractBaseUser | None = None
) -> Content:
    """Queue the same generation again with a new random seed (only the seed
    varies, DESIGN.md decision 8)."""
    return _copy_content(
        content, seed=_random_seed(), replay_snapshot=None, inputs={}, user=user
    )


def content_regenerate_exactly(
    *, content: Content, user: AbstractBaseUser | None = None
) -> Content:
    """Queue a replay of a succeeded generation's snapshot: the same pixels on the
    same hardware, or a clear refusal when an input has changed since."""
    if content.status != ContentStatus.SUCCEEDED or not content.snapshot:
        raise ValidationError(
            "Only a generation that succeeded has a snapshot to replay; use "
            "“Regenerate” for a new seed, or “Retry”.",
            code="no_snapshot",
        )
    changed = snapshot_changes(content.snapshot, inputs=content.inputs)
    if changed:
        raise ValidationError(
            "Cannot regenerate exactly: %(changed)s since this output was made, so "
            "the replay would give other pixels. Use “Regenerate” for a new "
            "generation on what is configured now.",
            code="inputs_changed",
            params={"changed": "; ".join(changed)},
        )
    return _copy_content(
        content,
        seed=content.seed,
        replay_snapshot=content.snapshot,
        inputs=content.inputs,
        user=user,
    )


def content_inpaint(
    *,
    content: Content,
    mask: Any,
    prompt: str,
    strength: float,
    user: AbstractBaseUser | None = None,
) -> Content:
    """Queue an inpaint of ``content``'s output: the white part of ``mask`` (an
    uploaded PNG the size of the output) redrawn with ``prompt`` at
    ``strength``, as a new content linked to ``content`` (``inpainted_from``)
    and reviewed like every other.

    Refused before anything is queued, with what to fix: an output that did not
    succeed, a mask that is not a sound PNG (the upload checks bound its bytes,
    pixels and decoding), of another size, or empty, numbers out of range, a
    model family without an inpaint pipeline. The mask is stored as the new
    row's own file (``Content.inpaint_mask``), the output it redraws is named
    by its storage name; the sampling is the original's, the seed new.
    """
    if content.status != ContentStatus.SUCCEEDED or not content.output_image:
        raise ValidationError(
            "Only a generation that succeeded has an output to inpaint; content "
            "#%(id)s is %(status)s.",
            code="not_inpaintable",
            params={"id": content.pk, "status": content.get_status_display()},
        )
    _validate_prompts(prompt=prompt, negative_prompt="")
    validated = validate_image_upload(mask, name=getattr(mask, "name", "") or "")
    if validated.source_format != PNG:
        raise ValidationError(
            "The mask must be a PNG (white where the output is redrawn, black "
            "elsewhere), as the brush exports it; got a %(format)s.",
            code="mask_not_png",
            params={"format": validated.source_format},
        )
    validated.seek(0)
    png = validated.read()
    mask_image = Image.open(io.BytesIO(png)).convert("L")
    size = _stored_image_size(content.output_image.name)
    original = content.request
    request = {
        "kind": INPAINT_KIND,
        "model": original["model"],
        "image": content.output_image.name,
        "mask": "",  # the new row's own file, once stored
        "prompt": prompt,
        "negative_prompt": original["negative_prompt"],
        "seed": _random_seed(),
        "steps": original["steps"],
        "guidance_scale": original["guidance_scale"],
        "strength": strength,
        "mask_blur": settings.STUDIO_MASK_BLUR,
        "only_masked": True,
        "only_masked_padding": settings.STUDIO_ONLY_MASKED_PADDING,
        "size": None,
        "scheduler": original.get("scheduler"),
        "width": size[0],
        "height": size[1],
    }
    _raise_problems(
        _inpaint_problems(inpaint_outline(request, size=size, mask=mask_image))
    )
    with written_files_removed_on_failure() as written, transaction.atomic():
        child = Content(
            persona=content.persona,
            inpainted_from=content,
            prompt=prompt,
            negative_prompt=content.negative_prompt,
            method_requested=content.method_requested,
            seed=request["seed"],
            request=request,
            before_reference=content.before_reference,
            created_by=user,
        )
        _queue_row(child, delay_seconds=0)
        child.save()
        _store_mask(child, png, written)
    return child


def _store_mask(row: Content, png: bytes, written: Any) -> None:
    """Store an inpaint row's mask as its own file and name it in its request."""
    written.save(row.inpaint_mask, "mask.png", ContentFile(png))
    row.request = {**row.request, "mask": row.inpaint_mask.name}
    row.save(update_fields=["inpaint_mask", "request"])


def _stored_image_size(name: str) -> tuple[int, int]:
    """The size of a stored image, read from its header."""
    try:
        with default_storage.open(name, "rb") as file:
            return Image.open(file).size
    except FileNotFoundError:
        raise ValidationError(
            "The output %(name)s is no longer in storage; regenerate it first.",
            code="output_missing",
            params={"name": name},
        ) from None


def snapshot_changes(
    snapshot: dict[str, Any], *, inputs: dict[str, str]
) -> list[str]:
    """What differs now from the weights a snapshot recorded: the model (and
    its VAE), each ControlNet, the IP-Adapter and the LoRA, each named with the
    recorded and the current fingerprint; [] when all are the same (what the
    snapshot did not record is not verified).

    A local model's fingerprint hashes all its files (``sources.fingerprint``),
    as the worker's registry does once per process; a Hub model's is its commit.
    """
    from generation.engine.errors import EngineError
    from generation.engine.snapshot import bytes_sha256

    changes = []
    config = engine_config()
    recorded_model = dict(snapshot.get("model") or {})
    key = recorded_model.pop("key", None)
    spec = config.models.get(key)
    if not recorded_model:
        pass  # no fingerprint recorded: nothing to verify
    elif spec is None:
        changes.append(f"the model {key!r} is no longer configured")
    else:
        try:
            current = _model_fingerprint(config, spec)
        except EngineError as error:
            changes.append(f"the model {key!r} cannot be found ({error})")
        else:
            if not snapshot.get("refiner"):
                # A run without the refiner (none then, or switched off) does
                # not depend on it.
                current.pop("refiner", None)
            changes += _fingerprint_changes(
                f"the model {key!r}", recorded_model, current
            )
    for unit in snapshot.get("control_units") or []:
        control_type = unit["control_type"]
        what = f"the {control_type!r} ControlNet"
        try:
            current = _controlnet_fingerprint(config, control_type, key)
        except EngineError as error:
            changes.append(f"{what} cannot be found ({error})")
        else:
            changes += _fingerprint_changes(what, unit.get("controlnet") or {}, current)
    adapter = snapshot.get("ip_adapter")
    if adapter:
        changes += _ip_adapter_changes(config, key, adapter)
    lora = snapshot.get("lora")
    if lora:
        lora_input = (snapshot.get("request") or {}).get("lora") or {}
        name = inputs.get(lora_input.get("weights", ""))
        try:
            weights = read_stored_bytes(name) if name else None
        except EngineError:
            weights = None
        if weights is None:
            changes.append(f"the LoRA {lora['name']!r} is no longer in storage")
        elif bytes_sha256(weights) != lora["sha256"]:
            changes.append(
                f"the LoRA {lora['name']!r} changed (sha256 {lora['sha256'][:12]} "
                f"then, {bytes_sha256(weights)[:12]} now)"
            )
    return changes


_FINGERPRINT_FIELDS = (
    "source",
    "revision",
    "variant",
    "commit",
    "sha256",
    "quantization",
)


def _fingerprint_changes(
    what: str, recorded: dict[str, Any], current: dict[str, Any]
) -> list[str]:
    changes = []
    for field in _FINGERPRINT_FIELDS:
        then, now = recorded.get(field), current.get(field)
        if then != now:
            if field in ("commit", "sha256"):
                then, now = (value and value[:12] for value in (then, now))
            changes.append(f"{what} changed ({field} {then} then, {now} now)")
            break  # one line per input: the first field that differs
    for part in ("config", "vae", "refiner"):
        if recorded.get(part) or current.get(part):
            changes += _fingerprint_changes(
                f"{what}'s {part}", recorded.get(part) or {}, current.get(part) or {}
            )
    return changes


def _model_fingerprint(config: Any, spec: Any) -> dict[str, Any]:
    from generation.engine.sources import model_fingerprint

    return model_fingerprint(spec, config)


def _controlnet_fingerprint(
    config: Any, control_type: str, model_key: str | None
) -> dict[str, Any]:
    from generation.engine.errors import ModelNotFound
    from generation.engine.sources import fingerprint, resolve_controlnet, with_variant

    spec = config.controlnet_spec(control_type, model_key)
    if spec is None:
        raise ModelNotFound(f"no ControlNet is configured for {control_type!r}")
    return with_variant(fingerprint(resolve_controlnet(spec, config)), spec.variant)


def _ip_adapter_changes(
    config: Any, model_key: str | None, recorded: dict[str, Any]
) -> list[str]:
    """The IP-Adapter's source and files, and its fingerprint where the
    snapshot recorded one."""
    from generation.engine.errors import EngineError
    from generation.engine.sources import fingerprint, resolve_ip_adapter, with_variant

    spec = config.ip_adapter_for(model_key)
    if spec is None:
        return ["the IP-Adapter is no longer configured"]
    current = {
        "source": spec.source,
        "subfolder": spec.subfolder,
        "image_encoder_folder": spec.image_encoder_folder,
    }
    for field, now in current.items():
        if recorded.get(field) != now:
            return [
                f"the IP-Adapter changed ({field} {recorded.get(field)} then, "
                f"{now} now)"
            ]
    if recorded.get("weight_name") not in (spec.weight_name, spec.face_weight_name):
        return [
            f"the IP-Adapter's weights {recorded.get('weight_name')} are no longer "
            "configured"
        ]
    if "fingerprint" in recorded:
        try:
            now = with_variant(
                fingerprint(
                    resolve_ip_adapter(spec, config, recorded["weight_name"])
                ),
                spec.variant,
            )
        except EngineError as error:
            return [f"the IP-Adapter cannot be found ({error})"]
        return _fingerprint_changes("the IP-Adapter", recorded["fingerprint"], now)
    return []


# --- Acting on a row ------------------------------------------------------------


@transaction.atomic
def content_cancel(
    *, content: Content, user: AbstractBaseUser | None = None
) -> Content:
    """Cancel a generation: a queued one at once, a running one at its next step
    (the job checks ``cancel_requested`` after every denoising step)."""
    content = Content.objects.select_for_update().get(pk=content.pk)
    if content.status == ContentStatus.QUEUED:
        content.status = ContentStatus.CANCELLED
        content.finished_at = timezone.now()
        content.error_code = "cancelled"
        content.error_message = "Cancelled before it started."
        content.save(
            update_fields=["status", "finished_at", "error_code", "error_message"]
        )
        files_delete_on_commit(content_attempt_files(content))
        queue_name, job_id = content.queue_name, content.rq_job_id
        transaction.on_commit(lambda: _cancel_job(queue_name, job_id), robust=True)
    elif content.status == ContentStatus.RUNNING:
        content.cancel_requested = True
        content.save(update_fields=["cancel_requested"])
    else:
        raise ValidationError(
            "Content #%(id)s has already finished (%(status)s); there is nothing "
            "to cancel.",
            code="not_active",
            params={"id": content.pk, "status": content.get_status_display()},
        )
    return content


def content_move_to_front(
    *, content: Content, user: AbstractBaseUser | None = None
) -> Content:
    """Put a queued generation's job at the front of its RQ queue, so the next
    free worker of that queue takes it (RQ stays the engine: its own list,
    its own ``push_job_id(at_front=True)``)."""
    content = Content.objects.get(pk=content.pk)
    if content.status != ContentStatus.QUEUED:
        raise ValidationError(
            "Only a queued generation can move up; content #%(id)s is %(status)s.",
            code="not_queued",
            params={"id": content.pk, "status": content.get_status_display()},
        )
    queue = get_queue(content.queue_name)
    if content.rq_job_id not in queue.get_job_ids():
        raise ValidationError(
            "Content #%(id)s is not waiting in the %(queue)s queue (it is due "
            "later, or the reconciler is about to enqueue it again).",
            code="not_in_queue",
            params={"id": content.pk, "queue": content.queue_name},
        )
    with queue.connection.pipeline() as pipe:
        queue.remove(content.rq_job_id, pipeline=pipe)
        queue.push_job_id(content.rq_job_id, pipeline=pipe, at_front=True)
        pipe.execute()
    return content


@transaction.atomic
def content_retry(*, content: Content, user: AbstractBaseUser | None = None) -> Content:
    """Run a failed or cancelled generation again as it was (its frozen
    request), with a fresh attempt budget."""
    content = _retryable(content)
    check_request(content.request)
    return _requeue_for_retry(content)


@transaction.atomic
def content_retry_with_current(
    *, content: Content, user: AbstractBaseUser | None = None
) -> Content:
    """Run a failed or cancelled generation again with its persona's settings
    as they are now: the request is rebuilt from the persona (the prompt, the
    negative prompt, the requested method and the seed stay; the run's other
    overrides are the persona's now), so a fix on the persona takes effect."""
    content = _retryable(content)
    if content.is_inpaint:
        raise ValidationError(
            "An inpaint has no persona settings to take up: retry it as it was.",
            code="inpaint_retry_as_it_was",
        )
    persona = content.persona
    method = content.method_requested
    request, references = request_for_persona(
        persona,
        prompt=content.prompt,
        negative_prompt=content.negative_prompt,
        overrides=GenerationOverrides(method=method),
        seed=content.seed,
    )
    _check_can_generate(persona, method, request)
    check_request(request)
    content.request = request
    content.replay_snapshot = None
    content.inputs = {}
    content.before_reference = before_reference(persona)
    _requeue_for_retry(content)
    content.references.set(references)
    return content


def _retryable(content: Content) -> Content:
    """The row, locked, when it failed or was cancelled; else a refusal."""
    content = Content.objects.select_for_update().get(pk=content.pk)
    if content.status not in (ContentStatus.FAILED, ContentStatus.CANCELLED):
        raise ValidationError(
            "Only failed or cancelled generations can be retried; content "
            "#%(id)s is %(status)s.",
            code="not_retryable",
            params={"id": content.pk, "status": content.get_status_display()},
        )
    return content


def _requeue_for_retry(content: Content) -> Content:
    content.attempts = 0
    content.cancel_requested = False
    content.error_code = content.error_message = content.error_detail = ""
    content.finished_at = content.started_at = None
    _queue_row(content, delay_seconds=0)
    content.save()
    return content


def content_review(
    *,
    content: Content,
    state: str,
    user: AbstractBaseUser | None,
    note: str = "",
) -> Content:
    """Approve or reject a generation (or put it back to pending)."""
    if state not in ReviewState.values:
        raise ValidationError(
            "Unknown review state %(state)s.", code="bad_state", params={"state": state}
        )
    if content.status != ContentStatus.SUCCEEDED:
        raise ValidationError(
            "Only generations that succeeded can be reviewed; content #%(id)s is "
            "%(status)s.",
            code="not_reviewable",
            params={"id": content.pk, "status": content.get_status_display()},
        )
    validate_prompt_text(note)
    content.review_state = state
    content.reviewed_by = user
    content.reviewed_at = timezone.now()
    content.review_note = note
    content.save(
        update_fields=["review_state", "reviewed_by", "reviewed_at", "review_note"]
    )
    return content


@transaction.atomic
def content_delete(*, content: Content) -> None:
    """Delete a generation and, once that commits, its files (the receiver of
    ``generation.cleanup`` removes them, for this row as for the rows a
    persona's deletion takes along). A job still running for it stops at its
    next step."""
    content.delete()


# --- The job's and the reconciler's writes -------------------------------------


def content_claim(*, content_id: int, job_id: str, worker_name: str) -> bool:
    """Mark a queued row running for the job ``job_id``; False when the row is not
    queued for that job (finished, cancelled, or re-enqueued under another id)."""
    return row_claim(
        Content,
        pk=content_id,
        job_id=job_id,
        worker_name=worker_name,
        progress_step=0,
        progress_total=0,
        progress_phase=ProgressPhase.PREPARING,
        progress_eta_seconds=None,
    )


def content_report_progress(
    *, content: Content, step: int, total: int, eta_seconds: float | None = None
) -> None:
    """A running job's denoising step (and the time it expects to need)."""
    Content.objects.filter(pk=content.pk, rq_job_id=content.rq_job_id).update(
        progress_step=step,
        progress_total=total,
        progress_phase=ProgressPhase.DENOISING,
        progress_eta_seconds=eta_seconds,
    )


def content_report_phase(*, content: Content, phase: str) -> None:
    """A running job's phase (``ProgressPhase``): loading, preparing, saving."""
    Content.objects.filter(pk=content.pk, rq_job_id=content.rq_job_id).update(
        progress_phase=phase, progress_eta_seconds=None
    )


def content_store_result(
    *,
    content: Content,
    result: GenerationResult | InpaintResult,
    inputs: dict[str, str],
    timings: dict[str, Any],
    detailer_before: Image.Image | None = None,
) -> bool:
    """Store a finished generation's (or inpaint's) files through the storage
    API and mark it succeeded, its scoring queued on the CPU queue once this
    commits; False (nothing stored) when the row no longer belongs to this job.
    ``detailer_before`` is the output before the face detailer's pass, kept
    beside it; the "before" thumbnail is the row's before reference's own
    (``_before_thumbnail``).

    Every file is encoded first, all at once on the encoder threads
    (``_encoded_files``), outside the transaction: an encoding that fails has
    written nothing. Then, in one transaction, whatever an earlier attempt left
    under the row's names (a worker killed while storing) is removed, the bytes
    are written and the row updated; a write or a commit that fails removes
    what this one wrote, zero-byte files of a full disk included. So the row
    gets every file or none.
    """
    generated = isinstance(result, GenerationResult)
    encoding = time.perf_counter()
    files = _encoded_files(content, result, detailer_before)
    timings = {**timings, "encode": time.perf_counter() - encoding}
    with written_files_removed_on_failure() as written, transaction.atomic():
        row = (
            Content.objects.select_for_update()
            .filter(
                pk=content.pk, status=ContentStatus.RUNNING, rq_job_id=content.rq_job_id
            )
            .first()
        )
        if row is None:
            return False
        content_attempt_files_remove(row)
        written.save(row.output_image, "output.png", files.output)
        written.save(row.output_thumbnail, "thumb.webp", files.output_thumbnail)
        if files.detailer_before is not None:
            written.save(
                row.detailer_before_image, "before-detailer.png", files.detailer_before
            )
        if files.before_thumbnail is not None:
            written.save(row.before_thumbnail, "before.webp", files.before_thumbnail)
        for order, (control, png) in enumerate(
            zip(result.control_images if generated else (), files.controls, strict=True)
        ):
            control_row = ContentControlImage(
                content=row, control_type=control.control_type.value, order=order
            )
            written.save(control_row.image, "control.png", png)
            control_row.save()
        row.status = ContentStatus.SUCCEEDED
        # An inpaint runs no consistency method: it redraws a region.
        row.method_used = result.method.value if generated else ""
        # Auto's choice by identity, made when the row was created, then the
        # engine's.
        row.method_reason = "; ".join(
            reason
            for reason in (row.method_reason, getattr(result, "method_reason", ""))
            if reason
        )
        row.snapshot = result.snapshot
        row.notes = [*result.notes, *_replay_notes(row, result)]
        # The stored output is the first image; None: not checked.
        row.flagged = bool(generated and result.flagged and result.flagged[0])
        row.inputs = inputs
        row.timings = timings
        content_queue_scoring(content=row)
        row.progress_step = row.progress_total = max(row.progress_total, 1)
        row.finished_at = timezone.now()
        row.error_code = row.error_message = row.error_detail = ""
        row.save()
    return True


def _replay_notes(
    row: Content, result: GenerationResult | InpaintResult
) -> list[str]:
    """For an exact regeneration: whether its pixels are the original's (the
    snapshots' output hashes compared, the detailer's output included)."""
    original = row.regenerated_from
    if row.replay_snapshot is None or original is None:
        return []
    before = _output_hashes(original.snapshot or {})
    after = _output_hashes(result.snapshot)
    if before and before == after:
        return [f"Pixel-identical to #{original.pk}."]
    return [
        f"Not pixel-identical to #{original.pk}: same snapshot, different pixels "
        "(other hardware or library versions; compare the snapshots)."
    ]


def _output_hashes(snapshot: dict[str, Any]) -> list[str]:
    detailer = snapshot.get(DETAILER_KEY) or {}
    return [*(snapshot.get("outputs") or []), *detailer.get("outputs", [])]


def content_mark_cancelled(*, content: Content) -> bool:
    """A running row stopped at a step because someone cancelled it."""
    return _finish_active(
        content,
        status=ContentStatus.CANCELLED,
        error_code="cancelled",
        error_message="Cancelled while running.",
        error_detail="",
    )


def content_fail(
    *, content: Content, code: str, message: str, detail: str = ""
) -> bool:
    """Mark an active row failed with a message for a person and the technical
    detail beside it; False when the row no longer belongs to this job."""
    return _finish_active(
        content,
        status=ContentStatus.FAILED,
        error_code=code,
        error_message=message,
        error_detail=detail,
    )


@transaction.atomic
def content_requeue(
    *,
    content: Content,
    reason: str,
    delay_seconds: float = 0,
    refund_attempt: bool = False,
) -> bool:
    """Queue an active row again under a new job id, after ``delay_seconds``.

    Used for transient failures (with backoff), a worker handing its job back
    (``refund_attempt``: not the generation's fault) and the reconciler. False
    when the row changed since ``content`` was read (someone else acted first).
    """
    return row_requeue(
        content,
        queue=lambda row: _queue_row(row, delay_seconds=delay_seconds),
        reason=reason,
        refund_attempt=refund_attempt,
    )


# --- Internals -----------------------------------------------------------------


@transaction.atomic
def _create_contents(
    *,
    persona: Persona,
    prompt: str,
    negative_prompt: str,
    overrides: GenerationOverrides,
    seeds: Sequence[int],
    user: AbstractBaseUser | None,
    batch: Batch | None = None,
) -> list[Content]:
    overrides.validate()
    _validate_prompts(prompt=prompt, negative_prompt=negative_prompt)
    method = overrides.method or persona.method
    if persona.base_model not in configured_models():
        raise ValidationError(
            "The persona's base model %(model)s is not configured in this studio; "
            "choose another one on the persona.",
            code="unknown_model",
            params={"model": persona.base_model},
        )
    method_reason = ""
    if method == Method.AUTO:
        overrides, method_reason = _auto_by_identity(persona, overrides)
    before = before_reference(persona)
    contents = []
    for seed in seeds:
        request, references = request_for_persona(
            persona,
            prompt=prompt,
            negative_prompt=negative_prompt,
            overrides=overrides,
            seed=seed,
        )
        if not contents:  # the rows differ only by their seed
            _check_can_generate(persona, method, request)
            check_request(request)
        content = Content(
            persona=persona,
            batch=batch,
            prompt=prompt,
            negative_prompt=negative_prompt,
            method_requested=method,
            seed=seed,
            request=request,
            before_reference=before,
            method_reason=method_reason,
            created_by=user,
        )
        _queue_row(content, delay_seconds=0)
        content.full_clean()
        content.save()
        content.references.set(references)
        contents.append(content)
    return contents


def _copy_content(
    content: Content,
    *,
    seed: int,
    replay_snapshot: dict[str, Any] | None,
    inputs: dict[str, str],
    user: AbstractBaseUser | None,
) -> Content:
    check_request(content.request)
    copy = Content(
        persona=content.persona,
        regenerated_from=content,
        inpainted_from=content.inpainted_from,
        prompt=content.prompt,
        negative_prompt=content.negative_prompt,
        method_requested=content.method_requested,
        seed=seed,
        request={**content.request, "seed": seed},
        replay_snapshot=replay_snapshot,
        inputs=inputs,
        before_reference=content.before_reference,
        created_by=user,
    )
    with written_files_removed_on_failure() as written, transaction.atomic():
        _queue_row(copy, delay_seconds=0)
        copy.save()
        copy.references.set(content.references.all())
        if content.is_inpaint:  # each inpaint owns its mask
            _store_mask(copy, read_stored_bytes(content.request["mask"]), written)
    return copy


def check_request(request: dict[str, Any]) -> None:
    """Refuse, before anything is queued, a request the engine's plan check
    finds sure to fail (``engine/plan.py``), with the engine's message."""
    _raise_problems(request_problems(request))


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise ValidationError(
            [
                ValidationError(problem.message, code=problem.code)
                for problem in problems
            ]
        )


def request_problems(request: dict[str, Any]) -> list[Problem]:
    """The plan check's problems for a row's request (JSON form): a
    generation's, then its detailer pass's; an inpaint's."""
    if is_inpaint_request(request):
        size = (request["width"], request["height"])
        return _inpaint_problems(inpaint_outline(request, size=size))
    try:
        outline = request_outline(request)
    except EngineError as error:
        return [_engine_problem(error)]
    problems = plan_problems(outline, engine_config())
    if request.get(DETAILER_KEY) and not problems:
        problems = _inpaint_problems(
            detailer_outline(request),
            what="The face detailer",
            prefix="The face detailer: ",
        )
    return problems


def _inpaint_problems(
    outline: InpaintRequest, *, what: str = "Inpainting", prefix: str = ""
) -> list[Problem]:
    """The inpaint checks (``plan.inpaint_problems``) on the family of the
    outline's model."""
    from generation.engine.families import family

    if outline.model not in configured_models():
        return [
            Problem(
                code="unknown_model",
                message=f"The model {outline.model} is no longer configured in this "
                "studio, so its outputs cannot be inpainted.",
            )
        ]
    try:
        row = family(model_family(outline.model))
    except EngineError as error:
        return [_engine_problem(error)]
    return inpaint_problems(outline, row, what=what, prefix=prefix)


def _engine_problem(error: EngineError) -> Problem:
    return Problem(code=error.code, message=str(error), error=type(error))


def persona_plan_warnings(*, persona: Persona) -> list[str]:
    """What would make the persona's next generation fail, as warnings for the
    page where it was saved (its prompt is not known yet: the check is of its
    settings)."""
    if persona.base_model not in configured_models():
        return [
            f"The base model {persona.base_model} is not configured in this studio; "
            "choose another one."
        ]
    request, _ = request_for_persona(
        persona,
        prompt="",
        negative_prompt="",
        overrides=GenerationOverrides(),
        seed=0,
    )
    return [str(problem) for problem in request_problems(request)]


def _auto_by_identity(
    persona: Persona, overrides: GenerationOverrides
) -> tuple[GenerationOverrides, str]:
    """Auto that learns: with enough scored outputs per method, the method whose
    outputs kept ``persona``'s identity best (``identity.choose_method_by_identity``)
    replaces ``auto`` in the request; otherwise the engine's rules choose. The
    reason says which, with the numbers, either way. Only the methods the
    persona's base model runs compete (``families.methods_offered``: on FLUX.1
    text, img2img and reference_edit; outputs made with ip_adapter on an earlier
    Stable Diffusion base do not count)."""
    from generation.engine.identity import choose_method_by_identity

    record = selectors.persona_identity_by_method(persona=persona)
    offered = _methods_offered(persona.base_model)
    if offered is not None:
        record = {
            method: values for method, values in record.items() if method in offered
        }
    choice = choose_method_by_identity(record)
    if choice.method is None:
        return overrides, choice.reason
    chosen = replace(overrides, method=choice.method)
    request, _ = request_for_persona(
        persona, prompt="", negative_prompt="", overrides=chosen, seed=0
    )
    try:
        _check_can_generate(persona, choice.method, request)
    except ValidationError as error:
        return overrides, (
            f"the rules apply: {choice.reason}, but {choice.method} cannot run now "
            f"({' '.join(error.messages)})"
        )
    return chosen, f"auto by identity: {choice.reason}"


def _methods_offered(base_model: str) -> set[str] | None:
    """The methods a base model's family runs, or None when its family cannot
    be told here."""
    from generation.engine.errors import EngineError
    from generation.engine.families import methods_offered
    from personas.lora import base_model_traits

    try:
        traits = base_model_traits(base_model)
    except EngineError:
        return None
    if traits is None:
        return None
    return {method.value for method in methods_offered(traits.family)}


def _validate_prompts(*, prompt: str, negative_prompt: str) -> None:
    """The prompts' length and characters (every entry point, the command line
    included, comes through here)."""
    errors = {}
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        try:
            validate_prompt_text(text)
        except ValidationError as error:
            errors[name] = error
    if errors:
        raise ValidationError(errors)


def _check_can_generate(persona: Persona, method: str, request: dict[str, Any]) -> None:
    """What the method needs from the persona, said in the persona's terms
    (the plan check then says everything else in the engine's)."""
    label = Method(method).label
    if method in METHODS_NEEDING_REFERENCE and not request["references"]:
        raise ValidationError(
            "%(method)s needs a reference image: add one to %(persona)s's gallery "
            "first, or choose the text method.",
            code="needs_reference",
            params={"method": label, "persona": persona},
        )
    if method in METHODS_WITH_CONTROL and not request["control_units"]:
        raise ValidationError(
            "%(method)s needs an enabled ControlNet unit: add one to %(persona)s "
            "first, or turn one on.",
            code="needs_control_unit",
            params={"method": label, "persona": persona},
        )


def _seeds(
    persona: Persona, overrides: GenerationOverrides, *, count: int
) -> list[int]:
    base = overrides.seed
    policy = overrides.seed_policy or persona.seed_policy
    if policy == SeedPolicy.RANDOM and overrides.seed_policy == SeedPolicy.RANDOM:
        base = None
    elif base is None and policy == SeedPolicy.FIXED:
        base = persona.seed
    if base is None:
        return [_random_seed() for _ in range(count)]
    return [(base + offset) % (MAX_SEED + 1) for offset in range(count)]


def _random_seed() -> int:
    return secrets.randbelow(2**32)


def _queue_row(content: Content, *, delay_seconds: float) -> None:
    """Set ``content`` queued under a new job id, its progress reset, and enqueue
    that job on commit (the caller saves the row in the same transaction)."""
    content.progress_step = content.progress_total = 0
    content.progress_phase = ""
    content.progress_eta_seconds = None
    row_queue(
        content,
        RowJob(JOB_FUNCTION, settings.STUDIO_JOB_TIMEOUT, "generate content"),
        model_key=content.request["model"],
        delay_seconds=delay_seconds,
    )


def _cancel_job(queue_name: str, job_id: str) -> None:
    """Take a cancelled row's job out of its queue (the job would no-op anyway)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    queue = get_queue(queue_name)
    try:
        Job.fetch(job_id, connection=queue.connection).cancel()
    except NoSuchJobError:
        pass


@transaction.atomic
def _finish_active(
    content: Content,
    *,
    status: str,
    error_code: str,
    error_message: str,
    error_detail: str,
) -> bool:
    finished = row_finish_active(
        content,
        status=status,
        code=error_code,
        message=error_message,
        detail=error_detail,
    )
    if finished:
        # A row that ends without a result owns no file: whatever an attempt
        # left (a worker killed while storing) goes once this commits.
        row = Content.objects.only("pk", "persona_id", "created_at", "request").get(
            pk=content.pk
        )
        files_delete_on_commit(content_attempt_files(row))
    return finished


def _png_level() -> int:
    """``STUDIO_PNG_COMPRESS_LEVEL`` (0-9; docs/settings.md), checked."""
    level = settings.STUDIO_PNG_COMPRESS_LEVEL
    if not 0 <= level <= 9:
        raise ImproperlyConfigured(
            f"STUDIO_PNG_COMPRESS_LEVEL is {level}; set it to a zlib level from 0 "
            "(no compression) to 9 (smallest, slowest)."
        )
    return level


def _png(image: Image.Image, level: int | None = None) -> bytes:
    """PNG bytes at ``level`` (default ``STUDIO_PNG_COMPRESS_LEVEL``)."""
    buffer = io.BytesIO()
    image.save(
        buffer, format="PNG", compress_level=_png_level() if level is None else level
    )
    return buffer.getvalue()


def _before_thumbnail(reference: ReferenceImage | None) -> bytes | None:
    """The before reference's own stored thumbnail, copied through the storage
    API (the same encoder and size made it), so the reference is not even
    decoded; encoded afresh only when the reference has no thumbnail left, and
    None when the reference (or its image) is gone. (Storage only: it runs on
    an encoder thread, which must not touch the database.)"""
    if reference is None:
        return None
    name = reference.thumbnail.name
    if name:
        try:
            with default_storage.open(name, "rb") as file:
                return file.read()
        except FileNotFoundError:
            logger.warning("Reference #%s: its thumbnail is gone", reference.pk)
    try:
        return encode_thumbnail(open_stored_image(reference.image.name))
    except EngineError:
        logger.warning("Reference #%s: its image is gone", reference.pk)
        return None


@dataclass(frozen=True)
class _EncodedFiles:
    """A finished job's files, encoded, ready to be written."""

    output: ContentFile
    output_thumbnail: ContentFile
    detailer_before: ContentFile | None
    before_thumbnail: ContentFile | None
    controls: list[ContentFile]


def _encoded_files(
    content: Content,
    result: GenerationResult | InpaintResult,
    detailer_before: Image.Image | None,
) -> _EncodedFiles:
    """Every file of a finished job: the output's PNG and thumbnail, the image
    before the detailer, the before thumbnail and the control images; for an
    output of more than ``PARALLEL_ENCODE_PIXELS``, encoded at the same time on
    the encoder threads (Pillow's PNG and WebP encoders release the GIL), else
    one after another in this thread. Waits for all of them; the first error
    is raised."""
    generated = isinstance(result, GenerationResult)
    output = result.images[0] if generated else result.image
    controls = [control.image for control in result.control_images] if generated else []
    level = _png_level()
    parallel = output.width * output.height > PARALLEL_ENCODE_PIXELS
    submit = _ENCODERS.submit if parallel else _done_here
    png = submit(_png, output, level)
    thumbnail = submit(encode_thumbnail, output)
    before_detailer = (
        None if detailer_before is None else submit(_png, detailer_before, level)
    )
    # The reference row is read here: the encoder threads use no database.
    before = submit(_before_thumbnail, content.before_reference)
    control_pngs = [submit(_png, image, level) for image in controls]
    futures = [png, thumbnail, before_detailer, before, *control_pngs]
    concurrent.futures.wait([future for future in futures if future is not None])

    def file(future: concurrent.futures.Future | None) -> ContentFile | None:
        data = None if future is None else future.result()
        return None if data is None else ContentFile(data)

    return _EncodedFiles(
        output=file(png),
        output_thumbnail=file(thumbnail),
        detailer_before=file(before_detailer),
        before_thumbnail=file(before),
        controls=[file(future) for future in control_pngs],
    )


def _done_here(function: Any, *args: Any) -> concurrent.futures.Future:
    """``function(*args)`` run in this thread, as a finished future."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(function(*args))
    except Exception as error:
        future.set_exception(error)
    return future


_ENCODERS = concurrent.futures.ThreadPoolExecutor(
    max_workers=ENCODER_THREADS, thread_name_prefix="studio-encode"
)
