"""Generation's system checks (worker class, Redis, models): each one fails on its
misconfiguration and passes on a good configuration, through ``manage.py check``
and by calling it."""

from __future__ import annotations

import json
import socket
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from generation import checks


def deploy_check(tag: str) -> None:
    """``manage.py check --deploy --tag TAG``."""
    call_command("check", deploy=True, tags=[tag], stdout=StringIO(), stderr=StringIO())


def failed_check(tag: str) -> str:
    """What ``manage.py check --deploy --tag TAG`` fails with."""
    with pytest.raises(SystemCheckError) as raised:
        deploy_check(tag)
    return str(raised.value)


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- worker class -------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker_class", "expected"),
    [
        ("rq.worker.Worker", ["studio.E001"]),
        ("rq.worker.SpawnWorker", ["studio.E001"]),
        ("rq.worker.SimpleWorker", []),
        ("studio.no_such_module.Worker", ["studio.E002"]),
    ],
)
def test_worker_class_must_run_jobs_in_its_own_process(worker_class, expected):
    with override_settings(RQ={"WORKER_CLASS": worker_class}):
        assert ids(checks.check_worker_class()) == expected


def test_the_studios_worker_class_is_configured_and_passes():
    assert checks.check_worker_class() == []


def test_a_missing_worker_class_setting_warns_that_rqworker_would_fork():
    with override_settings(RQ={}):
        messages = checks.check_worker_class()
    assert ids(messages) == ["studio.W001"]
    assert "studio_worker" in messages[0].hint


def test_manage_py_check_fails_on_a_forking_worker_class():
    with override_settings(RQ={"WORKER_CLASS": "rq.worker.Worker"}):
        with pytest.raises(SystemCheckError, match="studio.E001"):
            call_command("check", stdout=StringIO(), stderr=StringIO())


# --- Redis ---------------------------------------------------------------------


def test_a_running_redis_passes(redis_server):
    queues = {"gpu": {"URL": redis_server.url}, "sdxl": {"URL": redis_server.url}}
    with override_settings(RQ_QUEUES=queues, STUDIO_EMBEDDED_REDIS=False):
        assert checks.check_redis_reachable() == []


def test_an_unreachable_redis_url_is_an_error_naming_the_queue():
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with override_settings(
        RQ_QUEUES={"gpu": {"URL": url}}, STUDIO_EMBEDDED_REDIS=False
    ):
        messages = checks.check_redis_reachable()
    assert ids(messages) == ["studio.E010"]
    assert "'gpu'" in messages[0].msg
    assert "REDIS_URL" in messages[0].hint


def test_the_embedded_redis_not_running_is_a_warning_that_says_how_to_start_it(
    tmp_path,
):
    url = f"unix://{tmp_path / 'redis.sock'}?db=0"
    with override_settings(RQ_QUEUES={"gpu": {"URL": url}}, STUDIO_EMBEDDED_REDIS=True):
        messages = checks.check_redis_reachable()
    assert ids(messages) == ["studio.W010"]
    assert "make run" in messages[0].hint


def test_redis_is_only_checked_with_deploy_or_its_tag():
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with override_settings(
        RQ_QUEUES={"gpu": {"URL": url}},
        STUDIO_EMBEDDED_REDIS=False,
        RQ={"WORKER_CLASS": "rq.worker.SimpleWorker"},
    ):
        call_command("check", stdout=StringIO(), stderr=StringIO())
        assert "studio.E010" in failed_check(checks.RUNTIME_TAG)


# --- models ---------------------------------------------------------------------


# Stand-ins with the real layout's file names and the config keys the family
# detection reads (SD 1.5: StableDiffusionPipeline, a UNet of width 768); the
# weight files are empty (the check reads no weights).
SD15_FILES = {
    "model_index.json": json.dumps(
        {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": [None, None],
        }
    ),
    "unet/config.json": json.dumps({"cross_attention_dim": 768}),
    "unet/diffusion_pytorch_model.safetensors": "",
    "vae/config.json": "{}",
    "vae/diffusion_pytorch_model.safetensors": "",
    "text_encoder/config.json": "{}",
    "text_encoder/model.safetensors": "",
}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return folder


