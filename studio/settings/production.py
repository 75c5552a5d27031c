"""Production: secrets and services come from the environment with no default
(fail fast). Without ``DATABASE_URL`` a host would quietly use a SQLite file of
its own, and without ``REDIS_URL`` an embedded Redis no worker listens to."""

import environ
from django.core.exceptions import ImproperlyConfigured

from studio.conf import BASE_DIR

# Checked before base reads them with its one-machine defaults (from the
# environment or the .env file, as base reads them).
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
for _name, _example in (
    ("DATABASE_URL", "postgres://user:password@host:5432/studio"),
    ("REDIS_URL", "redis://redis.internal:6379/0"),
):
    if not environ.Env().str(_name, default=""):
        raise ImproperlyConfigured(
            f"Set the {_name} environment variable: production needs the shared "
            f"service, e.g. {_example} (docs/deployment.md)."
        )

from .base import *  # noqa: E402, F403
from .base import env  # noqa: E402

DEBUG = False
SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
