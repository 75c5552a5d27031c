"""Settings shared by every environment, read from the environment (django-environ).

One section per concern. ``local``, ``production`` and ``test`` build on this.
"""

from __future__ import annotations

from pathlib import Path

import environ

from studio import conf
from studio.conf import BASE_DIR

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env.str("STUDIO_VAR_DIR", default=conf.VAR_DIR))

# --- Core ------------------------------------------------------------------
SECRET_KEY = env("SECRET_KEY", default="")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A web host without model weights silences the model checks (docs/deployment.md).
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "studio",
    "personas",
    "generation",
    "generation.gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "studio.urls"
WSGI_APPLICATION = "studio.wsgi.application"
ASGI_APPLICATION = "studio.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------
DATABASES = {
    "default": env.db(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    ),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and a worker write at the same time: wait, don't fail.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    )
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth --------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Internationalisation ----------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static files and media storage (DESIGN.md decision 6) ------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", default="")
if AWS_STORAGE_BUCKET_NAME:
    # Media is private: objects are not public, URLs are never handed out;
    # the studio's media view streams them to staff only.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env("AWS_S3_REGION_NAME", default=None),
            "access_key": env("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env("AWS_SECRET_ACCESS_KEY", default=None),
            "location": env("AWS_LOCATION", default=""),
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    # No explicit location: FileSystemStorage follows MEDIA_ROOT (and its
    # overrides in tests).
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}
FILE_UPLOAD_PERMISSIONS = 0o640
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Redis and RQ ------------------------------------------------------------
# Unset REDIS_URL means the studio's own embedded redis-server on a socket
# under var/ (studio.redis_embedded starts it).
REDIS_URL = env("REDIS_URL", default="")
STUDIO_EMBEDDED_REDIS = not REDIS_URL
if not REDIS_URL:
    from studio.redis_embedded import EmbeddedRedis

    # Its socket under var/ (a short one in the temporary folder when that
    # path is too long for a Unix socket).
    REDIS_URL = EmbeddedRedis(VAR_DIR / "redis").url

# --- The studio's own settings (defaults documented in studio/conf.py) -------
# One explicit, typed line per setting; code reads them as settings.STUDIO_X.
STUDIO_VAR_DIR = str(VAR_DIR)
STUDIO_MODEL_ROOTS = env.json("STUDIO_MODEL_ROOTS", default=conf.MODEL_ROOTS(VAR_DIR))
STUDIO_TINY_MODEL_DIR = env.str("STUDIO_TINY_MODEL_DIR", default=conf.TINY_MODEL_DIR(VAR_DIR))
STUDIO_MODELS = env.json("STUDIO_MODELS", default=conf.MODELS)
STUDIO_CONTROLNETS = env.json("STUDIO_CONTROLNETS", default=conf.CONTROLNETS)
STUDIO_IP_ADAPTER = env.json("STUDIO_IP_ADAPTER", default=conf.IP_ADAPTER)
STUDIO_ANNOTATORS_DIR = env.str("STUDIO_ANNOTATORS_DIR", default=conf.ANNOTATORS_DIR)
STUDIO_SEG_MODEL = env.str("STUDIO_SEG_MODEL", default=conf.SEG_MODEL)
STUDIO_DEVICE = env.str("STUDIO_DEVICE", default=conf.DEVICE)
STUDIO_DTYPE = env.str("STUDIO_DTYPE", default=conf.DTYPE)
STUDIO_QUANTIZATION = env.str("STUDIO_QUANTIZATION", default=conf.QUANTIZATION)
STUDIO_MEMORY_BUDGET_MB = env.int("STUDIO_MEMORY_BUDGET_MB", default=conf.MEMORY_BUDGET_MB)
STUDIO_SAFETY_CHECKER = env.str("STUDIO_SAFETY_CHECKER", default=conf.SAFETY_CHECKER)
STUDIO_SAFETY_CHECKER_MODEL = env.str("STUDIO_SAFETY_CHECKER_MODEL", default=conf.SAFETY_CHECKER_MODEL)
STUDIO_CPU_OFFLOAD = env.bool("STUDIO_CPU_OFFLOAD", default=conf.CPU_OFFLOAD)
STUDIO_SEQUENTIAL_CPU_OFFLOAD = env.bool("STUDIO_SEQUENTIAL_CPU_OFFLOAD", default=conf.SEQUENTIAL_CPU_OFFLOAD)
STUDIO_ATTENTION_SLICING = env.bool("STUDIO_ATTENTION_SLICING", default=conf.ATTENTION_SLICING)
STUDIO_VAE_TILING = env.bool("STUDIO_VAE_TILING", default=conf.VAE_TILING)
STUDIO_CHANNELS_LAST = env.bool("STUDIO_CHANNELS_LAST", default=conf.CHANNELS_LAST)
STUDIO_TORCH_COMPILE = env.bool("STUDIO_TORCH_COMPILE", default=conf.TORCH_COMPILE)
STUDIO_COMPILE_SIZES = env.str("STUDIO_COMPILE_SIZES", default=conf.COMPILE_SIZES)
STUDIO_COMPILE_LORA_RANK = env.int("STUDIO_COMPILE_LORA_RANK", default=conf.COMPILE_LORA_RANK)
STUDIO_COMPILE_BACKEND = env.str("STUDIO_COMPILE_BACKEND", default=conf.COMPILE_BACKEND)
STUDIO_COMPILE_IP_ADAPTER = env.bool("STUDIO_COMPILE_IP_ADAPTER", default=conf.COMPILE_IP_ADAPTER)
STUDIO_MAX_UPLOAD_BYTES = env.int("STUDIO_MAX_UPLOAD_BYTES", default=conf.MAX_UPLOAD_BYTES)
STUDIO_MAX_UPLOAD_PIXELS = env.int("STUDIO_MAX_UPLOAD_PIXELS", default=conf.MAX_UPLOAD_PIXELS)
STUDIO_MAX_LORA_BYTES = env.int("STUDIO_MAX_LORA_BYTES", default=conf.MAX_LORA_BYTES)
STUDIO_MAX_UPLOAD_SIDE = env.int("STUDIO_MAX_UPLOAD_SIDE", default=conf.MAX_UPLOAD_SIDE)
STUDIO_MAX_UPLOAD_ASPECT_RATIO = env.float("STUDIO_MAX_UPLOAD_ASPECT_RATIO", default=conf.MAX_UPLOAD_ASPECT_RATIO)
STUDIO_MAX_PNG_CHUNKS = env.int("STUDIO_MAX_PNG_CHUNKS", default=conf.MAX_PNG_CHUNKS)
STUDIO_MAX_JPEG_SCANS = env.int("STUDIO_MAX_JPEG_SCANS", default=conf.MAX_JPEG_SCANS)
STUDIO_UPLOAD_CHECK_CPU_SECONDS = env.int("STUDIO_UPLOAD_CHECK_CPU_SECONDS", default=conf.UPLOAD_CHECK_CPU_SECONDS)
STUDIO_UPLOAD_CHECK_MEMORY_MB = env.int("STUDIO_UPLOAD_CHECK_MEMORY_MB", default=conf.UPLOAD_CHECK_MEMORY_MB)
STUDIO_MAX_LORA_HEADER_BYTES = env.int("STUDIO_MAX_LORA_HEADER_BYTES", default=conf.MAX_LORA_HEADER_BYTES)
STUDIO_MAX_LORA_TENSORS = env.int("STUDIO_MAX_LORA_TENSORS", default=conf.MAX_LORA_TENSORS)
STUDIO_MAX_WIDTH = env.int("STUDIO_MAX_WIDTH", default=conf.MAX_WIDTH)
STUDIO_MAX_HEIGHT = env.int("STUDIO_MAX_HEIGHT", default=conf.MAX_HEIGHT)
STUDIO_GRID_MAX_TILES = env.int("STUDIO_GRID_MAX_TILES", default=conf.GRID_MAX_TILES)
STUDIO_GALLERY_PAGE_CACHE_SECONDS = env.int("STUDIO_GALLERY_PAGE_CACHE_SECONDS", default=conf.GALLERY_PAGE_CACHE_SECONDS)
STUDIO_THUMBNAIL_SIZE = env.int("STUDIO_THUMBNAIL_SIZE", default=conf.THUMBNAIL_SIZE)
STUDIO_PNG_COMPRESS_LEVEL = env.int("STUDIO_PNG_COMPRESS_LEVEL", default=conf.PNG_COMPRESS_LEVEL)
STUDIO_MASK_BLUR = env.int("STUDIO_MASK_BLUR", default=conf.MASK_BLUR)
STUDIO_ONLY_MASKED_PADDING = env.int("STUDIO_ONLY_MASKED_PADDING", default=conf.ONLY_MASKED_PADDING)
STUDIO_DEFAULT_QUEUE = env.str("STUDIO_DEFAULT_QUEUE", default=conf.DEFAULT_QUEUE)
STUDIO_QUEUE_ROUTES = env.json("STUDIO_QUEUE_ROUTES", default=conf.QUEUE_ROUTES)
STUDIO_CPU_QUEUE = env.str("STUDIO_CPU_QUEUE", default=conf.CPU_QUEUE)
STUDIO_JOB_TIMEOUT = env.int("STUDIO_JOB_TIMEOUT", default=conf.JOB_TIMEOUT)
STUDIO_MAX_ATTEMPTS = env.int("STUDIO_MAX_ATTEMPTS", default=conf.MAX_ATTEMPTS)
STUDIO_RETRY_BACKOFF_SECONDS = env.json("STUDIO_RETRY_BACKOFF_SECONDS", default=conf.RETRY_BACKOFF_SECONDS)
STUDIO_PROGRESS_INTERVAL_SECONDS = env.float("STUDIO_PROGRESS_INTERVAL_SECONDS", default=conf.PROGRESS_INTERVAL_SECONDS)
STUDIO_PREVIEW_METHOD = env.str("STUDIO_PREVIEW_METHOD", default=conf.PREVIEW_METHOD)
STUDIO_PREVIEW_TINY_AUTOENCODERS = env.json("STUDIO_PREVIEW_TINY_AUTOENCODERS", default=conf.PREVIEW_TINY_AUTOENCODERS)
STUDIO_PREVIEW_EVERY_STEPS = env.int("STUDIO_PREVIEW_EVERY_STEPS", default=conf.PREVIEW_EVERY_STEPS)
STUDIO_PREVIEW_MIN_INTERVAL_MS = env.int("STUDIO_PREVIEW_MIN_INTERVAL_MS", default=conf.PREVIEW_MIN_INTERVAL_MS)
STUDIO_PREVIEW_TTL_SECONDS = env.int("STUDIO_PREVIEW_TTL_SECONDS", default=conf.PREVIEW_TTL_SECONDS)
STUDIO_RECONCILE_INTERVAL_SECONDS = env.int("STUDIO_RECONCILE_INTERVAL_SECONDS", default=conf.RECONCILE_INTERVAL_SECONDS)
STUDIO_PRELOAD_MODELS = env.json("STUDIO_PRELOAD_MODELS", default=conf.PRELOAD_MODELS)

RQ_QUEUES = {
    queue: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": STUDIO_JOB_TIMEOUT}
    for queue in {
        STUDIO_DEFAULT_QUEUE,
        *STUDIO_QUEUE_ROUTES.values(),
        STUDIO_CPU_QUEUE,
    }
}
# No second copy of the dashboard inside the admin (where any staff could open
# it); the header links superusers to /admin/rq/ (studio/urls.py).
RQ_SHOW_ADMIN_LINK = False
# `manage.py rqworker` must not fork per job either (DESIGN.md decision 3).
RQ = {"WORKER_CLASS": "generation.worker.StudioWorker"}

# --- Logging -------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
