import time, datetime
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from tests.gallery.test_listing import _copies

def test_measure(persona, make_content, make_user):
    first = make_content()
    start = timezone.now()
    for chunk in range(50):
        _copies(first, 1000, created_at=lambda i, c=chunk: start - datetime.timedelta(seconds=c*1000+i), consistency_score=lambda i: (i % 97) / 97)
    client = Client(); client.force_login(make_user("generation.view_content"))
    url = reverse("gallery:persona", args=[persona.slug])
    client.get(url)
    for label, u in [("first", url), ("score", url+"?sort=score"), ("index", reverse("gallery:index")), ("content", reverse("gallery:content", args=[first.pk]))]:
        with CaptureQueriesContext(connection) as c:
            t = time.perf_counter(); r = client.get(u); dt = time.perf_counter() - t
        print(label, r.status_code, f"{dt*1000:.0f} ms")
        for q in c.captured_queries:
            if float(q["time"]) > 0.005: print("   ", q["time"], q["sql"][:300])
