"""The vocabulary is defined once (generation/engine/vocabulary.py): every Django
choice, validator, default, setting and documented value derived from it agrees
with it, and no second definition creeps back in."""

from __future__ import annotations

import ast
import io
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator

from generation.engine import vocabulary
from generation.engine.config import (
    TINY_MARKER_FILE,
    EngineConfig,
    ModelSpec,
    model_catalog,
    tiny_engine_config,
)
from generation.engine.errors import InvalidRequest
from generation.engine.methods import PIPELINE_CLASS_NAMES, plan_method
from generation.engine.requests import (
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
)
from generation.engine.vocabulary import (
    ControlType,
    Footprint,
    Method,
    ReferenceRole,
    ResizeMode,
    SeedPolicy,
)
from generation.models import Content, ContentControlImage
from generation.parameters import GenerationOverrides
from personas import models as persona_models
from personas.models import ControlNetUnit, Persona, ReferenceImage
from studio import conf

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY_FILE = ROOT / "generation" / "engine" / "vocabulary.py"
PRODUCT_PACKAGES = ("generation", "personas", "studio")

ENUMS = {
    "ConsistencyMethod": Method,
    "ControlType": ControlType,
    "ResizeMode": ResizeMode,
    "ReferenceRole": ReferenceRole,
    "SeedPolicy": SeedPolicy,
}


def pairs(vocabulary_enum) -> list[tuple[str, str]]:
    return [(member.value, member.label) for member in vocabulary_enum]


# --- Django choices -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_django_text_choices_are_the_vocabularys(name):
    choices = getattr(persona_models, name)
    assert choices.choices == pairs(ENUMS[name])
    assert [member.name for member in choices] == [m.name for m in ENUMS[name]]


@pytest.mark.parametrize(
    ("model", "field", "vocabulary_enum"),
    [
        (Persona, "method", Method),
        (Persona, "resize_mode", ResizeMode),
        (Persona, "seed_policy", SeedPolicy),
        (ReferenceImage, "role", ReferenceRole),
        (ControlNetUnit, "control_type", ControlType),
        (Content, "method_requested", Method),
        (Content, "method_used", Method),
        (ContentControlImage, "control_type", ControlType),
    ],
)
def test_model_field_choices_are_the_vocabularys(model, field, vocabulary_enum):
    model_field = model._meta.get_field(field)
    assert list(model_field.choices) == pairs(vocabulary_enum)
    longest = max(len(member.value) for member in vocabulary_enum)
    assert model_field.max_length >= longest


# --- Limits and defaults ---------------------------------------------------------

FRACTION = (vocabulary.MIN_FRACTION, vocabulary.MAX_FRACTION)
GUIDANCE = (vocabulary.MIN_GUIDANCE_SCALE, vocabulary.MAX_GUIDANCE_SCALE)
WEIGHT = (vocabulary.MIN_WEIGHT, vocabulary.MAX_WEIGHT)


def field_range(model, name: str) -> tuple[float, float]:
    validators = model._meta.get_field(name).validators
    (low,) = [v.limit_value for v in validators if isinstance(v, MinValueValidator)]
    (high,) = [v.limit_value for v in validators if isinstance(v, MaxValueValidator)]
    return low, high


@pytest.mark.parametrize(
    ("model", "name", "limits"),
    [
        (Persona, "img2img_strength", FRACTION),
        (Persona, "ip_adapter_scale", WEIGHT),
        (Persona, "lora_scale", WEIGHT),
        (
            Persona,
            "guidance_scale",
            (vocabulary.MIN_GUIDANCE_SCALE, vocabulary.MAX_GUIDANCE_SCALE),
        ),
        (Persona, "steps", (vocabulary.MIN_STEPS, vocabulary.MAX_STEPS)),
        (ControlNetUnit, "conditioning_scale", WEIGHT),
        (ControlNetUnit, "guidance_start", FRACTION),
        (ControlNetUnit, "guidance_end", FRACTION),
    ],
)
def test_model_validators_use_the_vocabularys_limits(model, name, limits):
    assert field_range(model, name) == limits


