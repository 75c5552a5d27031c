"""The review gallery's input: the filters of a persona's grid and the ids of
the progress endpoint."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.db import connection

from generation.gallery.selectors import GalleryFilters, GallerySort
from generation.models import Content, ContentStatus, ReviewState
from generation.selectors import IDENTITY_FILTERS
from personas.models import ConsistencyMethod


def _with_any(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("", "Any"), *choices]


class GalleryFilterForm(forms.Form):
    """The filters and sort of a persona's grid, read from the query string."""

    status = forms.ChoiceField(choices=_with_any(ContentStatus.choices), required=False)
    method = forms.ChoiceField(
        choices=_with_any(ConsistencyMethod.choices), required=False
    )
    review_state = forms.ChoiceField(
        label="Review", choices=_with_any(ReviewState.choices), required=False
    )
    date_from = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    identity = forms.ChoiceField(
        choices=_with_any(
            [(name, label) for name, (label, _) in IDENTITY_FILTERS.items()]
        ),
        required=False,
    )
    flagged = forms.ChoiceField(
        label="Safety checker",
        choices=_with_any(
            [("yes", "Flagged by the safety checker"), ("no", "Not flagged")]
        ),
        required=False,
    )
    sort = forms.ChoiceField(choices=GallerySort.choices, required=False)

    def gallery_filters(self) -> GalleryFilters:
        """The valid filters; a field with a bad value filters nothing (the form
        shows its error)."""
        self.is_valid()  # leaves only the valid fields in cleaned_data
        cleaned = self.cleaned_data
        return GalleryFilters(
            status=cleaned.get("status") or "",
            method=cleaned.get("method") or "",
            review_state=cleaned.get("review_state") or "",
            date_from=cleaned.get("date_from"),
            date_to=cleaned.get("date_to"),
            identity=cleaned.get("identity") or "",
            flagged=cleaned.get("flagged") or "",
            sort=cleaned.get("sort") or GallerySort.NEWEST,
        )


def content_ids(text: str) -> list[int]:
    """The ids of ``?ids=1,2,3``: whole numbers in the range of the database's
    content ids (a larger one would overflow the query); ``ValidationError``
    naming what to fix otherwise."""
    low, high = connection.ops.integer_field_range(Content._meta.pk.get_internal_type())
    low = max(low, 1)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    ids = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValidationError(
                "ids must be content ids separated by commas, each a whole number "
                "from %(low)s to %(high)s; got %(part)s.",
                code="bad_ids",
                params={"low": low, "high": high, "part": part[:40]},
            )
        ids.append(value)
    return ids
