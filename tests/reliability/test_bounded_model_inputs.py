"""Whatever reaches a model is resized to its working size first (issue 13,
item 2): the extreme shapes the upload checks accept, fed to every method, the
face detailer, reference editing, face analysis and the scores, in a process
whose address space the OS caps; a control shows the cap stops unbounded work.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.base import ContentFile

from personas.uploads import UploadRejected, validate_image_upload
from studio.conf import BASE_DIR, documented_defaults
from tests.reliability.bounded_inputs_probe import reference

pytestmark = pytest.mark.reliability

DEFAULTS = documented_defaults()
SIDE = DEFAULTS["MAX_UPLOAD_SIDE"]
RATIO = int(DEFAULTS["MAX_UPLOAD_ASPECT_RATIO"])
# The largest square the check's memory budget accepts: an 8-bit grey PNG
# (9 bytes a pixel at the check's peak: decoded twice, the RGB result, its PNG);
# stored, and given to the models, as RGB.
SQUARE = math.isqrt(DEFAULTS["UPLOAD_CHECK_MEMORY_MB"] * 1024 * 1024 // 9)
# The extreme accepted shapes: the longest side at the widest ratio, both ways;
# the thinnest strip; the largest square.
EXTREMES = {
    f"{SIDE}x{SIDE // RATIO}": ((SIDE, SIDE // RATIO), "RGB"),
    f"{SIDE // RATIO}x{SIDE}": ((SIDE // RATIO, SIDE), "RGB"),
    f"{RATIO}x1": ((RATIO, 1), "RGB"),
    f"{SQUARE}x{SQUARE}": ((SQUARE, SQUARE), "L"),
}
# One step past each: refused, so the shapes above are the extremes.
PAST = {
    f"{SIDE}x{SIDE // RATIO}": ((SIDE + 1, SIDE // RATIO + 1), "side_too_long"),
    f"{SIDE // RATIO}x{SIDE}": ((SIDE // RATIO - 1, SIDE), "aspect_ratio"),
    f"{RATIO}x1": ((RATIO + 1, 1), "aspect_ratio"),
    f"{SQUARE}x{SQUARE}": ((SQUARE + 1, SQUARE + 1), "too_much_memory"),
}
# The address space the runs may map past what the warmed-up process has: the
# largest reference as RGB is about 90 MB, and a path holds a few copies (the
# RGB conversion, a crop, the fitted image); an unbounded encoder or VAE
# input asks for gigabytes (the control).
BUDGET_MB = 768


def png(size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    reference(*size).convert(mode).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@pytest.mark.parametrize("name", EXTREMES)
def test_the_extreme_shapes_are_accepted_and_one_pixel_more_is_not(name):
    size, mode = EXTREMES[name]
    accepted = validate_image_upload(ContentFile(png(size, mode), name=f"{name}.png"))
    assert (accepted.width, accepted.height) == size

    past, code = PAST[name]
    with pytest.raises(UploadRejected) as refused:
        validate_image_upload(ContentFile(png(past, mode), name="past.png"))
    assert refused.value.code == code


@pytest.fixture(scope="module")
def probe(tiny_model_dir: Path, tmp_path_factory) -> dict:
    """One capped process: every path on every extreme shape, then the control."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.bounded_inputs_probe",
            str(tiny_model_dir),
            str(tmp_path_factory.mktemp("bounded-inputs")),
            str(BUDGET_MB),
            *EXTREMES,
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_cap_stops_unbounded_work(probe, figures):
    """The control: under the same cap, an allocation past the budget and the
    VAE encoding the widest strip at its full size both fail; so a path that
    did not resize first would fail too."""
    outcomes = probe["control"]["outcomes"]

    assert outcomes["allocation past the budget"] == "MemoryError"
    assert outcomes["VAE encode at full size"] in ("MemoryError", "RuntimeError")
    for path, outcome in outcomes.items():
        figures.record(
            group="bounded model inputs: control (unbounded, must fail)",
            item=f"{path}, {'x'.join(map(str, probe['control']['shape']))}",
            outcome=outcome,
            budget_mb=probe["budget_mb"],
        )


@pytest.mark.parametrize("name", EXTREMES)
def test_every_path_to_a_model_runs_the_extreme_shape_within_the_cap(
    probe, name, figures
):
    (result,) = [
        shape for shape in probe["shapes"] if "x".join(map(str, shape["shape"])) == name
    ]
    outcomes = result["outcomes"]

    assert len(outcomes) == 19, outcomes  # every path ran
    assert {
        path: outcome for path, outcome in outcomes.items() if outcome != "ok"
    } == {}
    figures.record(
        group="bounded model inputs: every path under the cap",
        item=name,
        outcome=f"{len(outcomes)} paths ran within +{probe['budget_mb']} MB",
        paths=len(outcomes),
        budget_mb=probe["budget_mb"],
        peak_rss_mb=probe["peak_rss_mb"],
    )