def test_persona_and_request_defaults_are_the_vocabularys():
    persona = Persona()
    request = GenerationRequest(model="m", prompt="p")
    expected = {
        "method": vocabulary.DEFAULT_METHOD,
        "steps": vocabulary.DEFAULT_STEPS,
        "guidance_scale": vocabulary.DEFAULT_GUIDANCE_SCALE,
        "width": vocabulary.DEFAULT_SIZE,
        "height": vocabulary.DEFAULT_SIZE,
        "resize_mode": vocabulary.DEFAULT_RESIZE_MODE,
    }
    for name, value in expected.items():
        assert getattr(persona, name) == value, name
        assert getattr(request, name) == value, name
    assert persona.img2img_strength == request.strength == vocabulary.DEFAULT_STRENGTH
    assert persona.seed_policy == vocabulary.DEFAULT_SEED_POLICY
    assert persona.ip_adapter_scale == IPAdapterInput().scale
    assert persona.ip_adapter_scale == vocabulary.DEFAULT_IP_ADAPTER_SCALE
    assert persona.lora_scale == LoraInput(weights=b"x").scale
    assert persona.lora_scale == vocabulary.DEFAULT_LORA_SCALE
    unit = ControlNetUnit()
    assert unit.conditioning_scale == vocabulary.DEFAULT_CONDITIONING_SCALE
    assert (
        ControlUnitInput(control_type=ControlType.CANNY).conditioning_scale
        == vocabulary.DEFAULT_CONDITIONING_SCALE
    )


@pytest.mark.parametrize(
    ("name", "low", "high", "step"),
    [
        ("steps", vocabulary.MIN_STEPS, vocabulary.MAX_STEPS, 1),
        (
            "guidance_scale",
            vocabulary.MIN_GUIDANCE_SCALE,
            vocabulary.MAX_GUIDANCE_SCALE,
            0.5,
        ),
        ("strength", vocabulary.MIN_FRACTION, vocabulary.MAX_FRACTION, 0.1),
        ("seed", vocabulary.MIN_SEED, vocabulary.MAX_SEED, 1),
    ],
)
def test_overrides_and_the_engine_share_the_limits(name, low, high, step):
    """The service refuses exactly what the engine would refuse, at both ends."""
    for value in (low, high):
        GenerationOverrides(**{name: value}).validate()
        plan_request(**{name: value})
    for value in (low - step, high + step):
        with pytest.raises(ValidationError) as refused:
            GenerationOverrides(**{name: value}).validate()
        assert name in refused.value.message_dict
        with pytest.raises(InvalidRequest, match=name):
            plan_request(**{name: value})


def plan_request(**values):
    request = GenerationRequest(
        **{"model": "m", "prompt": "p", "width": 64, "height": 64, **values}
    )
    return plan_method(request, models=["m"], controlnets=[], ip_adapter_installed=0)


@pytest.mark.django_db
def test_size_validators_and_the_engine_share_the_limits(settings):
    settings.STUDIO_MAX_WIDTH = settings.STUDIO_MAX_HEIGHT = vocabulary.MAX_SIZE
    for side in ("width", "height"):
        for value in (vocabulary.MIN_SIZE, vocabulary.MAX_SIZE):
            Persona(name="A", slug="a", **{side: value}).full_clean()
            plan_request(**{side: value})
        below = vocabulary.MIN_SIZE - vocabulary.SIZE_MULTIPLE
        above = vocabulary.MAX_SIZE + vocabulary.SIZE_MULTIPLE
        odd = vocabulary.DEFAULT_SIZE + vocabulary.SIZE_MULTIPLE // 2
        for value in (below, above, odd):
            with pytest.raises(ValidationError) as refused:
                Persona(name="A", slug="a", **{side: value}).full_clean()
            assert side in refused.value.message_dict
            with pytest.raises(InvalidRequest, match=side):
                plan_request(**{side: value})


def test_the_studios_size_limits_default_to_the_engines():
    assert conf.MAX_WIDTH == conf.MAX_HEIGHT == vocabulary.MAX_SIZE
    rows = settings_doc_rows()
    for setting in ("STUDIO_MAX_WIDTH", "STUDIO_MAX_HEIGHT"):
        meaning = rows[setting][1]
        assert f"a multiple of {vocabulary.SIZE_MULTIPLE}" in meaning
        assert f"the engine's limit of {vocabulary.MAX_SIZE}" in meaning


def test_every_method_set_names_known_methods_and_base_pipelines_are_mapped():
    assert set(PIPELINE_CLASS_NAMES) == vocabulary.BASE_METHODS - {
        Method.REFERENCE_EDIT
    }
    assert vocabulary.METHODS_WITH_SEVERAL_REFERENCES <= vocabulary.BASE_METHODS
    for name in dir(vocabulary):
        if name.startswith("METHODS_"):
            assert getattr(vocabulary, name) <= set(Method), name
    assert vocabulary.METHODS_WITH_CONTROL <= vocabulary.METHODS_TAKING_CONTROL_UNITS
    assert vocabulary.METHODS_NEEDING_REFERENCE <= vocabulary.METHODS_TAKING_REFERENCES


# --- Footprint options -----------------------------------------------------------


def test_every_footprint_option_has_its_setting_default_and_row():
    rows = settings_doc_rows()
    for option in fields(Footprint):
        setting = option.metadata["setting"]
        name = setting.removeprefix("STUDIO_")
        assert getattr(conf, name) is option.default is False, setting
        assert rows[setting] == ["`false`", option.metadata["meaning"]], setting
    assert vocabulary.footprint_settings()["compile"] == "STUDIO_TORCH_COMPILE"


