"""The engine's LoRA trainer on the tiny model, on the CPU."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
from django.core.files.base import ContentFile

from generation.engine.errors import InvalidRequest
from generation.engine.training import (
    MIN_TRAINING_IMAGES,
    PRESETS,
    Trainer,
    TrainingCancelled,
    TrainingRequest,
    TrainingSettings,
    aspect_buckets,
    check_training,
    choose_bucket,
    latest_checkpoint,
    preset_settings,
)
from personas.lora import validate_lora_upload

# Fast-learning settings for a 64-pixel model: enough steps for the loss to move.
LEARNING = TrainingSettings(
    steps=60,
    rank=4,
    alpha=4.0,
    learning_rate=1e-2,
    resolution=64,
    batch_size=2,
    seed=1,
)


def request_for(images, **settings) -> TrainingRequest:
    return TrainingRequest(
        model="tiny-sd15", images=images, settings=replace(LEARNING, **settings)
    )


@pytest.fixture
def trained(engine, training_images, tmp_path):
    """One 60-step run, its LoRA file and loss history."""
    return Trainer(engine).train(
        request_for(training_images), work_dir=tmp_path / "work"
    )


def test_a_short_run_lowers_the_training_loss_on_its_own_images(trained):
    quarter = len(trained.losses) // 4
    first = statistics.mean(trained.losses[:quarter])
    last = statistics.mean(trained.losses[-quarter:])
    assert len(trained.losses) == LEARNING.steps
    assert last < first


def test_the_lora_is_saved_in_kohyas_layout(trained):
    from safetensors import safe_open

    with safe_open(_file(trained.lora), "pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
        alpha = f.get_tensor(next(k for k in keys if k.endswith(".alpha")))
    assert keys and all(key.startswith("lora_unet_") for key in keys)
    down = {k.removesuffix(".lora_down.weight") for k in keys if "lora_down" in k}
    up = {k.removesuffix(".lora_up.weight") for k in keys if "lora_up" in k}
    alphas = {k.removesuffix(".alpha") for k in keys if k.endswith(".alpha")}
    assert down == up == alphas
    assert any(name.endswith("attn2_to_out_0") for name in down)
    assert float(alpha) == LEARNING.alpha
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == str(LEARNING.rank)


def _file(data: bytes) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False)
    handle.write(data)
    handle.close()
    return handle.name


def test_the_lora_passes_the_studios_upload_checks(trained):
    checked = validate_lora_upload(
        ContentFile(trained.lora, name="ada.safetensors"), name="ada.safetensors"
    )
    assert checked.tensor_count == len(_keys(trained.lora))


def _keys(data: bytes) -> list[str]:
    from safetensors.torch import load

    return list(load(data))


def test_the_lora_changes_the_engines_output_against_no_lora(engine, trained):
    import numpy as np

    from generation.engine.requests import GenerationRequest, LoraInput, Method

    def generate(lora):
        request = GenerationRequest(
            model="tiny-sd15",
            prompt="sks person",
            method=Method.TEXT,
            seed=3,
            steps=4,
            width=64,
            height=64,
            lora=lora,
        )
        return np.asarray(engine.generate(request).images[0], dtype=np.int16)

    plain = generate(None)
    with_lora = generate(LoraInput(weights=trained.lora, scale=1.0))
    assert np.abs(with_lora - plain).max() > 0
    # The engine undoes the LoRA after its job.
    assert np.array_equal(generate(None), plain)


def test_a_text_encoder_lora_loads_in_diffusers_directly(
    engine, training_images, tiny_model_dir, tmp_path
):
    from diffusers import StableDiffusionPipeline

    result = Trainer(engine).train(
        request_for(training_images, steps=4, train_text_encoder=True),
        work_dir=tmp_path / "work",
    )
    keys = _keys(result.lora)
    assert any(key.startswith("lora_te_text_model_") for key in keys)
    path = tmp_path / "ada.safetensors"
    path.write_bytes(result.lora)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir / "sd15")
    pipe.load_lora_weights(path, adapter_name="ada")
    adapters = pipe.get_list_adapters()
    assert adapters == {"unet": ["ada"], "text_encoder": ["ada"]}


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(
    engine, training_images, tmp_path
):
    request = request_for(training_images, steps=6, checkpoint_every=3)
    trainer = Trainer(engine)
    uninterrupted = trainer.train(request, work_dir=tmp_path / "whole")

    seen: list[int] = []
    with pytest.raises(TrainingCancelled):
        trainer.train(
            request,
            work_dir=tmp_path / "cut",
            on_step=lambda step, total, loss: seen.append(step),
            should_cancel=lambda: len(seen) == 4,
        )
    checkpoint = latest_checkpoint(tmp_path / "cut")
    assert checkpoint is not None and checkpoint.name == "step-000003"

    resumed = trainer.train(request, work_dir=tmp_path / "cut", resume_from=checkpoint)
    assert resumed.resumed_from == 3
    assert resumed.losses == uninterrupted.losses
    resumed_weights, whole_weights = (
        _tensors(resumed.lora),
        _tensors(uninterrupted.lora),
    )
    assert resumed_weights.keys() == whole_weights.keys()
    assert all(resumed_weights[k].equal(whole_weights[k]) for k in whole_weights)


def _tensors(data: bytes):
    from safetensors.torch import load

    return load(data)


def test_a_checkpoint_made_with_other_settings_is_refused(
    engine, training_images, tmp_path
):
    trainer = Trainer(engine)
    trainer.train(
        request_for(training_images, steps=2, checkpoint_every=2),
        work_dir=tmp_path,
    )
    with pytest.raises(InvalidRequest, match="other settings"):
        trainer.train(
            request_for(training_images, steps=4, rank=8),
            work_dir=tmp_path,
            resume_from=latest_checkpoint(tmp_path),
        )


def test_cancel_ends_the_run_at_the_next_step(engine, training_images, tmp_path):
    seen: list[int] = []
    with pytest.raises(TrainingCancelled, match="before step 3 of 60"):
        Trainer(engine).train(
            request_for(training_images),
            work_dir=tmp_path,
            on_step=lambda step, total, loss: seen.append(step),
            should_cancel=lambda: len(seen) >= 2,
        )
    assert seen == [1, 2]


def test_validation_samples_come_at_their_steps_with_fixed_seeds(
    engine, training_images, tmp_path
):
    request = request_for(training_images, steps=4, sample_every=2, sample_steps=2)
    request.validation_prompts = ["sks person smiling"]
    request.validation_seeds = [5, 6]
    batches = []
    result = Trainer(engine).train(
        request,
        work_dir=tmp_path,
        on_samples=lambda step, samples: batches.append((step, samples)),
    )
    assert [step for step, _ in batches] == [2, 4]
    for step, samples in batches:
        assert [(s.step, s.seed) for s in samples] == [(step, 5), (step, 6)]
        assert all(s.image.size == (64, 64) for s in samples)
    assert result.snapshot["validation_seeds"] == [5, 6]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": 2}, f"at least {MIN_TRAINING_IMAGES} images; 2 were chosen"),
        ({"resolution": 100}, "not a multiple of 8"),
        ({"resolution": 2048}, "trains at 64 to 1024 pixels; 2048"),
        ({"rank": 0}, "rank must be a whole number from 1"),
        ({"learning_rate": 1.0}, "learning rate must be between"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason(
    training_images, change, message
):
    images = training_images[: change.pop("images", len(training_images))]
    with pytest.raises(InvalidRequest, match=message):
        check_training(request_for(images, **change))


def test_an_unknown_family_is_refused(training_images):
    request = request_for(training_images)
    request.family = "flux"
    with pytest.raises(InvalidRequest, match="not available for the 'flux'"):
        check_training(request)


def test_every_preset_passes_the_checks(training_images):
    for name in PRESETS:
        request = request_for(training_images)
        request.settings = preset_settings(name)
        check_training(request)
    with pytest.raises(InvalidRequest, match="Unknown training preset"):
        preset_settings("extreme")


def test_images_go_to_the_bucket_nearest_their_aspect_ratio():
    buckets = aspect_buckets(512)
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in buckets)
    assert all(0.75 * 512**2 <= w * h <= 512**2 for w, h in buckets)
    assert choose_bucket((1000, 1000), buckets) == (512, 512)
    wide_width, wide_height = choose_bucket((1500, 1000), buckets)
    assert 1.3 < wide_width / wide_height < 1.7
    tall_width, tall_height = choose_bucket((500, 1000), buckets)
    assert tall_height > tall_width


def test_settings_from_a_mapping_refuse_unknown_names():
    assert TrainingSettings.from_dict({"steps": 5}).steps == 5
    with pytest.raises(InvalidRequest, match="Unknown training settings: stepz"):
        TrainingSettings.from_dict({"stepz": 5})


def test_the_snapshot_names_inputs_model_and_libraries(trained, training_images):
    snapshot = trained.snapshot
    assert len(snapshot["images"]) == len(training_images)
    assert all(len(image["sha256"]) == 64 for image in snapshot["images"])
    assert snapshot["model_fingerprint"]
    assert snapshot["libraries"]["peft"]


# --- SDXL ------------------------------------------------------------------------


def sdxl_request(images, **settings) -> TrainingRequest:
    return TrainingRequest(
        model="tiny-sdxl", images=images, settings=replace(LEARNING, **settings)
    )


def test_a_tiny_sdxl_lora_with_both_text_encoders_loads_and_changes_the_output(
    engine, training_images, tiny_model_dir, tmp_path
):
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from generation.engine.requests import GenerationRequest, LoraInput, Method

    request = sdxl_request(training_images, train_text_encoder=True)
    result = Trainer(engine).train(request, work_dir=tmp_path / "work")
    assert request.family == "sdxl"  # taken from the model's files
    quarter = len(result.losses) // 4
    assert statistics.mean(result.losses[-quarter:]) < statistics.mean(
        result.losses[:quarter]
    )
    prefixes = {key.split("_text_model_")[0] for key in _keys(result.lora)}
    assert {"lora_te1", "lora_te2"} <= prefixes
    assert any(key.startswith("lora_unet_") for key in _keys(result.lora))
    validate_lora_upload(
        ContentFile(result.lora, name="ada.safetensors"), name="ada.safetensors"
    )

    path = tmp_path / "ada-sdxl.safetensors"
    path.write_bytes(result.lora)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir / "sdxl")
    pipe.load_lora_weights(path, adapter_name="ada")
    assert pipe.get_list_adapters() == {
        "unet": ["ada"],
        "text_encoder": ["ada"],
        "text_encoder_2": ["ada"],
    }

    def generate(lora):
        request = GenerationRequest(
            model="tiny-sdxl",
            prompt="sks person",
            method=Method.TEXT,
            seed=3,
            steps=2,
            width=64,
            height=64,
            lora=lora,
        )
        return np.asarray(engine.generate(request).images[0], dtype=np.int16)

    assert np.abs(generate(LoraInput(weights=result.lora)) - generate(None)).max()


def test_a_tiny_sdxl_run_resumes_exactly_and_cancels_at_the_next_step(
    engine, training_images, tmp_path
):
    request = sdxl_request(training_images, steps=4, checkpoint_every=2)
    trainer = Trainer(engine)
    whole = trainer.train(request, work_dir=tmp_path / "whole")
    seen: list[int] = []
    with pytest.raises(TrainingCancelled, match="before step 4 of 4"):
        trainer.train(
            request,
            work_dir=tmp_path / "cut",
            on_step=lambda step, total, loss: seen.append(step),
            should_cancel=lambda: len(seen) == 3,
        )
    assert seen == [1, 2, 3]
    resumed = trainer.train(
        request,
        work_dir=tmp_path / "cut",
        resume_from=latest_checkpoint(tmp_path / "cut"),
    )
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    mine, theirs = _tensors(resumed.lora), _tensors(whole.lora)
    assert all(mine[key].equal(theirs[key]) for key in theirs)
