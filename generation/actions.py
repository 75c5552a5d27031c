"""The staff operations on contents and personas, each defined once.

An entry of the table says what the operation acts on, the permission it needs,
the service it calls, what it asks first (a form, or a confirmation when it
starts costly work) and the messages it leaves: to the person who acted, and in
the admin history (``LogEntry``, as the admin's own changes do). The admin's
actions (``generation/admin.py``) and the gallery's buttons
(``generation/gallery/views.py``) are both built from this table and run an entry
through ``perform``; neither holds a rule of its own, and the services hold the
business rules.

A new operation is one more entry: a function that calls its service, a
permission and its messages, then a place in ``CONTENT_ACTIONS``,
``PERSONA_ACTIONS`` or ``SHEET_ACTIONS`` (for example "use this value" of any
axis of a grid, which takes the axis and the value from ``ActionInput.data``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import capfirst

from generation import score_services, selectors, services
from generation.forms import GenerateForm, GridForm, InpaintForm
from generation.models import Batch, Content, ReviewState
from generation.parameters import GenerationOverrides
from personas.models import Persona

GENERATE = "generation.generate_content"
REVIEW = "generation.review_content"
CHANGE_PERSONA = "personas.change_persona"

# The ``ModelAdmin.has_<name>_permission`` that ``@admin.action(permissions=...)``
# checks for each permission of the table.
ADMIN_PERMISSION_NAMES = {
    GENERATE: "generate",
    REVIEW: "review",
    CHANGE_PERSONA: "change",
}


@dataclass(frozen=True)
class ActionInput:
    """Who acts, and what they gave: a form's cleaned data (admin) or the posted
    fields of a button (gallery: a review note, the tile of a sheet)."""

    user: AbstractBaseUser
    data: Mapping[str, Any] = field(default_factory=dict)


Service = Callable[[Any, ActionInput], Any]


@dataclass(frozen=True, kw_only=True)
class StaffAction:
    """One operation. ``service(target, given)`` calls the service and returns
    its result; the messages are ``str.format`` templates of ``target``,
    ``result`` (and ``count`` for ``done_many``)."""

    name: str
    model: type[models.Model]
    permission: str
    description: str
    service: Service
    done: str
    done_many: str
    history: str
    # What it asks on an intermediate page before it runs from the admin.
    form: type[forms.Form] | None = None
    costly: bool = False
    # The gallery opens the content the service returns (a regeneration).
    opens_result: bool = False
    # Where the history entry goes when not on the target: ``logs_on(target,
    # result)`` (the persona whose setting a grid's "use this value" changed).
    logs_on: Callable[[Any, Any], models.Model] | None = None
    # Where the person follows the result: the success message links there.
    result_url: Callable[[Any], str] | None = None
    result_link: str = ""

    @property
    def slug(self) -> str:
        """The action's name in gallery URLs (``regenerate-exactly``)."""
        return self.name.replace("_", "-")

    @property
    def admin_permission(self) -> str:
        return ADMIN_PERMISSION_NAMES[self.permission]

    @property
    def asks_first(self) -> bool:
        return self.form is not None or self.costly

    def allows(self, user: AbstractBaseUser) -> bool:
        return user.has_perm(self.permission)

    def check_allowed(self, user: AbstractBaseUser) -> None:
        """``PermissionDenied`` (a 403) for a user without the permission."""
        if not self.allows(user):
            raise PermissionDenied(f"You may not {self.description.lower()}.")