@pytest.mark.parametrize("option", [option.name for option in fields(Footprint)])
def test_each_footprint_setting_switches_its_own_option(settings, option):
    from generation.engine_settings import engine_config

    settings.STUDIO_MODELS = {}
    setattr(settings, vocabulary.footprint_settings()[option], True)
    config = engine_config()
    switched = {o.name for o in fields(Footprint) if getattr(config, o.name)}
    assert switched == {option}
    assert isinstance(config, EngineConfig)
    assert vocabulary.footprint_of(config) == Footprint(**{option: True})


def settings_doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(STUDIO_[A-Z0-9_]+)`", cells[0])
        if line.startswith("|") and match:
            rows[match.group(1)] = cells[1:]
    return rows


# --- Documented values -----------------------------------------------------------


def guide_table(header: str) -> dict[str, list[str]]:
    """The rows of the persona guide's table whose header starts with ``header``:
    first cell (without backticks) -> the other cells."""
    lines = (ROOT / "docs" / "persona-guide.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_persona_guide_lists_every_method_with_its_pipeline():
    rows = guide_table("| method | diffusers pipeline")
    assert list(rows) == [m.value for m in Method if m is not Method.AUTO] + ["auto"]
    for method, class_name in PIPELINE_CLASS_NAMES.items():
        assert rows[method.value][0] == f"`{class_name}`"


def test_the_persona_guide_lists_every_control_type():
    rows = guide_table("| type | preprocessors")
    assert set(rows) == {control_type.value for control_type in ControlType}


@pytest.mark.parametrize(
    ("setting", "low", "high", "default"),
    [
        (
            "conditioning scale",
            vocabulary.MIN_WEIGHT,
            vocabulary.MAX_WEIGHT,
            vocabulary.DEFAULT_CONDITIONING_SCALE,
        ),
        (
            "Scale",
            vocabulary.MIN_WEIGHT,
            vocabulary.MAX_WEIGHT,
            vocabulary.DEFAULT_IP_ADAPTER_SCALE,
        ),
        (
            "LoRA scale",
            vocabulary.MIN_WEIGHT,
            vocabulary.MAX_WEIGHT,
            vocabulary.DEFAULT_LORA_SCALE,
        ),
    ],
)
def test_the_persona_guide_gives_the_vocabularys_ranges(setting, low, high, default):
    text = (ROOT / "docs" / "persona-guide.md").read_text()
    documented = re.search(
        rf"\*\*{setting}\*\* \((\S+) to (\S+), default ([\d.]+)\)", text
    )
    assert documented, f"the persona guide no longer documents the {setting}"
    assert [float(value) for value in documented.groups()] == [low, high, default]


def test_the_persona_guide_gives_the_vocabularys_defaults():
    text = (ROOT / "docs" / "persona-guide.md").read_text()
    assert f"**Guidance scale** (default {vocabulary.DEFAULT_GUIDANCE_SCALE})" in text
    assert f"**Steps** (default {vocabulary.DEFAULT_STEPS})" in text
    size = vocabulary.DEFAULT_SIZE
    assert (
        f"multiples of {vocabulary.SIZE_MULTIPLE}, default {size} × {size}" in text
    )
    assert f"**{vocabulary.DEFAULT_STRENGTH}** (default)" in text


# --- The tiny model ----------------------------------------------------------------


def test_the_tiny_model_has_one_identity(tmp_path: Path):
    (spec,) = model_catalog({}, tiny_model_dir=tmp_path).values()
    assert spec == tiny_engine_config(tmp_path).models[vocabulary.TINY_MODEL_KEY]
    assert spec.key == vocabulary.TINY_MODEL_KEY
    assert spec.label == vocabulary.TINY_MODEL_LABEL
    assert spec.is_tiny
    assert "images are noise" in vocabulary.TINY_MODEL_NOTICE


def test_a_configured_model_is_tiny_when_marked_or_inside_the_tiny_model(
    tmp_path: Path,
):
    (tmp_path / TINY_MARKER_FILE).write_text(json.dumps({"tiny": True}))
    catalog = model_catalog(
        {
            "marked": {"source": "org/model", "tiny": True},
            "inside": str(tmp_path / "sd15"),
            "real": {"source": "org/real-model", "label": "Real"},
        },
        tiny_model_dir=tmp_path,
    )
    assert {key for key, spec in catalog.items() if spec.is_tiny} == {
        "marked",
        "inside",
    }
    real = ModelSpec(key="real", source="org/real-model", label="Real")
    assert catalog["real"] == real


# --- Defined once ------------------------------------------------------------------

def product_modules():
    for package in PRODUCT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts and path != VOCABULARY_FILE:
                yield path


def derived(node: ast.Assign | ast.AnnAssign) -> bool:
    """``X = text_choices(vocabulary.X)``: Django's form of a vocabulary enum."""
    value = node.value
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "text_choices"
    )


def test_no_vocabulary_name_is_defined_a_second_time():
    names = {name for name in dir(vocabulary) if name.isupper()}
    names |= {enum.__name__ for enum in ENUMS.values()} | {"Footprint"}
    found = []
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in names:
                found.append(f"{path.relative_to(ROOT)}: class {node.name}")
            if isinstance(node, ast.Assign | ast.AnnAssign) and not derived(node):
                targets = node.targets if isinstance(node, ast.Assign) else [
                    node.target
                ]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name) and leaf.id in names:
                            found.append(f"{path.relative_to(ROOT)}: {leaf.id} =")
    assert found == []


def test_the_tiny_model_notice_is_written_once():
    literal = vocabulary.TINY_MODEL_NOTICE[:40]
    found = [
        str(path.relative_to(ROOT))
        for path in product_modules()
        if literal in path.read_text()
    ]
    assert found == []


def engine_request_rows() -> dict[str, str]:
    """docs/engine-request.md's field table: field cell -> meaning cell."""
    rows = {}
    for line in (ROOT / "docs" / "engine-request.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def listed(cell: str) -> list[str]:
    return re.findall(r"`([a-z_0-9]+)`", cell)


def number(value: float) -> str:
    return f"{value:g}"


def test_the_engine_request_page_lists_the_vocabulary():
    rows = engine_request_rows()
    assert set(listed(rows["`method`"])) == {m.value for m in Method}
    assert listed(rows["`resize_mode`"]) == [m.value for m in ResizeMode]
    assert listed(rows["`references[].role`"]) == [r.value for r in ReferenceRole]
    assert listed(rows["`control_units[].control_type`"]) == [
        c.value for c in ControlType
    ]
    methods_table = {
        cells[0].strip("`"): cells[1]
        for line in (ROOT / "docs" / "engine-request.md").read_text().splitlines()
        if line.startswith("| `")
        and len(cells := [c.strip() for c in line.strip().strip("|").split("|")]) == 3
    }
    for method, class_name in PIPELINE_CLASS_NAMES.items():
        assert methods_table[method.value].startswith(f"`{class_name}`")


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("`steps`", vocabulary.MIN_STEPS, vocabulary.MAX_STEPS),
        ("`guidance_scale`", *GUIDANCE),
        ("`width`, `height`", vocabulary.MIN_SIZE, vocabulary.MAX_SIZE),
        ("`num_images`", 1, vocabulary.MAX_IMAGES),
        ("`strength`", vocabulary.MIN_FRACTION, vocabulary.MAX_FRACTION),
        ("`control_units[].conditioning_scale`", *WEIGHT),
        ("`ip_adapter.scale`", *WEIGHT),
    ],
)
def test_the_engine_request_page_gives_the_vocabularys_ranges(field, low, high):
    assert engine_request_rows()[field].startswith(f"{number(low)} to {number(high)}")


