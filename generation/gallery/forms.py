"""The filter form of a persona's grid in the review gallery."""

from __future__ import annotations

from django import forms

from generation.gallery_selectors import GalleryFilters, GallerySort
from generation.models import ContentStatus, ReviewState
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
            sort=cleaned.get("sort") or GallerySort.NEWEST,
        )
