"""The role matrix: every role against every page, endpoint, action and file.

The URLs are not listed by hand: they are walked from the URLconf (admin, the
admin's registry, the gallery, the RQ dashboard, media), so a page added later
is covered at once, and one without a policy below fails the test until its
author says who may use it. Each role's result is compared with ``POLICY``:
a role must reach what the policy grants and nothing else (a denial is the
login page, 403, 404 or 405), and a denied POST must change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from PIL import Image
from rq.worker import SimpleWorker

from generation import previews, services
from generation.engine.vocabulary import GridParameter
from generation.gallery.views import CONTENT_ACTIONS
from generation.grids import GridAxis
from generation.models import (
    Content,
    ContentControlImage,
    ContentStatus,
    TrainingRun,
)
from generation.queues import get_queue
from personas.models import ControlNetUnit, Persona, PersonaLoraVersion
from personas.services import control_unit_save, persona_set_lora
from tests.images import encode, halves, safetensors_lora
from tests.reliability.conftest import stored_names, studio_state
from tests.workers import make_persona

pytestmark = pytest.mark.reliability

VIEW_PERMISSIONS = [
    "personas.view_persona",
    "personas.view_referenceimage",
    "personas.view_controlnetunit",
    "generation.view_content",
    "generation.view_batch",
]
GENERATE = "generation.generate_content"
REVIEW = "generation.review_content"


@dataclass(frozen=True)
class Role:
    name: str
    authenticated: bool = True
    staff: bool = False
    superuser: bool = False
    permissions: tuple[str, ...] = ()

    def has(self, permission: str) -> bool:
        return self.superuser or permission in self.permissions

    def has_any(self, app_label: str) -> bool:
        return self.superuser or any(
            permission.startswith(f"{app_label}.") for permission in self.permissions
        )

    @property
    def is_staff(self) -> bool:
        return self.authenticated and (self.staff or self.superuser)


EVERY_STUDIO_PERMISSION = (
    *VIEW_PERMISSIONS,
    GENERATE,
    REVIEW,
    "personas.change_persona",
    "personas.lock_persona",
    "personas.delete_persona",
    "generation.delete_content",
)
ROLES = [
    Role("anonymous", authenticated=False),
    # Not staff, yet holding every studio permission: staff status is the gate.
    Role("active non-staff", permissions=EVERY_STUDIO_PERMISSION),
    Role("staff without studio permissions", staff=True),
    Role("staff with view only", staff=True, permissions=tuple(VIEW_PERMISSIONS)),
    Role("reviewer", staff=True, permissions=(*VIEW_PERMISSIONS, REVIEW)),
    Role("generator", staff=True, permissions=(*VIEW_PERMISSIONS, GENERATE)),
    Role("superuser", staff=True, superuser=True),
    # Single-app and single-model roles: media follows the row that owns it.
    Role(
        "staff with the personas app only",
        staff=True,
        permissions=tuple(
            name for name in EVERY_STUDIO_PERMISSION if name.startswith("personas.")
        ),
    ),
    Role(
        "staff with the generation app only",
        staff=True,
        permissions=tuple(
            name for name in EVERY_STUDIO_PERMISSION if name.startswith("generation.")
        ),
    ),
    Role("persona viewer only", staff=True, permissions=("personas.view_persona",)),
    Role(
        "reference viewer only",
        staff=True,
        permissions=("personas.view_referenceimage",),
    ),
    Role("content viewer only", staff=True, permissions=("generation.view_content",)),
    Role("persona editor only", staff=True, permissions=("personas.change_persona",)),
]

# --- The policy -----------------------------------------------------------------

Rule = Callable[[Role, "Endpoint"], bool]


def public(role: Role, endpoint: Endpoint) -> bool:
    return True


def nobody(role: Role, endpoint: Endpoint) -> bool:
    return False


def staff(role: Role, endpoint: Endpoint) -> bool:
    return role.is_staff


def superuser_only(role: Role, endpoint: Endpoint) -> bool:
    return role.is_staff and role.superuser


def staff_with(*permissions: str) -> Rule:
    def rule(role: Role, endpoint: Endpoint) -> bool:
        return role.is_staff and all(role.has(name) for name in permissions)

    return rule


def admin_app_list(role: Role, endpoint: Endpoint) -> bool:
    return role.is_staff and role.has_any(endpoint.kwargs["app_label"])


# Media by storage folder (first match): any one of these permissions sees it.
SEE_REFERENCE = ("personas.view_referenceimage", "personas.view_persona")
MEDIA_PERMISSIONS = [
    ("references/", SEE_REFERENCE),
    ("thumbnails/references/", SEE_REFERENCE),
    ("control/generated/", ("generation.view_content",)),
    ("control/", ("personas.view_controlnetunit", "personas.view_persona")),
    ("loras/", ("personas.change_persona",)),
    ("generated/", ("generation.view_content",)),
    ("thumbnails/", ("generation.view_content",)),
]
# Folders under the media URL: nobody gets a listing (nor a 500).
MEDIA_FOLDERS = ["generated/", "thumbnails/references/"]


def studio_media(role: Role, endpoint: Endpoint) -> bool:
    """Media: staff who may see the row that owns the file (DESIGN.md decision
    6, per model: a reference viewer sees no output, nor its LoRA)."""
    path = endpoint.kwargs["path"]
    if path in MEDIA_FOLDERS:
        return False
    permissions = next(
        permissions for folder, permissions in MEDIA_PERMISSIONS
        if path.startswith(folder)
    )
    return role.is_staff and any(role.has(name) for name in permissions)


def gallery_action(role: Role, endpoint: Endpoint) -> bool:
    permission = CONTENT_ACTIONS[endpoint.kwargs["action"]].permission
    return staff_with("generation.view_content", permission)(role, endpoint)


# Pages a test cannot fill with real objects (RQ results, cron and rq-scheduler
# schedulers, which the studio does not use; django_rq's pages for them fail
# without them) are checked for denials only.
DENIAL_ONLY = {
    "django_rq:result_detail",
    "django_rq:scheduler_jobs",
    "django_rq:cron_scheduler_detail",
    "django_rq:cron_job_detail",
}
POLICY: dict[str, Rule] = {
    "admin:login": public,
    "admin:index": staff,
    "admin:password_change": staff,
    "admin:password_change_done": staff,
    "admin:jsi18n": staff,
    "admin:view_on_site": staff,  # a redirect to the object's (guarded) page
    "admin:app_list": admin_app_list,
    "admin:autocomplete": nobody,  # no admin declares autocomplete fields
    "admin:auth_user_password_change": staff_with("auth.change_user"),
    "gallery:index": staff_with("generation.view_content"),
    "gallery:progress": staff_with("generation.view_content"),
    "gallery:persona": staff_with("generation.view_content"),
    "gallery:persona-identity": staff_with("generation.view_content"),
    "gallery:persona-identity-csv": staff_with("generation.view_content"),
    "gallery:content": staff_with("generation.view_content"),
    "gallery:content-card": staff_with("generation.view_content"),
    "gallery:content-preview": staff_with("generation.view_content"),
    "gallery:persona-counts": staff_with("generation.view_content"),
    "favicon": public,
    "gallery:sweep": staff_with("generation.view_content"),
    "gallery:grid": staff_with("generation.view_content"),
    "gallery:grid-new": staff_with(
        "generation.view_content", "generation.generate_content"
    ),
    "gallery:batch": staff_with("generation.view_content"),
    "gallery:queue": staff_with("generation.view_content"),
    "gallery:generate": staff_with(
        "generation.view_content", "generation.generate_content"
    ),
    "gallery:content-action": gallery_action,
    "gallery:content-inpaint": staff_with(
        "generation.view_content", "generation.generate_content"
    ),
    "gallery:sweep-use-strength": staff_with(
        "generation.view_content", "personas.change_persona"
    ),
    "gallery:grid-use-value": staff_with(
        "generation.view_content", "personas.change_persona"
    ),
    "studio-media": studio_media,
    "admin:generation_trainingrun_start": staff_with("generation.train_lora"),
    "admin:generation_trainingrun_chart": staff_with("generation.view_trainingrun"),
    "admin:generation_trainingrun_compare": staff_with("generation.view_trainingrun"),
}
# Unnamed routes, by regex: the root redirect, and the admin's old object URL
# (a redirect to the guarded change page).
UNNAMED: list[tuple[str, Rule]] = [
    (r"\\Z", public),
    (r"admin/\w+/\w+/\(\?P<object_id>\.\+\)/\\Z", staff),
    (r"admin/\(\?P<url>\.\*\)", nobody),  # the admin's catch-all 404
]
# Not requested: logging out would end the session the matrix runs in.
SKIPPED = {"admin:logout"}
# The RQ dashboard lists every job and can empty queues and stop jobs: only
# superusers reach it (studio/urls.py), its statistics JSON (host, port, queue
# names) too, or an API token. django_rq's copy inside the admin
# (RQ_SHOW_ADMIN_LINK) is off; turned on, its pages fall under this rule too.
RQ_POLICY: Rule = superuser_only
# Admins that refuse hand-made rows (generations start from actions).
READ_ONLY_ADMINS = {
    "generation.content",
    "generation.batch",
    "generation.trainingrun",
    "personas.personaloraversion",
}
MODEL_VIEWS = {
    "changelist": ("view", "change"),
    "change": ("view", "change"),
    "history": ("view", "change"),
    "add": ("add",),
    "delete": ("delete",),
}


def model_admin_rule(app_label: str, model_name: str, view: str) -> Rule:
    """Django's own rule for a model admin page: any of ``MODEL_VIEWS[view]``."""
    label = f"{app_label}.{model_name}"

    def rule(role: Role, endpoint: Endpoint) -> bool:
        if label in READ_ONLY_ADMINS and view in ("add",):
            return False
        return role.is_staff and any(
            role.has(f"{app_label}.{action}_{model_name}")
            for action in MODEL_VIEWS[view]
        )

    return rule


