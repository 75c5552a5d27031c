"""The identity page's chart: a real plot, drawn server-side by matplotlib as
SVG (its object API on the Agg canvas; no pyplot, no global state, so that
threads of the web server cannot draw into each other's figures)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from generation.engine.identity import SAME_PERSON_DISTANCE, similarity_from_distance

SAME_PERSON_SIMILARITY = similarity_from_distance(SAME_PERSON_DISTANCE)
# The latest scored outputs drawn: an SVG of every one of 50,000 outputs would
# weigh megabytes (the table and the CSV count them all).
MAX_POINTS = 2_000


def identity_chart_svg(
    rows: Sequence[dict[str, Any]], *, threshold: float, title: str
) -> str:
    """Two panels: each scored output's identity over time, coloured by method,
    with dlib's same-person line and the persona's review threshold; and the
    spread of identity per method, for the latest ``MAX_POINTS`` scored outputs
    (``rows`` oldest first). Returns the ``<svg>`` element."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [row for row in rows if row["identity_status"] == "scored"][-MAX_POINTS:]
    methods = sorted({row["method_used"] for row in scored})
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    over_time, by_method = figure.subplots(
        1, 2, gridspec_kw={"width_ratios": [3, 1.3]}
    )
    for method in methods:
        points = [row for row in scored if row["method_used"] == method]
        over_time.scatter(
            [row["created_at"] for row in points],
            [row["identity_similarity"] for row in points],
            label=f"{method} ({len(points)})",
            s=14,
        )
    for axes in (over_time, by_method):
        axes.axhline(
            SAME_PERSON_SIMILARITY,
            color="black",
            linewidth=0.8,
            linestyle="--",
            label="same person (0.5)" if axes is over_time else None,
        )
        if threshold != SAME_PERSON_SIMILARITY:
            axes.axhline(
                threshold,
                color="tab:red",
                linewidth=0.8,
                linestyle=":",
                label=f"review threshold ({threshold:.2f})"
                if axes is over_time
                else None,
            )
        axes.set_ylim(0, 1)
    over_time.set_title(f"{title}: identity over time")
    over_time.set_ylabel("identity (0..1)")
    if not scored:
        over_time.text(
            0.5,
            0.5,
            "no scored output yet",
            transform=over_time.transAxes,
            ha="center",
            va="center",
        )
    over_time.legend(loc="lower left", fontsize="small")
    figure.autofmt_xdate()
    by_method.set_title("by method")
    if methods:
        by_method.boxplot(
            [
                [
                    row["identity_similarity"]
                    for row in scored
                    if row["method_used"] == method
                ]
                for method in methods
            ],
            tick_labels=methods,
        )
        by_method.tick_params(axis="x", labelrotation=30)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    # The XML prologue and doctype would be out of place inside a page.
    return svg[svg.index("<svg") :]
