"""The migration that made grids of the strength sweeps: a sweep of before
becomes a grid with one strength axis whose tiles are its contents in the order
of their strengths, so its sheet and "use this value" keep working."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [
    ("generation", "0008_content_detailer_inpaint"),
    ("personas", "0006_persona_scheduler"),
]
AFTER = [("generation", "0009_batch_grid_axes")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_a_strength_sweep_becomes_a_grid_with_one_strength_axis():
    old = migrate(BEFORE)
    persona = old.get_model("personas", "Persona").objects.create(
        name="Old", slug="old", base_model="tiny-sd15"
    )
    sweep = old.get_model("generation", "Batch").objects.create(
        persona=persona, kind="sweep", prompt="x", strengths=[0.7, 0.3]
    )
    content_model = old.get_model("generation", "Content")
    first, second = (
        content_model.objects.create(
            persona=persona,
            batch=sweep,
            prompt="x",
            method_requested="img2img",
            seed=1,
            request={"strength": strength},
        )
        for strength in (0.7, 0.3)
    )
    plain = old.get_model("generation", "Batch").objects.create(
        persona=persona, kind="batch", prompt="y"
    )
    try:
        new = migrate(AFTER)
        grid = new.get_model("generation", "Batch").objects.get(pk=sweep.pk)
        assert grid.kind == "grid"
        assert grid.axes == [
            {
                "parameter": "strength",
                "values": [0.7, 0.3],
                "unit": None,
                "unit_id": None,
                "unit_type": "",
            }
        ]
        assert grid.tiles == [[first.pk, [0]], [second.pk, [1]]]
        batch = new.get_model("generation", "Batch").objects.get(pk=plain.pk)
        assert (batch.kind, batch.axes, batch.tiles) == ("batch", [], [])

        back = migrate(BEFORE)
        sweep_again = back.get_model("generation", "Batch").objects.get(pk=sweep.pk)
        assert (sweep_again.kind, sweep_again.strengths) == ("sweep", [0.7, 0.3])
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
