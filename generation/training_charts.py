"""The training run's chart: loss and identity against the step, as SVG
(matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import io

from generation.training_models import TrainingRun


def training_identity_points(run: TrainingRun) -> tuple[list[tuple[int, float]], int]:
    """The mean identity similarity of the run's scored samples at each sample
    step, and how many samples have no score (pending, no face, failed)."""
    by_step: dict[int, list[float]] = {}
    unscored = 0
    for sample in run.samples.all():
        if sample.identity_similarity is None:
            unscored += 1
            continue
        by_step.setdefault(sample.step, []).append(sample.identity_similarity)
    points = [
        (step, sum(by_step[step]) / len(by_step[step])) for step in sorted(by_step)
    ]
    return points, unscored


def training_chart_svg(run: TrainingRun) -> str:
    """Loss (left axis) and mean identity similarity of the samples at each
    sample step (right axis); steps without a scored sample are left out and
    said so in the legend. Text stays text in the SVG (searchable, readable by
    a screen reader)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure = Figure(figsize=(7, 3.2))
        loss_axis = figure.add_subplot()
        steps = [pair[0] for pair in run.loss_history]
        losses = [pair[1] for pair in run.loss_history]
        loss_axis.plot(steps, losses, color="tab:blue", linewidth=1, label="loss")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss", color="tab:blue")
        loss_axis.set_xlim(0, max(run.progress_total, 1))
        identity_axis = loss_axis.twinx()
        points, unscored = training_identity_points(run)
        identity_axis.plot(
            [step for step, _ in points],
            [similarity for _, similarity in points],
            color="tab:orange",
            marker="o",
            label="identity"
            + (f" ({unscored} samples without a score)" if unscored else ""),
        )
        identity_axis.set_ylim(0, 1)
        identity_axis.set_ylabel("identity similarity", color="tab:orange")
        handles = loss_axis.get_legend_handles_labels()
        more = identity_axis.get_legend_handles_labels()
        loss_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="upper right")
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    return buffer.getvalue()
