"""The review gallery's URLs, mounted at ``gallery/`` (namespace ``gallery``)."""

from django.urls import path

from generation.gallery import views

app_name = "gallery"

urlpatterns = [
    path("", views.gallery_index, name="index"),
    path("progress/", views.content_progress, name="progress"),
    path("personas/<slug:slug>/", views.persona_gallery, name="persona"),
    path("personas/<slug:slug>/generate/", views.persona_generate, name="generate"),
    path("personas/<slug:slug>/grid/", views.persona_grid, name="grid-new"),
    path(
        "personas/<slug:slug>/counts/", views.persona_counts, name="persona-counts"
    ),
    path("batches/<int:batch_id>/", views.batch_page, name="batch"),
    path("grids/<int:batch_id>/", views.grid_sheet, name="grid"),
    path(
        "grids/<int:batch_id>/use-value/", views.grid_use_value, name="grid-use-value"
    ),
    path("queue/", views.queue_page, name="queue"),
    path(
        "personas/<slug:slug>/identity/",
        views.persona_identity,
        name="persona-identity",
    ),
    path(
        "personas/<slug:slug>/identity.csv",
        views.persona_identity_csv,
        name="persona-identity-csv",
    ),
    path("content/<int:content_id>/", views.content_detail, name="content"),
    path("content/<int:content_id>/card/", views.content_card, name="content-card"),
    path(
        "content/<int:content_id>/inpaint/",
        views.content_inpaint,
        name="content-inpaint",
    ),
    path(
        "content/<int:content_id>/preview.jpg",
        views.content_preview,
        name="content-preview",
    ),
    path(
        "content/<int:content_id>/<slug:action>/",
        views.content_act,
        name="content-action",
    ),
    # The strength sweeps' old addresses: their grids now.
    path("sweeps/<int:batch_id>/", views.sweep_sheet, name="sweep"),
    path(
        "sweeps/<int:batch_id>/use-strength/",
        views.sweep_use_strength,
        name="sweep-use-strength",
    ),
]
