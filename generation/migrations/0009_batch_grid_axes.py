"""Grids replace strength sweeps: a batch keeps its axes and tiles, and each
sweep of before becomes a grid with one strength axis (its tiles in the order
of its strengths), so its contact sheet and "use this value" keep working."""

from django.db import migrations, models


def sweeps_to_grids(apps, schema_editor):
    Batch = apps.get_model("generation", "Batch")
    for batch in Batch.objects.filter(kind="sweep"):
        strengths = [float(value) for value in batch.strengths]
        tiles = []
        for content in batch.contents.order_by("pk"):
            strength = (content.request or {}).get("strength")
            if strength in strengths:
                tiles.append([content.pk, [strengths.index(strength)]])
        batch.kind = "grid"
        batch.axes = [
            {
                "parameter": "strength",
                "values": strengths,
                "unit": None,
                "unit_id": None,
                "unit_type": "",
            }
        ]
        batch.tiles = tiles
        batch.save(update_fields=["kind", "axes", "tiles"])


def grids_to_sweeps(apps, schema_editor):
    """Back: a grid with one strength axis is a sweep again; other grids stay
    batches of their contents."""
    Batch = apps.get_model("generation", "Batch")
    for batch in Batch.objects.filter(kind="grid"):
        axes = batch.axes or []
        if len(axes) == 1 and axes[0]["parameter"] == "strength":
            batch.kind, batch.strengths = "sweep", axes[0]["values"]
        else:
            batch.kind = "batch"
        batch.save(update_fields=["kind", "strengths"])


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0008_content_detailer_inpaint"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="axes",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="A grid's axes: each a parameter and its values "
                "(generation.grids.GridAxis).",
            ),
        ),
        migrations.AddField(
            model_name="batch",
            name="tiles",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="A grid's tiles: [content id, [x, y, z value indexes]] "
                "each.",
            ),
        ),
        migrations.AlterField(
            model_name="batch",
            name="kind",
            field=models.CharField(
                choices=[("batch", "Batch"), ("grid", "Grid"), ("sweep", "Sweep")],
                default="batch",
                max_length=8,
            ),
        ),
        migrations.RunPython(sweeps_to_grids, grids_to_sweeps),
        migrations.RemoveField(
            model_name="batch",
            name="strengths",
        ),
        migrations.AlterField(
            model_name="batch",
            name="kind",
            field=models.CharField(
                choices=[("batch", "Batch"), ("grid", "Grid")],
                default="batch",
                max_length=8,
            ),
        ),
    ]