@pytest.fixture
def model_root(settings, tmp_path):
    """A model root holding the files the check looks for in each layout."""
    root = tmp_path / "models"
    write_files(root / "sd15", SD15_FILES)
    for relative in (
        "controlnet-canny/config.json",
        "controlnet-canny/diffusion_pytorch_model.safetensors",
        "ip-adapter/models/ip-adapter_sd15.safetensors",
        "ip-adapter/models/ip-adapter-plus-face_sd15.safetensors",
        "ip-adapter/models/image_encoder/config.json",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("{}")
    settings.STUDIO_MODEL_ROOTS = [str(root)]
    settings.STUDIO_MODELS = {"sd15": {"source": str(root / "sd15")}}
    settings.STUDIO_CONTROLNETS = {"canny": str(root / "controlnet-canny")}
    settings.STUDIO_IP_ADAPTER = {"source": str(root / "ip-adapter")}
    settings.STUDIO_ANNOTATORS_DIR = ""
    return root


def hub_cache_with(cache, repo_id: str, files: dict[str, str]) -> Path:
    """Lay out ``files`` of ``repo_id`` as ``hf download`` leaves them."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return write_files(repo / "snapshots" / commit, files)


def test_configured_models_that_are_present_pass(model_root):
    assert checks.check_models_available() == []


def test_a_missing_local_model_is_an_error_naming_it(settings, model_root):
    settings.STUDIO_MODELS = {"sd15": {"source": str(model_root / "sd15-missing")}}
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "'sd15'" in messages[0].msg and "does not exist" in messages[0].msg


def test_a_model_outside_the_model_roots_is_an_error(settings, model_root, tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "sd15").mkdir(parents=True)
    (outside / "sd15" / "model_index.json").write_text("{}")
    settings.STUDIO_MODELS = {"sd15": str(outside / "sd15")}
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "outside the configured model roots" in messages[0].msg


def test_a_missing_controlnet_or_ip_adapter_file_is_an_error(settings, model_root):
    (model_root / "ip-adapter/models/ip-adapter-plus-face_sd15.safetensors").unlink()
    settings.STUDIO_CONTROLNETS = {
        "canny": str(model_root / "controlnet-canny"),
        "depth": str(model_root / "controlnet-depth"),
    }
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020", "studio.E020"]
    assert "ControlNet 'depth'" in messages[0].msg
    assert "ip-adapter-plus-face_sd15.safetensors" in messages[1].msg


def test_a_hub_model_must_be_in_the_offline_cache(
    settings, model_root, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    settings.STUDIO_MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "not in the Hugging Face cache" in messages[0].msg

    hub_cache_with(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", SD15_FILES)
    assert checks.check_models_available() == []


def test_a_missing_annotators_folder_is_an_error(settings, model_root, tmp_path):
    settings.STUDIO_ANNOTATORS_DIR = str(tmp_path / "annotators")
    assert ids(checks.check_models_available()) == ["studio.E021"]
    (tmp_path / "annotators").mkdir()
    assert checks.check_models_available() == []


def test_malformed_model_settings_are_an_error(settings, model_root):
    settings.STUDIO_IP_ADAPTER = {"source": "h94/IP-Adapter", "weights": "x"}
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E022"]


def test_a_compile_size_the_engine_cannot_read_is_an_error_naming_it(
    settings, model_root
):
    settings.STUDIO_COMPILE_SIZES = "512"
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E022"]
    assert "STUDIO_COMPILE_SIZES: '512' is not WIDTHxHEIGHT" in messages[0].msg


def test_the_tiny_model_not_written_yet_is_a_warning_saying_how_to_write_it(
    settings, tmp_path
):
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tmp_path / "tiny")
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.W020"]
    assert "studio_tiny_model" in messages[0].hint


def test_a_web_host_without_weights_silences_the_model_check(settings, model_root):
    settings.STUDIO_MODELS = {"sd15": str(model_root / "sd15-missing")}
    assert "studio.E020" in failed_check(checks.MODELS_TAG)
    settings.SILENCED_SYSTEM_CHECKS = ["studio.E020"]
    deploy_check(checks.MODELS_TAG)


def test_a_model_of_no_served_family_is_an_error_saying_what_was_found(
    settings, model_root
):
    (model_root / "sd15" / "model_index.json").write_text(
        json.dumps({"_class_name": "FluxPipeline"})
    )
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "Model 'sd15'" in messages[0].msg
    assert "model_index.json _class_name 'FluxPipeline'" in messages[0].msg


def test_a_model_whose_family_cannot_be_told_is_an_error(settings, model_root):
    (model_root / "sd15" / "model_index.json").write_text("{}")
    (model_root / "sd15" / "unet" / "config.json").unlink()
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "cannot tell its model family" in messages[0].msg


def test_configs_without_weights_fail_the_model_check_naming_the_files(
    settings, model_root, tmp_path, monkeypatch
):
    """A Hub download filtered to ``*.json`` (configs only) and a ControlNet
    folder without its weights."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    configs_only = {
        name: text for name, text in SD15_FILES.items() if name.endswith(".json")
    }
    hub_cache_with(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", configs_only)
    settings.STUDIO_MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
    (model_root / "controlnet-canny/diffusion_pytorch_model.safetensors").unlink()
    text = failed_check(checks.MODELS_TAG)
    assert "ControlNet 'canny'" in text
    assert "controlnet-canny/diffusion_pytorch_model.safetensors" in text
    assert "Model 'sd15'" in text and "not its weights" in text
    for missing in (
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert missing in text


def test_an_fp16_variant_needs_its_variant_files(settings, model_root):
    settings.STUDIO_MODELS = {
        "sd15": {"source": str(model_root / "sd15"), "variant": "fp16"}
    }
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in messages[0].msg
    for weights in (
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
    ):
        (model_root / "sd15" / weights).write_text("")
    assert checks.check_models_available() == []


def test_the_tiny_models_as_written_pass_the_model_check(settings, tiny_model_dir):
    """Both tiny models (SD 1.5 and SDXL, with their ControlNets and IP-Adapter)
    have a detectable family and every weight file."""
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    settings.STUDIO_CONTROLNETS = {}
    settings.STUDIO_IP_ADAPTER = {}
    settings.STUDIO_ANNOTATORS_DIR = ""
    assert checks.check_models_available() == []


def test_a_controlnet_entry_with_a_variant_needs_its_variant_file(settings, model_root):
    settings.STUDIO_CONTROLNETS = {
        "canny": {"source": str(model_root / "controlnet-canny"), "variant": "fp16"}
    }
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "controlnet-canny/diffusion_pytorch_model.fp16.safetensors" in (
        messages[0].msg
    )
    (
        model_root / "controlnet-canny/diffusion_pytorch_model.fp16.safetensors"
    ).write_text("")
    assert checks.check_models_available() == []


def test_a_single_file_controlnet_needs_its_config(settings, model_root):
    single = model_root / "controlnet" / "control_v11p_sd15_canny_fp16.safetensors"
    single.parent.mkdir()
    single.write_text("")
    settings.STUDIO_CONTROLNETS = {
        "canny": {"source": str(single), "config": str(model_root / "controlnet-canny")}
    }
    assert checks.check_models_available() == []
    settings.STUDIO_CONTROLNETS = {
        "canny": {"source": str(single), "config": str(model_root / "no-such-config")}
    }
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"]
    assert "no-such-config" in messages[0].msg


@pytest.fixture
def sdxl_with_refiner(settings, tiny_model_dir, tmp_path):
    """The tiny SDXL model with a copy of its refiner as the model's refiner."""
    import shutil

    from generation.engine.config import TINY_SDXL_REFINER_DIR

    refiner = tmp_path / "refiner"
    shutil.copytree(tiny_model_dir / TINY_SDXL_REFINER_DIR, refiner)
    settings.STUDIO_MODEL_ROOTS = [str(tiny_model_dir), str(tmp_path)]
    settings.STUDIO_MODELS = {
        "xl": {"source": str(tiny_model_dir / "sdxl"), "refiner": str(refiner)}
    }
    settings.STUDIO_CONTROLNETS = {}
    settings.STUDIO_IP_ADAPTER = {}
    settings.STUDIO_ANNOTATORS_DIR = ""
    return refiner


def test_a_refiner_with_its_weights_passes_the_model_check(sdxl_with_refiner):
    assert checks.check_models_available() == []


def test_a_refiner_without_its_weights_fails_the_model_check_naming_them(
    sdxl_with_refiner,
):
    (sdxl_with_refiner / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (sdxl_with_refiner / "text_encoder_2" / "model.safetensors").unlink()
    text = failed_check(checks.MODELS_TAG)
    assert f"The refiner of model 'xl' ({sdxl_with_refiner})" in text
    assert "not its weights" in text
    assert "unet/diffusion_pytorch_model.safetensors" in text
    assert "text_encoder_2/model.safetensors" in text


def test_a_refiner_needs_its_variant_files(settings, sdxl_with_refiner):
    """It is loaded with the model's variant, so the check asks for those."""
    settings.STUDIO_MODELS["xl"]["variant"] = "fp16"
    messages = [
        message
        for message in checks.check_models_available()
        if "refiner" in message.msg
    ]
    assert ids(messages) == ["studio.E020"]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in messages[0].msg


def test_a_missing_or_misplaced_refiner_is_an_error_with_the_reason(
    settings, sdxl_with_refiner, tiny_model_dir
):
    settings.STUDIO_MODELS["xl"]["refiner"] = str(sdxl_with_refiner / "gone")
    (message,) = checks.check_models_available()
    assert message.id == "studio.E020"
    assert "The refiner of model 'xl'" in message.msg
    assert "does not exist" in message.msg
    # A refiner on an SD 1.5 model: its family has none.
    settings.STUDIO_MODELS = {
        "sd": {
            "source": str(tiny_model_dir / "sd15"),
            "refiner": str(sdxl_with_refiner),
        }
    }
    (message,) = checks.check_models_available()
    assert "has no refiner" in message.msg
    # An SD 1.5 pipeline as an SDXL model's refiner: another family.
    settings.STUDIO_MODELS = {
        "xl": {
            "source": str(tiny_model_dir / "sdxl"),
            "refiner": str(tiny_model_dir / "sd15"),
        }
    }
    (message,) = checks.check_models_available()
    assert "The refiner of model 'xl'" in message.msg
    assert "it is a Stable Diffusion 1.5 model" in message.msg
    assert "the model is Stable Diffusion XL" in message.msg


def test_an_uncached_ip_adapter_revision_says_what_is_missing_and_how_to_fetch_it(
    settings, model_root, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    pin = "e" * 40
    settings.STUDIO_IP_ADAPTER = {"source": "h94/IP-Adapter", "revision": pin}
    messages = checks.check_models_available()
    assert ids(messages) == ["studio.E020"] * 3
    first = messages[0].msg
    assert f"'h94/IP-Adapter' at revision {pin} is not in the Hugging Face" in first
    assert "its file models/ip-adapter_sd15.safetensors is missing there" in first
    assert (
        "`hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors "
        "models/ip-adapter-plus-face_sd15.safetensors "
        "models/image_encoder/config.json models/image_encoder/model.safetensors "
        f"--revision {pin}`" in first
    )
    assert "models/image_encoder/config.json is missing" in messages[2].msg
    # Downloaded at that revision (as the command does), the check passes.
    repo = cache / "models--h94--IP-Adapter"
    write_files(
        repo / "snapshots" / pin,
        {
            "models/ip-adapter_sd15.safetensors": "",
            "models/ip-adapter-plus-face_sd15.safetensors": "",
            "models/image_encoder/config.json": "{}",
        },
    )
    assert checks.check_models_available() == []
