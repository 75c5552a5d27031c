"""Admin forms as a browser submits them, read from the page the admin rendered.

The hostile-input tests post files and numbers into real admin pages. Rather
than spell out every field (and break when a field is added), they GET the page
and turn the forms in its context into POST data, the way a browser submits
the HTML form unchanged; then they change the one field under attack.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.helpers import InlineAdminFormSet
from django.http import HttpResponse


def form_data(form: forms.BaseForm) -> dict[str, Any]:
    """What a browser posts for ``form`` as rendered: every field's current value;
    unticked boxes and file inputs post nothing."""
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled or isinstance(field, forms.FileField):
            continue
        value = form[name].value()
        key = form.add_prefix(name)
        if isinstance(field.widget, forms.CheckboxInput):
            if value:
                data[key] = "on"
        elif isinstance(value, list | tuple):
            data[key] = [str(item) for item in value]
        else:
            data[key] = "" if value is None else str(value)
    return data


def formset_data(formset: forms.BaseFormSet) -> dict[str, Any]:
    """The management form and every form of ``formset`` (extra ones included)."""
    data = form_data(formset.management_form)
    for form in formset.forms:
        data.update(form_data(form))
    return data


def change_form_data(response: HttpResponse) -> dict[str, Any]:
    """The whole admin add/change form of ``response``: the main form and every
    inline formset, ready to post back."""
    data = form_data(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        data.update(formset_data(inline.formset))
    return data


def inline(response: HttpResponse, model: type) -> InlineAdminFormSet:
    """The inline of ``model`` on the admin page of ``response``."""
    for candidate in response.context["inline_admin_formsets"]:
        if candidate.formset.model is model:
            return candidate
    raise AssertionError(f"No {model.__name__} inline on this page")


def add_inline_form(
    data: dict[str, Any], inline_formset: InlineAdminFormSet, **values: Any
) -> str:
    """Add one more form to an inline (what "Add another" does in the browser),
    with its defaults and ``values``; return its prefix."""
    formset = inline_formset.formset
    index = int(data[f"{formset.prefix}-TOTAL_FORMS"])
    empty = formset.empty_form
    prefix = f"{formset.prefix}-{index}"
    for key, value in form_data(empty).items():
        data[key.replace("__prefix__", str(index))] = value
    for name, value in values.items():
        data[f"{prefix}-{name}"] = value
    data[f"{formset.prefix}-TOTAL_FORMS"] = str(index + 1)
    return prefix


def first_extra_form_prefix(inline_formset: InlineAdminFormSet) -> str:
    """The prefix of the inline's first blank form, where an upload goes."""
    formset = inline_formset.formset
    return formset.add_prefix(formset.initial_form_count())


def page_errors(response: HttpResponse) -> list[tuple[str, str]]:
    """(code, message) of every error on the page's main form and inlines."""
    forms_on_page = [response.context["adminform"].form]
    formsets = [
        inline.formset for inline in response.context.get("inline_admin_formsets", [])
    ]
    for formset in formsets:
        forms_on_page.extend(formset.forms)
    errors = [
        error
        for form in forms_on_page
        for field_errors in form.errors.as_data().values()
        for error in field_errors
    ]
    errors.extend(
        error for formset in formsets for error in formset.non_form_errors().as_data()
    )
    return [(error.code, " ".join(error.messages)) for error in errors]
