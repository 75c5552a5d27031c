"""Personas, their reference gallery and their ControlNet units."""

from __future__ import annotations

import enum
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse

from generation.engine import vocabulary
from generation.engine.config import ModelSpec, model_catalog
from generation.engine.plan import SCHEDULER_NAMES
from personas.validators import validate_height, validate_width


def base_model_choices() -> list[tuple[str, str]]:
    """The base models the studio is configured with (``STUDIO_MODELS``)."""
    return [(model.key, model.label) for model in _configured_models().values()]


def default_base_model() -> str:
    return next(iter(_configured_models()))


def _configured_models() -> dict[str, ModelSpec]:
    # The engine's catalog, read from the settings as
    # ``generation.engine_settings.configured_models`` does (personas imports
    # nothing of generation but the framework-free engine).
    return model_catalog(
        settings.STUDIO_MODELS, tiny_model_dir=settings.STUDIO_TINY_MODEL_DIR
    )


def _random_name(folder: str, extension: str) -> str:
    return f"{folder}/{uuid.uuid4().hex}{extension}"


def reference_upload_to(instance: ReferenceImage, filename: str) -> str:
    return _random_name(f"references/{instance.persona_id}", ".png")


def reference_thumbnail_upload_to(instance: ReferenceImage, filename: str) -> str:
    return _random_name(f"thumbnails/references/{instance.persona_id}", ".webp")


def lora_upload_to(instance: Persona, filename: str) -> str:
    return _random_name("loras", ".safetensors")


def control_image_upload_to(instance: ControlNetUnit, filename: str) -> str:
    return _random_name(f"control/{instance.persona_id}", ".png")


def text_choices(name: str, terms: type[enum.StrEnum]) -> type[models.TextChoices]:
    """Django ``TextChoices`` with the members, values and labels of one of the
    engine's vocabulary enums (``generation.engine.vocabulary``): stored values
    and labels are the vocabulary's, so they cannot drift."""
    return models.TextChoices(
        name, [(member.name, (member.value, member.label)) for member in terms]
    )


ConsistencyMethod = text_choices("ConsistencyMethod", vocabulary.Method)
SeedPolicy = text_choices("SeedPolicy", vocabulary.SeedPolicy)
ResizeMode = text_choices("ResizeMode", vocabulary.ResizeMode)
ReferenceRole = text_choices("ReferenceRole", vocabulary.ReferenceRole)
ControlType = text_choices("ControlType", vocabulary.ControlType)


# An output below this identity similarity is flagged for review: 0.5 is
# dlib's same-person distance, 0.6 (generation.engine.identity).
DEFAULT_IDENTITY_THRESHOLD = 0.5


def _fraction_validators() -> list:
    return [
        MinValueValidator(vocabulary.MIN_FRACTION),
        MaxValueValidator(vocabulary.MAX_FRACTION),
    ]


def _weight_validators() -> list:
    """ControlNet conditioning, IP-Adapter and LoRA scales."""
    return [
        MinValueValidator(vocabulary.MIN_WEIGHT),
        MaxValueValidator(vocabulary.MAX_WEIGHT),
    ]