ACTION_PERMISSIONS = {
    ("personas.persona", "lock_appearance"): "personas.lock_persona",
    ("personas.persona", "unlock_appearance"): "personas.lock_persona",
    ("personas.persona", "generate"): GENERATE,
    ("personas.persona", "grid"): GENERATE,
    ("personas.persona", "regenerate_latest"): GENERATE,
    ("generation.content", "regenerate"): GENERATE,
    ("generation.content", "regenerate_exactly"): GENERATE,
    ("generation.content", "cancel"): GENERATE,
    ("generation.content", "retry"): GENERATE,
    ("generation.content", "retry_with_current"): GENERATE,
    ("generation.content", "approve"): REVIEW,
    ("generation.content", "reject"): REVIEW,
    ("generation.content", "rescore"): GENERATE,
    ("personas.referenceimage", "set_role"): "personas.change_referenceimage",
    ("personas.persona", "train_lora"): "generation.train_lora",
    ("generation.trainingrun", "cancel_training"): "generation.train_lora",
    ("personas.personaloraversion", "activate_lora_version"): (
        "personas.change_personaloraversion"
    ),
}

# --- The URLs, walked from the URLconf -----------------------------------------


@dataclass
class Endpoint:
    name: str
    url: str
    kwargs: dict[str, str] = field(default_factory=dict)
    method: str = "get"

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.url} ({self.name})"


