"""A training run's validation samples are scored for identity on the CPU queue,
as outputs are (the GPU job only stores them), and the run page's chart fills
in as the scores land.

The scoring path is proved on real photos (scikit-image's astronaut, public
domain) and dlib's real models: the tiny model's samples are noise with no
face in them, so a sample here is a stored photo of the astronaut, given to the
same service the training job calls. The CPU jobs run in this process through
RQ's ``SimpleWorker`` on the real Redis; the run through worker processes is
in test_runs.py.
"""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageOps
from rq import SimpleWorker
from skimage import data

from generation import training_services as services
from generation.engine.errors import GenerationCancelled
from generation.engine.training import TrainingSettings, ValidationSample
from generation.queues import get_queue
from generation.reconcile import reconcile
from generation.training_charts import training_identity_points
from generation.training_models import TrainingRun, TrainingSample
from personas.services import persona_create, reference_image_add
from tests.images import encode
from tests.reliability.orphans import stored_files

pytestmark = pytest.mark.django_db

CPU_QUEUE = "cpu-training-samples"
GPU_QUEUE = "gpu-training-samples"
SETTINGS = TrainingSettings(
    steps=20, rank=4, alpha=4.0, learning_rate=1e-2, resolution=64, batch_size=2
)


@pytest.fixture
def queues(studio_settings):
    studio_settings.STUDIO_CPU_QUEUE = CPU_QUEUE
    studio_settings.STUDIO_DEFAULT_QUEUE = GPU_QUEUE
    studio_settings.RQ_QUEUES = {
        name: {"URL": studio_settings.REDIS_URL, "DEFAULT_TIMEOUT": 600}
        for name in (GPU_QUEUE, CPU_QUEUE)
    }
    for name in (GPU_QUEUE, CPU_QUEUE):
        get_queue(name).empty()
    yield studio_settings
    for name in (GPU_QUEUE, CPU_QUEUE):
        get_queue(name).empty()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def run_cpu_jobs() -> None:
    queue = get_queue(CPU_QUEUE)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


@pytest.fixture
def running_run(queues, astronaut, django_capture_on_commit_callbacks):
    """A run of a persona whose face references are three photos of the
    astronaut, claimed by its (GPU) job as the worker would."""
    persona = persona_create(name="Eileen", slug="eileen", width=64, height=64)
    views = [
        astronaut,
        ImageOps.mirror(astronaut),
        astronaut.crop((96, 0, 416, 320)).resize((400, 400)),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        references = [
            reference_image_add(
                persona=persona,
                file=SimpleUploadedFile(f"view{index}.png", encode(view, "PNG")),
                role="face",
                is_primary=index == 0,
                caption=f"view {index}",
            )
            for index, view in enumerate(views)
        ]
        run = services.training_run_start(
            persona=persona,
            references=[(ref, f"eileen_person, {ref.caption}") for ref in references],
            trigger_word="eileen_person",
            settings=SETTINGS,
        )
    assert services.training_run_claim(
        run_id=run.pk, job_id=run.rq_job_id, worker_name="gpu-worker"
    )
    return TrainingRun.objects.get(pk=run.pk)


def samples_at(step: int, *images: Image.Image) -> list[ValidationSample]:
    return [
        ValidationSample(step=step, prompt="eileen_person smiling", seed=seed, image=im)
        for seed, im in enumerate(images, start=1)
    ]


def test_samples_are_stored_pending_and_scored_by_the_cpu_queue_not_the_gpu_job(
    running_run, astronaut, django_capture_on_commit_callbacks
):
    gpu_jobs_before = get_queue(GPU_QUEUE).count
    face = astronaut.crop((120, 20, 400, 300))
    with django_capture_on_commit_callbacks(execute=True):
        stored = services.training_run_add_samples(
            run=running_run, samples=samples_at(10, face, ImageOps.mirror(face))
        )
    assert [sample.identity_status for sample in stored] == ["pending", "pending"]
    assert all(sample.identity_similarity is None for sample in stored)
    cpu = get_queue(CPU_QUEUE)
    queued = {job.func_name for job in cpu.get_jobs()}
    assert "generation.scoring_jobs.training_sample_score" in queued
    assert get_queue(GPU_QUEUE).count == gpu_jobs_before

    run_cpu_jobs()

    samples = list(TrainingSample.objects.filter(run=running_run).order_by("seed"))
    for sample in samples:
        assert sample.identity_status == "scored", sample.identity_detail
        assert sample.identity_similarity > 0.5  # dlib: the same person
        assert sorted(sample.identity_detail["face_references"]) == sorted(
            entry["reference"] for entry in running_run.inputs
        )
    points, unscored = training_identity_points(running_run)
    assert unscored == 0
    assert [step for step, _ in points] == [10]
    assert points[0][1] == pytest.approx(
        sum(sample.identity_similarity for sample in samples) / 2
    )


def test_the_run_page_chart_and_grid_show_the_scores_once_they_land(
    running_run, astronaut, admin_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.training_run_add_samples(
            run=running_run, samples=samples_at(10, astronaut)
        )
    chart_url = f"/admin/generation/trainingrun/{running_run.pk}/chart.svg"
    page_url = f"/admin/generation/trainingrun/{running_run.pk}/change/"
    waiting = admin_client.get(chart_url).content.decode()
    assert "1 samples without a score" in waiting
    assert "pending" in admin_client.get(page_url).content.decode()

    run_cpu_jobs()

    chart = admin_client.get(chart_url)
    assert chart["Content-Type"] == "image/svg+xml"
    text = chart.content.decode()
    assert ">identity<" in text and "without a score" not in text
    page = admin_client.get(page_url).content.decode()
    (similarity,) = re.findall(r"identity (0\.\d\d)", page)
    sample = TrainingSample.objects.get(run=running_run)
    assert float(similarity) == pytest.approx(sample.identity_similarity, abs=0.005)
    # The sample's image is served to staff who may view the run.
    assert admin_client.get(f"/media/{sample.image.name}").status_code == 200


def test_a_lost_sample_scoring_job_is_enqueued_again_by_the_reconciler(
    running_run, astronaut, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        (sample,) = services.training_run_add_samples(
            run=running_run, samples=samples_at(10, astronaut)
        )
    lost_job = sample.score_job_id
    get_queue(CPU_QUEUE).empty()  # Redis lost it (flushed, restarted)

    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile()

    assert report.sample_scoring == [sample.pk]
    sample.refresh_from_db()
    assert sample.identity_status == "pending" and sample.score_job_id != lost_job
    run_cpu_jobs()
    sample.refresh_from_db()
    assert sample.identity_status == "scored"


def test_samples_of_a_run_no_longer_this_jobs_are_dropped_with_no_file_left(
    running_run, astronaut
):
    # The session's media folder keeps the files of earlier tests' rolled-back
    # rows: compare with what is there now.
    before = stored_files()
    TrainingRun.objects.filter(pk=running_run.pk).update(rq_job_id="another-job")
    with pytest.raises(GenerationCancelled, match="no longer this job's"):
        services.training_run_add_samples(
            run=running_run, samples=samples_at(10, astronaut)
        )
    assert not TrainingSample.objects.filter(run=running_run).exists()
    assert stored_files() == before