class Persona(models.Model):
    """A character kept consistent across generations."""

    # Identity
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    # Appearance
    appearance = models.TextField(
        "base appearance description",
        blank=True,
        help_text="Anchors every prompt, e.g. 'a woman in her thirties, short red "
        "hair, green eyes, freckles'.",
    )
    appearance_locked = models.BooleanField(
        default=False,
        help_text="Keep the look of the primary reference image (needs one).",
    )
    # Consistency
    method = models.CharField(
        max_length=16,
        choices=ConsistencyMethod.choices,
        default=vocabulary.DEFAULT_METHOD.value,
    )
    img2img_strength = models.FloatField(
        "img2img strength",
        default=vocabulary.DEFAULT_STRENGTH,
        validators=_fraction_validators(),
        help_text="0 keeps the reference unchanged, 1 ignores it.",
    )
    resize_mode = models.CharField(
        max_length=16,
        choices=ResizeMode.choices,
        default=vocabulary.DEFAULT_RESIZE_MODE.value,
        help_text="How the reference is fitted to the output size.",
    )
    ip_adapter_scale = models.FloatField(
        "IP-Adapter scale",
        default=vocabulary.DEFAULT_IP_ADAPTER_SCALE,
        validators=_weight_validators(),
    )
    ip_adapter_face_crop = models.BooleanField(
        "IP-Adapter face crop",
        default=True,
        help_text="Use the plus-face adapter on a detected face crop.",
    )
    guidance_scale = models.FloatField(
        default=vocabulary.DEFAULT_GUIDANCE_SCALE,
        validators=[
            MinValueValidator(vocabulary.MIN_GUIDANCE_SCALE),
            MaxValueValidator(vocabulary.MAX_GUIDANCE_SCALE),
        ],
    )
    true_cfg_scale = models.FloatField(
        "true CFG scale",
        null=True,
        blank=True,
        validators=[
            MinValueValidator(vocabulary.MIN_GUIDANCE_SCALE),
            MaxValueValidator(vocabulary.MAX_GUIDANCE_SCALE),
        ],
        help_text="FLUX.1 and Qwen-Image only: true classifier-free guidance "
        "against the negative prompt, two passes per step (Qwen-Image's default "
        "4.0; 1 turns it off; FLUX.1 uses it above 1, its guidance scale being "
        "the distilled guidance). Empty: the pipeline's default. Stable "
        "Diffusion guides with the guidance scale instead.",
    )
    steps = models.PositiveSmallIntegerField(
        default=vocabulary.DEFAULT_STEPS,
        validators=[
            MinValueValidator(vocabulary.MIN_STEPS),
            MaxValueValidator(vocabulary.MAX_STEPS),
        ],
    )
    scheduler = models.CharField(
        max_length=64,
        blank=True,
        choices=[(name, name) for name in SCHEDULER_NAMES],
        help_text="The diffusers scheduler of every generation; empty: the "
        "model's own.",
    )
    negative_prompt = models.TextField(blank=True)
    width = models.PositiveIntegerField(
        default=vocabulary.DEFAULT_SIZE, validators=[validate_width]
    )
    height = models.PositiveIntegerField(
        default=vocabulary.DEFAULT_SIZE, validators=[validate_height]
    )
    base_model = models.CharField(
        max_length=100, choices=base_model_choices, default=default_base_model
    )
    # Advanced
    seed_policy = models.CharField(
        max_length=8,
        choices=SeedPolicy.choices,
        default=vocabulary.DEFAULT_SEED_POLICY.value,
    )
    seed = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Used when the seed policy is fixed."
    )
    lora_weights = models.FileField(
        "persona LoRA weights",
        upload_to=lora_upload_to,
        blank=True,
        help_text="A .safetensors file (pickled .bin/.ckpt/.pt weights are refused).",
    )
    lora_sha256 = models.CharField(max_length=64, blank=True, editable=False)
    lora_scale = models.FloatField(
        "LoRA scale",
        default=vocabulary.DEFAULT_LORA_SCALE,
        validators=_weight_validators(),
    )
    identity_threshold = models.FloatField(
        default=DEFAULT_IDENTITY_THRESHOLD,
        validators=_fraction_validators(),
        help_text="Outputs whose identity similarity (0..1) falls below this, or "
        "that show no face, are flagged for review; 0.5 is dlib's same-person "
        "threshold (docs/identity.md).",
    )
    # Face detailer (docs/persona-guide.md#face-detailer-and-inpainting)
    detailer_enabled = models.BooleanField(
        "face detailer",
        default=False,
        help_text="After every generation, find the faces of the output and "
        "redraw each at the model's native size (with the face references through "
        "IP-Adapter plus-face where configured, and the LoRA), keeping the image "
        "before the pass and both identity scores.",
    )
    detailer_strength = models.FloatField(
        "detailer denoising strength",
        default=vocabulary.DEFAULT_DETAILER_STRENGTH,
        validators=[
            MinValueValidator(vocabulary.MIN_INPAINT_STRENGTH),
            MaxValueValidator(vocabulary.MAX_FRACTION),
        ],
        help_text="How far the redrawn face may move from the generated one: low "
        "keeps its layout, high redraws it.",
    )
    detailer_prompt = models.CharField(
        "detailer face prompt",
        max_length=500,
        default=vocabulary.DEFAULT_DETAILER_PROMPT,
        blank=True,
        help_text="The prompt of the face redraw (after the base appearance).",
    )
    detailer_padding = models.PositiveSmallIntegerField(
        "detailer padding",
        default=vocabulary.DEFAULT_DETAILER_PADDING,
        validators=[MaxValueValidator(vocabulary.MAX_ONLY_MASKED_PADDING)],
        help_text="Pixels of context around each face's box that the redraw sees.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("lock_persona", "Can lock and unlock a persona's appearance")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("admin:personas_persona_change", args=[self.pk])

    def clean(self) -> None:
        # Locking without a primary reference is checked where the gallery being
        # saved is known (personas.services, the admin's gallery formset), not
        # here, where only the stored gallery is.
        errors = {}
        if self.seed_policy == SeedPolicy.FIXED and self.seed is None:
            errors["seed"] = ValidationError(
                "A fixed seed policy needs a seed: enter one or choose random.",
                code="seed_required",
            )
        if errors:
            raise ValidationError(errors)

    @property
    def primary_reference(self) -> ReferenceImage | None:
        return next((ref for ref in self.references.all() if ref.is_primary), None)


class ReferenceImage(models.Model):
    """One image of the persona's gallery, stored upright, RGB, without metadata."""

    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="references"
    )
    image = models.ImageField(
        upload_to=reference_upload_to, width_field="width", height_field="height"
    )
    thumbnail = models.ImageField(
        upload_to=reference_thumbnail_upload_to, blank=True, editable=False
    )
    is_primary = models.BooleanField("primary", default=False)
    role = models.CharField(
        max_length=16, choices=ReferenceRole.choices, default=ReferenceRole.OTHER.value
    )
    caption = models.CharField(max_length=255, blank=True)
    order = models.PositiveIntegerField(default=0)
    width = models.PositiveIntegerField(editable=False, default=0)
    height = models.PositiveIntegerField(editable=False, default=0)
    sha256 = models.CharField(
        "content hash", max_length=64, db_index=True, editable=False
    )
    original_filename = models.CharField(max_length=255, blank=True, editable=False)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    # Face analysis (personas.jobs, on the CPU queue); all empty until analysed.
    face_count = models.PositiveSmallIntegerField(
        "faces found",
        null=True,
        blank=True,
        editable=False,
        help_text="Every face the detector found; empty until analysed.",
    )
    face_box = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="The persona's face (the largest): left, top, width, height.",
    )
    face_embedding = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="dlib's 128-D embedding of the persona's face.",
    )
    face_detector = models.CharField(max_length=64, blank=True, editable=False)
    face_detail = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="The analysis: every face with its box and score, the "
        "landmarks, the sizes scanned (no embedding).",
    )
    face_error = models.TextField(blank=True, editable=False)
    face_analysed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["order", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["persona", "sha256"],
                name="unique_reference_per_persona",
                violation_error_message="This image is already in the persona's "
                "gallery.",
            ),
            models.UniqueConstraint(
                fields=["persona"],
                condition=Q(is_primary=True),
                name="one_primary_reference_per_persona",
                violation_error_message="A persona has one primary reference: "
                "untick 'primary' on the other image first.",
            ),
        ]

    def __str__(self) -> str:
        return self.caption or f"{self.get_role_display()} reference #{self.pk}"

    @property
    def face_analysed(self) -> bool:
        return self.face_analysed_at is not None and not self.face_error

    @property
    def face_strong_count(self) -> int:
        """Faces scoring at least the persona-face score (reference health)."""
        from generation.engine.face import PERSONA_FACE_MIN_SCORE

        return sum(
            face["score"] >= PERSONA_FACE_MIN_SCORE
            for face in self.face_detail.get("faces", [])
        )