def walk(
    patterns: list, prefix: str = "", namespace: str = ""
) -> Iterator[tuple[str, str]]:
    """(name, route regex) of every URL pattern; an unnamed one is named
    ``route:<regex>``."""
    for pattern in patterns:
        route = prefix + pattern.pattern.regex.pattern.lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            space = pattern.namespace or namespace
            if pattern.namespace and namespace:
                space = f"{namespace}:{pattern.namespace}"
            yield from walk(pattern.url_patterns, route.rstrip("\\Z"), space)
        elif isinstance(pattern, URLPattern):
            if pattern.name:
                yield (
                    (f"{namespace}:{pattern.name}" if namespace else pattern.name),
                    route,
                )
            else:
                yield f"route:{route}", route


def rule_for(name: str) -> Rule | None:
    if name in POLICY:
        return POLICY[name]
    if name.startswith(("django_rq:", "admin:django_rq_")):
        return RQ_POLICY
    if name.startswith("route:"):
        return next(
            (rule for regex, rule in UNNAMED if re.fullmatch(regex, name[6:])), None
        )
    found = admin_model_view(name)
    if found:
        model, view = found
        return model_admin_rule(model._meta.app_label, model._meta.model_name, view)
    return None


@dataclass
class World:
    """Rows and files of every kind, and the values that fill URL parameters."""

    persona: Persona
    content: Content
    sweep_content: Content
    fills: dict[str, list[str]]


