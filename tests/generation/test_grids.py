"""X/Y/Z grids: reading and checking axes, expanding them into tiles, the
plan check of every tile before anything is queued, and "use this value"
writing on the persona (with its history entry and permission).

These run against the real Redis and database but start no worker (the
browser test runs a grid through one)."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import ValidationError
from rq import Queue

from generation import grids, services
from generation.engine.vocabulary import GridParameter
from generation.forms import GridForm
from generation.grids import GridAxis
from generation.models import Batch, BatchKind, Content
from generation.parameters import GenerationOverrides
from personas.models import ControlNetUnit
from personas.services import control_unit_save
from tests.workers import make_persona, use_queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(redis_connection, studio_settings):
    """Generations of the test go to a queue of its own (other tests, in
    parallel processes, share the Redis)."""
    use_queue(studio_settings, f"grids-{uuid.uuid4().hex[:12]}")
    return redis_connection


def own_queue(connection) -> Queue:
    from django.conf import settings

    return Queue(settings.STUDIO_DEFAULT_QUEUE, connection=connection)


def axis(parameter: str, *values, unit: int | None = None) -> GridAxis:
    return GridAxis(parameter=GridParameter(parameter), values=values, unit=unit)


def refusal(error: pytest.ExceptionInfo) -> str:
    return " ".join(error.value.messages)


# --- Reading one axis -----------------------------------------------------------------


@pytest.mark.parametrize(
    "parameter, text, values",
    [
        ("strength", "0.3, 0.5,0.7", (0.3, 0.5, 0.7)),
        ("steps", "10, 20", (10, 20)),
        ("seed", "1, 2", (1, 2)),
        ("guidance_scale", "5, 7.5", (5.0, 7.5)),
        (
            "scheduler",
            "ddimscheduler, EulerDiscreteScheduler",
            ("DDIMScheduler", "EulerDiscreteScheduler"),
        ),
        ("method", "img2img, HYBRID", ("img2img", "hybrid")),
        ("unit_window", "0-0.5, 0.2 – 1", ((0.0, 0.5), (0.2, 1.0))),
        ("ip_adapter_scale", "0.4, 1.2", (0.4, 1.2)),
    ],
)
def test_axis_values_are_read_from_comma_separated_text(parameter, text, values):
    assert grids.axis_values(parameter, grids.split_values(text), name="X") == values


@pytest.mark.parametrize(
    "parameter, text, says",
    [
        (
            "strength",
            "0.3, 1.4",
            "X axis (img2img strength): 1.4 is not between 0 and 1.",
        ),
        ("strength", "0.3, half", "X axis (img2img strength): 'half' is not a number"),
        ("strength", "nan", "nan is not between 0 and 1"),
        ("steps", "12.5", "X axis (steps): '12.5' is not a whole number"),
        ("steps", "0, 10", "0 is not between 1 and 150"),
        ("strength", "0.3, 0.3", "has 0.3 more than once"),
        ("strength", " , ", "X axis (img2img strength) has no values"),
        ("scheduler", "Fastest", "unknown scheduler 'Fastest'; choose among DDIM"),
        ("method", "magic", "unknown method 'magic'"),
        ("unit_window", "0.6-0.2", "the window 0.6-0.2 must end after it starts"),
        ("unit_window", "0.5", "is not a window; write start-end"),
        ("lora_scale", "3", "3 is not between 0 and 2"),
        ("colour", "red", "X axis: unknown parameter colour; choose among seed"),
    ],
)
def test_a_bad_axis_value_is_refused_saying_what_to_fix(parameter, text, says):
    with pytest.raises(ValidationError) as error:
        grids.axis_values(parameter, grids.split_values(text), name="X")
    assert says in refusal(error)


def test_the_grid_form_reads_the_axes_and_puts_errors_beside_their_field(db):
    persona = make_persona(method="img2img")
    unit = control_unit_save(unit=ControlNetUnit(persona=persona, control_type="canny"))
    form = GridForm(
        {
            "prompt": "a portrait",
            "x_parameter": "strength",
            "x_values": "0.3, 0.6",
            "y_parameter": "unit_scale:1",
            "y_values": "0.5, 1",
        },
        persona=persona,
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["axes"] == [
        axis("strength", 0.3, 0.6),
        axis("unit_scale", 0.5, 1.0, unit=1),
    ]
    assert (
        "unit_scale:1",
        f"ControlNet unit 1 ({unit.get_control_type_display()}) scale",
    ) in form.fields["x_parameter"].choices

    bad = GridForm(
        {
            "prompt": "a portrait",
            "x_parameter": "strength",
            "x_values": "0.3, 7",
            "z_parameter": "steps",
            "z_values": "4",
        },
        persona=persona,
    )
    assert not bad.is_valid()
    assert "7 is not between 0 and 1" in bad.errors["x_values"][0]
    assert "the Z axis needs the one before" in bad.errors["z_parameter"][0]


# --- Tiles ------------------------------------------------------------------------


def test_tiles_are_every_combination_with_x_changing_fastest():
    axes = [axis("strength", 0.3, 0.6), axis("steps", 4, 8), axis("seed", 1, 2, 3)]
    cells = grids.grid_cells(axes)
    assert len(cells) == 12
    assert cells[:4] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert cells[-1] == (1, 1, 2)
    assert grids.grid_cells(axes[:1]) == [(0,), (1,)]


def test_a_tile_gets_the_grids_overrides_with_its_axis_values(db):
    persona = make_persona(method="hybrid")
    unit = control_unit_save(
        unit=ControlNetUnit(persona=persona, control_type="canny", guidance_end=0.8)
    )
    axes = grids.axes_resolve(
        [
            axis("unit_window", (0.0, 0.5), (0.2, 1.0), unit=1),
            axis("guidance_scale", 5, 9),
        ],
        persona=persona,
        overrides=GenerationOverrides(),
    )
    assert axes[0].unit_id == unit.pk
    tile = grids.tile_overrides(
        axes, (1, 0), base=GenerationOverrides(seed=3), units={unit.pk: unit}
    )
    assert tile.seed == 3
    assert tile.guidance_scale == 5.0
    run = tile.control_units[unit.pk]
    assert (run.guidance_start, run.guidance_end) == (0.2, 1.0)
    assert run.conditioning_scale == unit.conditioning_scale
    assert grids.tile_label(axes, (1, 0)) == (
        "ControlNet unit 1 (Canny edges) window 0.2–1, guidance scale 5"
    )


# --- Queuing a grid -----------------------------------------------------------------


def test_a_strength_by_steps_grid_on_a_hybrid_persona_runs_hybrid_in_every_tile(
    connection, django_capture_on_commit_callbacks
):
    persona = make_persona(method="hybrid")
    control_unit_save(unit=ControlNetUnit(persona=persona, control_type="canny"))
    with django_capture_on_commit_callbacks(execute=True):
        grid = services.content_grid(
            persona=persona,
            prompt="a portrait",
            axes=[axis("strength", 0.3, 0.6), axis("steps", 4, 8)],
            overrides=GenerationOverrides(seed=5),
        )
    assert grid.kind == BatchKind.GRID
    assert grid.tile_count == 4
    requests = {
        tuple(cell): Content.objects.get(pk=pk).request for pk, cell in grid.tiles
    }
    assert {cell: (r["strength"], r["steps"]) for cell, r in requests.items()} == {
        (0, 0): (0.3, 4),
        (1, 0): (0.6, 4),
        (0, 1): (0.3, 8),
        (1, 1): (0.6, 8),
    }
    assert {r["method"] for r in requests.values()} == {"hybrid"}
    assert {r["seed"] for r in requests.values()} == {5}
    assert own_queue(connection).count == 4
    stored = GridAxis.from_json(grid.axes[1])
    assert (stored.parameter, stored.values) == (GridParameter.STEPS, (4, 8))


def test_a_seed_axis_gives_each_column_its_seed(connection):
    persona = make_persona(method="img2img")
    grid = services.content_grid(
        persona=persona, prompt="x", axes=[axis("seed", 11, 12)]
    )
    seeds = [Content.objects.get(pk=pk).seed for pk, _ in grid.tiles]
    assert seeds == [11, 12]


def test_a_grid_with_one_tile_sure_to_fail_is_refused_whole_with_the_engines_message(
    connection, django_capture_on_commit_callbacks
):
    persona = make_persona(method="img2img")
    # Tiles (0.5, 12) and (0.02, 50) come before and after the refused one,
    # (0.02, 12): none of them stays or is enqueued.
    with (
        django_capture_on_commit_callbacks(execute=True) as enqueued,
        pytest.raises(ValidationError) as error,
    ):
        services.content_grid(
            persona=persona,
            prompt="x",
            axes=[axis("strength", 0.5, 0.02), axis("steps", 12, 50)],
        )
    said = refusal(error)
    assert "The tile img2img strength 0.02, steps 12 is sure to fail" in said
    assert "raise the steps to 50 or raise the strength" in said
    assert not Batch.objects.exists()
    assert not Content.objects.exists()
    assert enqueued == []
    assert own_queue(connection).count == 0


def test_a_grid_over_the_tile_limit_is_refused_naming_the_setting(connection, settings):
    settings.STUDIO_GRID_MAX_TILES = 3
    persona = make_persona(method="img2img")
    with pytest.raises(ValidationError) as error:
        services.content_grid(
            persona=persona,
            prompt="x",
            axes=[axis("strength", 0.3, 0.6), axis("steps", 4, 8)],
        )
    assert "The grid has 2 × 2 = 4 tiles; at most 3 (STUDIO_GRID_MAX_TILES)" in (
        refusal(error)
    )
    assert not Content.objects.exists()


@pytest.mark.parametrize(
    "method, axes, says",
    [
        ("text", [axis("strength", 0.3)], "img2img strength is not used by Text only"),
        (
            "img2img",
            [axis("unit_scale", 0.5, unit=1)],
            "has 0 ControlNet unit(s), so there is no unit 1",
        ),
        ("img2img", [axis("lora_scale", 0.5)], "has no LoRA weights"),
        (
            "img2img",
            [axis("steps", 4), axis("steps", 8)],
            "The Y axis varies steps, as the X axis does",
        ),
        (
            "controlnet",
            [axis("ip_adapter_scale", 0.5)],
            "IP-Adapter scale is not used by ControlNet",
        ),
    ],
)
def test_an_axis_the_persona_cannot_use_is_refused(connection, method, axes, says):
    persona = make_persona(method=method)
    with pytest.raises(ValidationError) as error:
        services.content_grid(persona=persona, prompt="x", axes=axes)
    assert says in refusal(error)
    assert not Content.objects.exists()


def test_a_method_axis_lets_a_strength_axis_through_on_a_text_persona(connection):
    persona = make_persona(method="text")
    grid = services.content_grid(
        persona=persona,
        prompt="x",
        axes=[axis("method", "text", "img2img"), axis("strength", 0.4)],
    )
    methods = [Content.objects.get(pk=pk).request["method"] for pk, _ in grid.tiles]
    assert methods == ["text", "img2img"]


def test_an_axis_over_a_unit_that_is_off_is_refused(connection):
    persona = make_persona(method="controlnet")
    control_unit_save(
        unit=ControlNetUnit(persona=persona, control_type="canny", enabled=False)
    )
    with pytest.raises(ValidationError) as error:
        services.content_grid(
            persona=persona, prompt="x", axes=[axis("unit_scale", 0.5, unit=1)]
        )
    assert "ControlNet unit 1 (Canny edges) is off" in refusal(error)


# --- Use this value -------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid_axis, index, persona_field, value",
    [
        (axis("strength", 0.3, 0.6), 1, "img2img_strength", 0.6),
        (axis("steps", 4, 9), 1, "steps", 9),
        (axis("guidance_scale", 3, 9), 0, "guidance_scale", 3.0),
        (axis("method", "img2img", "text"), 1, "method", "text"),
        (axis("seed", 21, 22), 0, "seed", 21),
    ],
)
def test_use_this_value_writes_it_on_the_persona(
    connection, grid_axis, index, persona_field, value
):
    persona = make_persona(method="img2img")
    grid = services.content_grid(persona=persona, prompt="x", axes=[grid_axis])
    choice = services.persona_use_grid_value(
        batch=grid, axis_index=0, value_index=index
    )
    persona.refresh_from_db()
    assert getattr(persona, persona_field) == value
    assert choice.persona == persona
    if persona_field == "seed":
        assert persona.seed_policy == "fixed"


def test_use_this_value_on_a_unit_axis_writes_the_unit(connection):
    persona = make_persona(method="controlnet")
    unit = control_unit_save(unit=ControlNetUnit(persona=persona, control_type="canny"))
    grid = services.content_grid(
        persona=persona,
        prompt="x",
        axes=[axis("unit_window", (0.0, 0.5), (0.1, 0.9), unit=1)],
    )
    choice = services.persona_use_grid_value(batch=grid, axis_index=0, value_index=1)
    unit.refresh_from_db()
    assert (unit.guidance_start, unit.guidance_end) == (0.1, 0.9)
    assert (choice.setting, choice.value) == (
        "ControlNet unit 1 (Canny edges) window",
        "0.1–0.9",
    )


def test_a_scheduler_value_becomes_the_personas_scheduler_for_its_next_runs(
    connection,
):
    persona = make_persona(method="img2img")
    grid = services.content_grid(
        persona=persona,
        prompt="x",
        axes=[axis("scheduler", "DDIMScheduler", "EulerDiscreteScheduler")],
    )
    schedulers = [
        Content.objects.get(pk=pk).request["scheduler"] for pk, _ in grid.tiles
    ]
    assert schedulers == ["DDIMScheduler", "EulerDiscreteScheduler"]
    services.persona_use_grid_value(batch=grid, axis_index=0, value_index=1)
    persona.refresh_from_db()
    assert persona.scheduler == "EulerDiscreteScheduler"
    later = services.content_enqueue(persona=persona, prompt="x")
    assert later.request["scheduler"] == "EulerDiscreteScheduler"


def test_use_this_value_from_the_sheet_needs_the_permission_and_leaves_history(
    connection, client, django_user_model
):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    persona = make_persona(method="img2img")
    grid = services.content_grid(
        persona=persona, prompt="x", axes=[axis("strength", 0.3, 0.6)]
    )
    url = reverse("gallery:grid-use-value", args=[grid.pk])
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_content"))
    client.force_login(viewer)
    assert client.post(url, {"axis": 0, "value": 0}).status_code == 403
    persona.refresh_from_db()
    assert persona.img2img_strength == 0.7

    viewer.user_permissions.add(Permission.objects.get(codename="change_persona"))
    viewer = django_user_model.objects.get(pk=viewer.pk)  # fresh permission cache
    client.force_login(viewer)
    response = client.post(url, {"axis": 0, "value": 0}, follow=True)
    persona.refresh_from_db()
    assert persona.img2img_strength == 0.3
    assert f"{persona} now uses img2img strength 0.3." in response.content.decode()
    (entry,) = LogEntry.objects.filter(object_id=str(persona.pk))
    assert (entry.user, entry.action_flag) == (viewer, CHANGE)
    assert entry.get_edited_object() == persona
    assert entry.get_change_message() == (
        f"Changed img2img strength to 0.3 (a value of the X axis of grid #{grid.pk})."
    )
    bad = client.post(url, {"axis": 3, "value": 0}, follow=True)
    assert "Choose a value of one of this grid" in bad.content.decode()