class ControlNetUnit(models.Model):
    """One ControlNet for a persona; several enabled units make multi-ControlNet."""

    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="control_units"
    )
    control_type = models.CharField(max_length=16, choices=ControlType.choices)
    enabled = models.BooleanField(default=True)
    conditioning_scale = models.FloatField(
        default=vocabulary.DEFAULT_CONDITIONING_SCALE, validators=_weight_validators()
    )
    guidance_start = models.FloatField(default=0.0, validators=_fraction_validators())
    guidance_end = models.FloatField(default=1.0, validators=_fraction_validators())
    preprocessor_options = models.JSONField(
        default=dict,
        blank=True,
        help_text='Options for the preprocessor, e.g. {"low_threshold": 100, '
        '"high_threshold": 200} for canny.',
    )
    reference = models.ForeignKey(
        ReferenceImage,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The reference to preprocess; empty means the primary one.",
    )
    control_image = models.ImageField(
        "ready-made control image",
        upload_to=control_image_upload_to,
        blank=True,
        help_text="A ready-made map (e.g. a pose map); no preprocessor runs then.",
    )
    order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["order", "id"]
        verbose_name = "ControlNet unit"

    def __str__(self) -> str:
        return f"{self.get_control_type_display()} ({self.conditioning_scale:g})"

    def clean(self) -> None:
        if self.guidance_start >= self.guidance_end:
            raise ValidationError(
                {
                    "guidance_end": ValidationError(
                        "Guidance start (%(start)s) must be below guidance end "
                        "(%(end)s).",
                        code="guidance_window",
                        params={"start": self.guidance_start, "end": self.guidance_end},
                    )
                }
            )
        if not isinstance(self.preprocessor_options, dict):
            raise ValidationError(
                {"preprocessor_options": ValidationError(
                    'Preprocessor options must be a JSON object, e.g. {}.',
                    code="options_not_object",
                )}
            )


class LoraSource(models.TextChoices):
    UPLOADED = "uploaded", "Uploaded"
    TRAINED = "trained", "Trained in the studio"


class PersonaLoraVersion(models.Model):
    """One LoRA file of a persona: uploaded, or trained from its gallery (the
    training run that made it points here). Earlier versions are kept; at most one
    is active, and the active one is the persona's ``lora_weights``."""

    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="lora_versions"
    )
    number = models.PositiveIntegerField(editable=False)
    weights = models.FileField(upload_to=lora_upload_to)
    sha256 = models.CharField(max_length=64, editable=False)
    source = models.CharField(
        max_length=8, choices=LoraSource.choices, default=LoraSource.UPLOADED
    )
    label = models.CharField(max_length=120, blank=True)
    is_active = models.BooleanField("active", default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["persona", "-number"]
        verbose_name = "LoRA version"
        constraints = [
            models.UniqueConstraint(
                fields=["persona", "number"], name="unique_lora_version_number"
            ),
            models.UniqueConstraint(
                fields=["persona"],
                condition=Q(is_active=True),
                name="one_active_lora_version_per_persona",
                violation_error_message="A persona has one active LoRA version.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.persona} LoRA v{self.number}" + (
            f" ({self.label})" if self.label else ""
        )
