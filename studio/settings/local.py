"""Local development and the one-machine studio (``make run``)."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)
# Local only: a fixed development key; production has no default (fail fast).
SECRET_KEY = env("SECRET_KEY", default="persona-studio-local-development-key")
