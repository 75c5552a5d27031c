import time
import pytest
from generation import services
from generation.models import Content
from generation.reconcile import reconcile
from tests.generation.conftest import make_persona
from tests.generation.test_e2e import SLOW, _running_with_progress

pytestmark = [pytest.mark.django_db(transaction=True)]

def test_debug(studio_settings, start_worker):
    killed = start_worker("kill")
    persona = make_persona(slug="slow", **SLOW)
    content = services.content_enqueue(persona=persona, prompt="doomed run")
    r = _running_with_progress(content)
    print("first", r.progress_step, r.progress_total, time.time())
    killed.kill()
    print(reconcile())
    start_worker("kill")
    for _ in range(30):
        c = Content.objects.get(pk=content.pk)
        print(time.time(), c.status, c.progress_step, c.progress_total, c.attempts, c.rq_job_id)
        time.sleep(3)
    assert False