def endpoints(world: World) -> list[Endpoint]:
    """Every URL of the URLconf, with its parameters filled from ``world``."""
    found = []
    for name, route in walk(get_resolver().url_patterns):
        if name in SKIPPED:
            continue
        parameters = re.findall(r"\(\?P<(\w+)>", route)
        for values in _combinations(parameters, world, name):
            found.append(Endpoint(name, "/" + fill_route(route, values), values))
    return found


def fill_route(route: str, values: dict[str, str]) -> str:
    """The URL of a route regex with its groups replaced by ``values``."""
    url = re.sub(
        r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)\??",
        lambda group: values[group.group(1)],
        route,
    )
    return url.replace("\\Z", "").replace("/?", "/").replace("\\", "")


def _combinations(
    parameters: list[str], world: World, name: str
) -> Iterator[dict[str, str]]:
    if not parameters:
        yield {}
        return
    first, rest = parameters[0], parameters[1:]
    key = _fill_key(first, name)
    assert key in world.fills, f"no value for <{first}> of {name}: add one to fills"
    for value in world.fills[key]:
        for others in _combinations(rest, world, name):
            yield {first: value, **others}


def _fill_key(parameter: str, name: str) -> str:
    """Which fill a parameter takes: object ids depend on the admin's model."""
    found = admin_model_view(name)
    if parameter == "object_id" and found:
        return f"object_id:{found[0]._meta.label_lower}"
    if name == "admin:auth_user_password_change":
        return "object_id:auth.user"
    if name == "gallery:content-preview":
        return "content_id:running"  # only a running content has a preview
    return parameter


def admin_model_view(name: str) -> tuple[type, str] | None:
    """(model, view) of a registered model admin's standard URL name."""
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}_"
        view = name.removeprefix(prefix)
        if view != name and view in MODEL_VIEWS:
            return model, view
    return None


# --- Fixtures -----------------------------------------------------------------


def make_user(role: Role):
    if not role.authenticated:
        return None
    user = get_user_model().objects.create_user(
        role.name.replace(" ", "-"),
        password="password",
        is_staff=role.staff,
        is_superuser=role.superuser,
    )
    for permission in role.permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def png_file(colour: tuple[int, int, int]) -> ContentFile:
    image = halves((64, 64))
    image.paste(colour, (0, 0, 8, 8))
    return ContentFile(encode(image, "PNG"), name="image.png")


