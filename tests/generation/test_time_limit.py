"""rq's job timeout is raised wherever the job is: a loader that wraps what it
caught must not turn a run that was only too slow into another failure."""

from __future__ import annotations

from rq.timeouts import JobTimeoutException

from generation.engine.errors import ModelNotFound
from generation.queued_rows import ran_past_time_limit


def _wrapped_timeout() -> Exception:
    try:
        try:
            try:
                raise JobTimeoutException("Task exceeded maximum timeout value")
            except JobTimeoutException:
                raise OSError("Unable to load weights from checkpoint") from None
        except OSError as error:
            raise ModelNotFound("Could not load the model 'tiny'") from error
    except ModelNotFound as error:
        return error


def test_a_timeout_wrapped_by_a_loader_is_still_a_timeout():
    assert ran_past_time_limit(JobTimeoutException("late"))
    assert ran_past_time_limit(_wrapped_timeout())


def test_other_failures_are_not_timeouts():
    assert not ran_past_time_limit(ModelNotFound("No model 'sd15' is configured."))
    try:
        try:
            raise ValueError("bad config")
        except ValueError as error:
            raise OSError("Unable to load weights") from error
    except OSError as error:
        assert not ran_past_time_limit(error)
