"""Live previews of running generations, kept in Redis while the job runs.

The worker publishes a small JPEG of the latents every few steps
(``generation.engine.preview`` makes it; ``STUDIO_PREVIEW_*`` says how often)
under the job's id, with the step it shows; the gallery serves it to staff and
the cards show it while the content runs. Redis is only transport here
(DESIGN.md decision 1): a preview is a courtesy, so a Redis error never fails a
job. No orphan is left: the job removes its preview when it ends, however it
ends, and every write renews a ``STUDIO_PREVIEW_TTL_SECONDS`` expiry that
removes what a killed worker left.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import redis.exceptions
from django.conf import settings
from PIL import Image
from redis import Redis

from generation.queues import redis_connection

logger = logging.getLogger(__name__)

PREVIEW_KEY = "studio:preview:{job_id}"
PREVIEW_CONTENT_TYPE = "image/jpeg"
PREVIEW_JPEG_QUALITY = 80


def preview_key(job_id: str) -> str:
    return PREVIEW_KEY.format(job_id=job_id)


def preview_publish(
    *, connection: Redis, job_id: str, step: int, image: Image.Image
) -> None:
    """Store ``image`` as job ``job_id``'s preview after step ``step``."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=PREVIEW_JPEG_QUALITY)
    key = preview_key(job_id)
    try:
        with connection.pipeline() as pipe:
            pipe.hset(key, mapping={"step": step, "image": buffer.getvalue()})
            pipe.expire(key, settings.STUDIO_PREVIEW_TTL_SECONDS)
            pipe.execute()
    except redis.exceptions.RedisError:
        logger.warning("The preview of job %s was not stored (Redis)", job_id)


def preview_discard(*, connection: Redis, job_id: str) -> None:
    """Remove job ``job_id``'s preview (its run ended)."""
    try:
        connection.delete(preview_key(job_id))
    except redis.exceptions.RedisError:
        # The expiry removes it later.
        logger.warning("The preview of job %s was not removed (Redis)", job_id)


def preview_steps(*, job_ids: Iterable[str]) -> dict[str, int]:
    """The step each job's current preview shows, for the jobs that have one."""
    job_ids = [job_id for job_id in job_ids if job_id]
    if not job_ids:
        return {}
    try:
        with redis_connection().pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(preview_key(job_id), "step")
            steps = pipe.execute()
    except redis.exceptions.RedisError:
        return {}
    return {
        job_id: int(step)
        for job_id, step in zip(job_ids, steps, strict=True)
        if step is not None
    }


def preview_image(*, job_id: str) -> bytes | None:
    """Job ``job_id``'s current preview as JPEG bytes, or None."""
    if not job_id:
        return None
    try:
        return redis_connection().hget(preview_key(job_id), "image")
    except redis.exceptions.RedisError:
        return None