def perform(
    action: StaffAction,
    targets: Iterable[models.Model],
    *,
    request: HttpRequest,
    data: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Run ``action`` on each target as the request's user and return the
    results. Each success writes its history entry in the same transaction; the
    person gets one message for the successes and one per refusal (the
    service's message, naming the target)."""
    user = request.user
    action.check_allowed(user)
    given = ActionInput(user=user, data=data or {})
    done: list[tuple[models.Model, Any]] = []
    for target in targets:
        if not isinstance(target, action.model):
            raise TypeError(f"{action.name} acts on {action.model.__name__} rows.")
        try:
            with transaction.atomic():
                result = action.service(target, given)
                _log(action, target, result, user=user)
        except ValidationError as refused:
            messages.error(request, f"{target}: {' '.join(refused.messages)}")
        else:
            done.append((target, result))
    if len(done) == 1:
        ((target, result),) = done
        message = action.done.format(target=target, result=result)
        if action.result_url is not None:
            message = format_html(
                '{} <a href="{}">{}</a>',
                message,
                action.result_url(result),
                action.result_link,
            )
        messages.success(request, message)
    elif done:
        messages.success(request, action.done_many.format(count=len(done)))
    return [result for _, result in done]


def _log(
    action: StaffAction, target: models.Model, result: Any, *, user: AbstractBaseUser
) -> None:
    changed = target if action.logs_on is None else action.logs_on(target, result)
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=[changed],
        action_flag=CHANGE,
        change_message=capfirst(action.history.format(target=target, result=result)),
        single_object=True,
    )


# --- The services each operation calls ------------------------------------------


def _generate(persona: Persona, given: ActionInput) -> Any:
    data = given.data
    return services.content_enqueue_batch(
        persona=persona,
        prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt", ""),
        count=data["count"],
        overrides=GenerationOverrides.from_data(data),
        user=given.user,
        keep_best=data.get("keep_best"),
    )


def _grid(persona: Persona, given: ActionInput) -> Any:
    data = given.data
    return services.content_grid(
        persona=persona,
        prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt", ""),
        axes=data["axes"],
        overrides=GenerationOverrides.from_data(
            {name: data.get(name) for name in ("method", "seed")}
        ),
        user=given.user,
    )


def _regenerate_latest(persona: Persona, given: ActionInput) -> Content:
    latest = selectors.content_latest_for_persona(persona=persona)
    if latest is None:
        raise ValidationError(
            "it has no generation yet; use Generate… first.", code="no_generation"
        )
    return services.content_regenerate(content=latest, user=given.user)


def _regenerate(content: Content, given: ActionInput) -> Content:
    return services.content_regenerate(content=content, user=given.user)


def _regenerate_exactly(content: Content, given: ActionInput) -> Content:
    return services.content_regenerate_exactly(content=content, user=given.user)


def _cancel(content: Content, given: ActionInput) -> Content:
    return services.content_cancel(content=content, user=given.user)


def _retry(content: Content, given: ActionInput) -> Content:
    return services.content_retry(content=content, user=given.user)


def _move_to_front(content: Content, given: ActionInput) -> Content:
    return services.content_move_to_front(content=content, user=given.user)


def _retry_with_current(content: Content, given: ActionInput) -> Content:
    return services.content_retry_with_current(content=content, user=given.user)


def _review(state: str) -> Service:
    def review(content: Content, given: ActionInput) -> Content:
        return services.content_review(
            content=content,
            state=state,
            user=given.user,
            note=str(given.data.get("note", "")).strip(),
        )

    return review


def _inpaint(content: Content, given: ActionInput) -> Content:
    data = given.data
    return services.content_inpaint(
        content=content,
        mask=data["mask"],
        prompt=data["prompt"],
        strength=data["strength"],
        user=given.user,
    )


def _rescore(content: Content, given: ActionInput) -> Content:
    return score_services.content_rescore(content=content)


def _use_value(grid: Batch, given: ActionInput) -> Any:
    try:
        axis, value = (int(given.data.get(name, "")) for name in ("axis", "value"))
    except (TypeError, ValueError):
        raise ValidationError(
            "Choose a value of one of this grid's axes.", code="no_such_value"
        ) from None
    return services.persona_use_grid_value(
        batch=grid, axis_index=axis, value_index=value, user=given.user
    )


# --- The table --------------------------------------------------------------------

GENERATE_ACTION = StaffAction(
    name="generate",
    model=Persona,
    permission=GENERATE,
    description="Generate…",
    service=_generate,
    form=GenerateForm,
    done="Queued {result}.",
    result_url=lambda batch: reverse("gallery:batch", args=[batch.pk]),
    result_link="Follow its generations.",
    done_many="Queued generations for {count} persona(s); follow them under Contents.",
    history="queued {result}.",
)
GRID_ACTION = StaffAction(
    name="grid",
    model=Persona,
    permission=GENERATE,
    description="X/Y/Z grid…",
    service=_grid,
    form=GridForm,
    done="Queued {result} ({result.tile_count} tiles).",
    result_url=lambda grid: reverse("gallery:grid", args=[grid.pk]),
    result_link="Compare them on its contact sheet.",
    done_many="Queued grids for {count} persona(s); compare them under Batches.",
    history="queued {result}.",
)
REGENERATE_LATEST = StaffAction(
    name="regenerate_latest",
    model=Persona,
    permission=GENERATE,
    description="Regenerate latest (new seed)",
    service=_regenerate_latest,
    costly=True,
    done="Queued content #{result.pk}, a new seed of {target}'s latest generation.",
    done_many="Queued a new seed of the latest generation of {count} persona(s).",
    history="queued content #{result.pk}, a new seed of content "
    "#{result.regenerated_from_id}.",
)
REGENERATE = StaffAction(
    name="regenerate",
    model=Content,
    permission=GENERATE,
    description="Regenerate (new seed)",
    service=_regenerate,
    costly=True,
    opens_result=True,
    done="Queued a regeneration with a new seed (content #{result.pk}).",
    done_many="Queued {count} regeneration(s) with new seeds.",
    history="regenerated with a new seed as content #{result.pk}.",
)
REGENERATE_EXACTLY = StaffAction(
    name="regenerate_exactly",
    model=Content,
    permission=GENERATE,
    description="Regenerate exactly",
    service=_regenerate_exactly,
    costly=True,
    opens_result=True,
    done="Queued an exact regeneration (same snapshot, content #{result.pk}).",
    done_many="Queued {count} exact regeneration(s).",
    history="regenerated exactly (same snapshot) as content #{result.pk}.",
)
CANCEL = StaffAction(
    name="cancel",
    model=Content,
    permission=GENERATE,
    description="Cancel",
    service=_cancel,
    done="Cancel requested for {target} (a running one stops at its next step).",
    done_many="Cancelled {count} generation(s) (running ones stop at their next step).",
    history="cancel requested.",
)
RETRY = StaffAction(
    name="retry",
    model=Content,
    permission=GENERATE,
    description="Retry as it was",
    service=_retry,
    costly=True,
    done="Queued {target} again, as it was.",
    done_many="Queued {count} generation(s) again, as they were.",
    history="queued again (retry).",
)
RETRY_WITH_CURRENT = StaffAction(
    name="retry_with_current",
    model=Content,
    permission=GENERATE,
    description="Retry with the persona's current settings",
    service=_retry_with_current,
    costly=True,
    done="Queued {target} again with its persona's current settings.",
    done_many="Queued {count} generation(s) again with their personas' current "
    "settings.",
    history="queued again with the persona's current settings (retry).",
)
MOVE_TO_FRONT = StaffAction(
    name="move_to_front",
    model=Content,
    permission=GENERATE,
    description="Move to the front of its queue",
    service=_move_to_front,
    done="Moved {target} to the front of its queue.",
    done_many="Moved {count} generation(s) to the front of their queues.",
    history="moved to the front of its queue.",
)
APPROVE = StaffAction(
    name="approve",
    model=Content,
    permission=REVIEW,
    description="Approve",
    service=_review(ReviewState.APPROVED),
    done="Approved {target}.",
    done_many="Marked {count} generation(s) approved.",
    history="approved.",
)
REJECT = StaffAction(
    name="reject",
    model=Content,
    permission=REVIEW,
    description="Reject",
    service=_review(ReviewState.REJECTED),
    done="Rejected {target}.",
    done_many="Marked {count} generation(s) rejected.",
    history="rejected.",
)
RESCORE = StaffAction(
    name="rescore",
    model=Content,
    permission=GENERATE,
    description="Rescore identity",
    service=_rescore,
    done="Queued the scoring of {target} again (identity and consistency, on "
    "the CPU queue).",
    done_many="Queued the scoring of {count} generation(s) again.",
    history="scoring queued again.",
)
INPAINT = StaffAction(
    name="inpaint",
    model=Content,
    permission=GENERATE,
    description="Inpaint",
    service=_inpaint,
    form=InpaintForm,
    opens_result=True,
    done="Queued an inpaint of {target} (content #{result.pk}).",
    done_many="Queued {count} inpaint(s).",
    history="inpainted as content #{result.pk}.",
)
USE_VALUE = StaffAction(
    name="use_value",
    model=Batch,
    permission=CHANGE_PERSONA,
    description="Use this value",
    service=_use_value,
    logs_on=lambda grid, choice: choice.persona,
    done="{result.persona} now uses {result.setting} {result.value}.",
    done_many="{count} personas changed a setting.",
    history="changed {result.setting} to {result.value} (a value of the "
    "{result.axis} axis of grid #{target.pk}).",
)

# On a content: the content changelist's actions and the content page's buttons.
CONTENT_ACTIONS = (
    REGENERATE,
    REGENERATE_EXACTLY,
    CANCEL,
    RETRY,
    RETRY_WITH_CURRENT,
    APPROVE,
    REJECT,
    RESCORE,
)
# On a content's page only: the brush's form (a mask per content, so no
# changelist action), posted to its own view.
CONTENT_PAGE_ACTIONS = (INPAINT,)
# On the queue page: its buttons (cancel is CANCEL above).
QUEUE_ACTIONS = (MOVE_TO_FRONT, CANCEL)
# On a persona: the persona changelist's actions.
PERSONA_ACTIONS = (GENERATE_ACTION, GRID_ACTION, REGENERATE_LATEST)
# On a grid's contact sheet: the buttons of its axis values.
SHEET_ACTIONS = (USE_VALUE,)


# --- LoRA training ------------------------------------------------------------------
# The training page (``generation.admin.TrainingRunAdmin``) asks for its own
# per-persona form, so these entries are not in PERSONA_ACTIONS: the admin action
# "Train LoRA…" opens that page, whose post runs TRAIN_LORA through ``perform``.

from generation.models import TrainingRun  # noqa: E402
from personas.models import PersonaLoraVersion  # noqa: E402
from personas.services import lora_version_activate  # noqa: E402

TRAIN = "generation.train_lora"
CHANGE_LORA_VERSION = "personas.change_personaloraversion"
ADMIN_PERMISSION_NAMES[TRAIN] = "train"
ADMIN_PERMISSION_NAMES[CHANGE_LORA_VERSION] = "change"


def _train_lora(persona: Persona, given: ActionInput) -> Any:
    from generation import training_services

    data = given.data
    return training_services.training_run_start(
        persona=persona,
        references=data["training_references"],
        trigger_word=data["trigger_word"],
        settings=data["training_settings"],
        preset=data.get("preset", ""),
        validation_prompts=data.get("training_prompts", ()),
        user=given.user,
    )


def _cancel_training(run: TrainingRun, given: ActionInput) -> Any:
    from generation import training_services

    return training_services.training_run_cancel(run=run, user=given.user)


def _activate_lora_version(version: PersonaLoraVersion, given: ActionInput) -> Any:
    return lora_version_activate(version=version)


TRAIN_LORA = StaffAction(
    name="train_lora",
    model=Persona,
    permission=TRAIN,
    description="Train LoRA…",
    service=_train_lora,
    done="Queued {result}; follow its loss, identity and samples on its page.",
    done_many="Queued training for {count} persona(s).",
    history="queued {result}.",
)
CANCEL_TRAINING = StaffAction(
    name="cancel_training",
    model=TrainingRun,
    permission=TRAIN,
    description="Cancel training",
    service=_cancel_training,
    done="Cancelled {result} (a running one stops before its next step).",
    done_many="Cancelled {count} training run(s).",
    history="cancelled {result}.",
)
ACTIVATE_LORA_VERSION = StaffAction(
    name="activate_lora_version",
    model=PersonaLoraVersion,
    permission=CHANGE_LORA_VERSION,
    description="Make the active LoRA",
    service=_activate_lora_version,
    done="{result} is now the LoRA its persona's generations use.",
    done_many="Activated {count} LoRA versions.",
    history="made {result} the active LoRA.",
)
TRAINING_ACTIONS = (CANCEL_TRAINING,)
LORA_VERSION_ACTIONS = (ACTIVATE_LORA_VERSION,)