def test_the_engine_request_page_gives_the_seed_and_size_rules():
    rows = engine_request_rows()
    assert vocabulary.MAX_SEED == 2**63 - 1
    assert rows["`seed`"].startswith("0 to 2^63-1")
    assert f"multiples of {vocabulary.SIZE_MULTIPLE}" in rows["`width`, `height`"]
    lora = rows["`lora.weights`"]
    low, high = (number(limit) for limit in WEIGHT)
    assert f"`scale` {low} to {high}" in lora


def test_the_persona_guide_names_the_resize_modes_and_seed_policies():
    text = " ".join((ROOT / "docs" / "persona-guide.md").read_text().split())
    for mode in ResizeMode:
        assert f"*{mode.label.lower()}*" in text, mode
    for policy in SeedPolicy:
        assert f"*{policy.value}*" in text, policy


def test_the_settings_page_names_the_tiny_model_key():
    models = settings_doc_rows()["STUDIO_MODELS"][1]
    assert f"key `{vocabulary.TINY_MODEL_KEY}`" in models
    assert '"tiny": true' in models


@pytest.mark.django_db
def test_the_migrations_hold_the_vocabularys_choices_and_limits():
    """A changed value, label or limit needs its migration (stored data keeps
    the values the vocabulary names)."""
    from django.core.management import call_command

    out = io.StringIO()
    try:
        call_command(
            "makemigrations", "personas", "generation", check=True, dry_run=True,
            stdout=out,
        )
    except SystemExit:
        pytest.fail(f"the models changed without a migration:\n{out.getvalue()}")