@pytest.fixture
def world(studio_settings, db, media_root) -> Iterator[World]:
    """A persona with a gallery, a LoRA and a control image; a succeeded, a failed
    and a queued generation with every file a generation stores; a sweep; and
    a job in the RQ queue."""
    persona = make_persona(slug="ada")
    persona_set_lora(
        persona=persona,
        file=SimpleUploadedFile("persona.safetensors", safetensors_lora()),
    )
    unit = ControlNetUnit(persona=persona, control_type="openpose")
    unit.control_image = SimpleUploadedFile(
        "pose.png", encode(halves((64, 64)).rotate(90), "PNG")
    )
    control_unit_save(unit=unit)
    content = services.content_enqueue(persona=persona, prompt="a portrait")
    content.output_image.save("output.png", png_file((0, 255, 0)), save=False)
    content.output_thumbnail.save("thumb.webp", png_file((0, 0, 0)), save=False)
    content.before_thumbnail.save("before.webp", png_file((9, 9, 9)), save=False)
    content.detailer_before_image.save(
        "before-detailer.png", png_file((7, 7, 7)), save=False
    )
    content.inpaint_mask.save("mask.png", png_file((255, 255, 255)), save=False)
    content.status = ContentStatus.SUCCEEDED
    content.finished_at = timezone.now()
    content.save()
    control = ContentControlImage(content=content, control_type="openpose")
    control.image.save("control.png", png_file((1, 2, 3)))
    failed = services.content_enqueue(persona=persona, prompt="a failure")
    services.content_fail(content=failed, code="test", message="Failed on purpose.")
    services.content_enqueue(persona=persona, prompt="waiting")
    running = services.content_enqueue(persona=persona, prompt="running")
    Content.objects.filter(pk=running.pk).update(status=ContentStatus.RUNNING)
    previews.preview_publish(
        connection=get_queue(settings.STUDIO_DEFAULT_QUEUE).connection,
        job_id=running.rq_job_id,
        step=1,
        image=Image.new("RGB", (8, 8)),
    )
    sweep = services.content_grid(
        persona=persona,
        prompt="a grid",
        axes=[GridAxis(parameter=GridParameter.STRENGTH, values=(0.3, 0.7))],
    )
    Content.objects.filter(batch=sweep).update(status=ContentStatus.SUCCEEDED)
    sweep_content = sweep.contents.order_by("pk").first()
    queue = get_queue(settings.STUDIO_DEFAULT_QUEUE)
    job = queue.enqueue(services.JOB_FUNCTION, content.pk)
    # A registered (idle) RQ worker, for the dashboard's worker page.
    worker = SimpleWorker([queue], connection=queue.connection)
    worker.register_birth()
    Group.objects.create(name="editors")
    run = TrainingRun.objects.create(
        persona=persona,
        model=persona.base_model,
        hyperparameters={},
        trigger_word="ada_person",
        inputs=[],
    )
    version = PersonaLoraVersion(persona=persona, number=1, sha256="0" * 64)
    version.weights.save("v1.safetensors", ContentFile(safetensors_lora()))
    admin_models = {
        f"object_id:{model._meta.label_lower}": [
            str(model._default_manager.order_by("pk").values_list("pk", flat=True)[0])
        ]
        for model in admin.site._registry
        if model._meta.managed and model._default_manager.exists()
    }
    users = get_user_model().objects.create_user("someone", is_staff=True)
    admin_models["object_id:auth.user"] = [str(users.pk)]
    from django.contrib.contenttypes.models import ContentType

    fills = {
        **admin_models,
        "app_label": sorted({model._meta.app_label for model in admin.site._registry}),
        "content_type_id": [str(ContentType.objects.get_for_model(Persona).pk)],
        "object_id": [str(persona.pk)],
        "persona_id": [str(persona.pk)],
        "run_id": [str(run.pk)],
        "slug": [persona.slug],
        "content_id": [str(content.pk)],
        "content_id:running": [str(running.pk)],
        "batch_id": [str(sweep.pk)],
        "action": sorted(CONTENT_ACTIONS),
        "path": stored_names() + MEDIA_FOLDERS,
        "queue_index": ["0"],
        "job_id": [job.id],
        "result_id": ["0"],
        "key": [worker.key],
        "scheduler_index": ["0"],
        "connection_index": ["0"],
        "scheduler_name": ["no-such-scheduler"],
        "cron_job_name": ["no-such-cron-job"],
        "token": ["nosuchtoken"],
        "url": ["no-such-page/"],
    }
    yield World(persona, content, sweep_content, fills)
    worker.register_death()


@pytest.fixture
def client() -> Client:
    """A client that turns a view's exception into the 500 a browser would get."""
    return Client(raise_request_exception=False)


def login(client: Client, role: Role) -> None:
    user = make_user(role)
    if user is not None:
        client.force_login(user)


def granted(response) -> bool:
    """True when the response serves the page or does the thing; the login page,
    401, 403, 404 and 405 are denials."""
    if response.status_code in (401, 403, 404, 405):
        return False
    if response.status_code in (301, 302):
        return "/login/" not in response["Location"]
    assert response.status_code == 200, response.status_code
    return True


# --- Tests ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_role_reaches_exactly_what_the_policy_grants(
    role, world, client, media_root, figures
):
    login(client, role)
    problems, counts = [], {"granted": 0, "denied": 0}
    for endpoint in endpoints(world):
        rule = rule_for(endpoint.name)
        if rule is None:
            problems.append(f"{endpoint}: no policy; add one to POLICY")
            continue
        expected = rule(role, endpoint)
        if endpoint.name in DENIAL_ONLY and expected:
            continue
        response = client.get(endpoint.url)
        if response.status_code == 500:
            problems.append(f"{endpoint}: HTTP 500")
            continue
        if response.status_code == 405:
            endpoint.method = "post"
            before = studio_state()
            response = client.post(
                endpoint.url,
                {"content": world.sweep_content.pk, "axis": 0, "value": 0},
            )
        if response.status_code == 500:
            problems.append(f"{endpoint}: HTTP 500")
            continue
        got = granted(response)
        if endpoint.method == "post" and not got:
            assert studio_state() == before, f"denied {endpoint} changed state"
        if got != expected:
            problems.append(
                f"{endpoint}: {'granted' if got else 'denied'} "
                f"(HTTP {response.status_code}), policy says "
                f"{'grant' if expected else 'deny'}"
            )
        counts["granted" if got else "denied"] += 1
        figures.record(
            group=role.name,
            item=str(endpoint),
            outcome="granted" if got else "denied",
        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_role_runs_exactly_the_admin_actions_the_policy_grants(
    role, world, client, media_root, figures
):
    login(client, role)
    problems = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        if not model._meta.managed:  # no table, so no row to act on
            continue
        row = model._default_manager.order_by("pk").first()
        if row is None:
            continue
        changelist = reverse(
            f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
        )
        names = [
            name if isinstance(name, str) else name.__name__
            for name in [*(model_admin.actions or ()), "delete_selected"]
        ]
        for action in names:
            if action == "delete_selected":
                permission = f"{model._meta.app_label}.delete_{model._meta.model_name}"
            elif (label, action) in ACTION_PERMISSIONS:
                permission = ACTION_PERMISSIONS[(label, action)]
            else:
                problems.append(
                    f"{label}.{action}: no policy; add it to ACTION_PERMISSIONS"
                )
                continue
            can_list = any(
                role.has(f"{model._meta.app_label}.{verb}_{model._meta.model_name}")
                for verb in ("view", "change")
            )
            expected = role.is_staff and can_list and role.has(permission)
            before = studio_state()
            client.cookies.pop("messages", None)  # only this action's messages
            response = client.post(
                changelist,
                {"action": action, "_selected_action": [str(row.pk)], "index": "0"},
            )
            assert response.status_code != 500, (label, action)
            got = action_ran(response)
            if not got:
                assert studio_state() == before, (label, action)
            if got != expected:
                problems.append(
                    f"{label}.{action}: {'ran' if got else 'refused'}, policy says "
                    f"{'run' if expected else 'refuse'}"
                )
            figures.record(
                group=role.name,
                item=f"admin action {label}.{action}",
                outcome="granted" if got else "denied",
            )
    assert not problems, "\n".join(problems)


def action_ran(response) -> bool:
    """An admin action ran when it shows its own page (an intermediate form or
    the deletion confirmation) or redirects without "No action selected"."""
    if response.status_code in (403, 404) or (
        response.status_code == 302 and "/login/" in response["Location"]
    ):
        return False
    if response.status_code == 200:
        return "action_name" in response.context or "deletable_objects" in (
            response.context or {}
        )
    shown = [str(message) for message in messages.get_messages(response.wsgi_request)]
    return not any("No action selected" in message for message in shown)


def test_a_gallery_post_without_its_csrf_token_is_refused(world, media_root):
    role = ROLES[-1]
    client = Client(enforce_csrf_checks=True)
    login(client, role)
    before = studio_state()

    response = client.post(
        reverse("gallery:content-action", args=[world.content.pk, "approve"])
    )

    assert response.status_code == 403
    assert studio_state() == before
