"""The ``smart`` connection form for the UIs of Airflow 2.11, 3.0 and 3.1, derived from the declaration.

Airflow 3.2+ reads the form from ``get_provider_info()`` (``conn-fields`` and ``ui-field-behaviour``) without
importing the hook, and skips the hook methods this module backs. The older UIs only call those methods
(``SmartHook.get_connection_form_widgets`` / ``get_ui_field_behaviour``), with WTForms fields: 2.11's
Flask AppBuilder UI renders them, 3.0/3.1's API server translates them into the same JSON-schema fields
(by patching ``wtforms`` while it imports the hook, so the WTForms names are looked up at call time here).
Everything is computed from ``get_provider_info()``, so the two forms cannot drift apart.

Legacy field mapping, per ``conn-fields`` schema: boolean -> ``BooleanField``; integer/number ->
``IntegerField``; a secret (``format: password``, or a name Airflow's masker hides, such as
``private_key``) -> ``PasswordField``; ``format: multiline`` -> a text area (2.11); anything else ->
``StringField``; ``enum`` -> an ``any_of`` validator (a drop-down on 3.0/3.1). A secret key pasted into a
single-line password input loses its line breaks; ``auth.keys.repair_pem`` restores them.
"""

from __future__ import annotations

from typing import Any

CONNECTION_TYPE = "smart"
# What Airflow 2's connection views put in place of a saved secret (``airflow.www.views``): its save keeps
# the stored value for it, and its Test button sends it as is.
AIRFLOW2_PLACEHOLDER = "RATHER_LONG_SENSITIVE_FIELD_PLACEHOLDER"


def _declaration() -> dict[str, Any]:
    from airflow_provider_smart.get_provider_info import get_provider_info

    types = get_provider_info()["connection-types"]
    return next(t for t in types if t["connection-type"] == CONNECTION_TYPE)


def ui_field_behaviour() -> dict[str, Any]:
    """``ui-field-behaviour`` in the shape the hook method returns (underscores, not hyphens)."""
    behaviour = _declaration().get("ui-field-behaviour", {})
    return {
        "hidden_fields": list(behaviour.get("hidden-fields", [])),
        "relabeling": dict(behaviour.get("relabeling", {})),
        "placeholders": dict(behaviour.get("placeholders", {})),
    }


def is_secret(name: str, schema: dict[str, Any]) -> bool:
    """A password-format field, or one whose name Airflow's secrets masker hides (``private_key``...)."""
    from airflow_provider_smart.compat import redact

    return schema.get("format") == "password" or redact("x", name) != "x"


def connection_form_widgets() -> dict[str, Any]:
    """``conn-fields`` as WTForms fields (raises ImportError without ``wtforms``, which Airflow expects)."""
    import wtforms
    from wtforms import validators

    try:
        from flask_appbuilder import fieldwidgets
    except ImportError:  # 3.0/3.1 without the FAB provider: the API server ignores widgets anyway
        fieldwidgets = None

    def widget(name: str) -> Any:
        return getattr(fieldwidgets, name)() if fieldwidgets is not None else None

    fields: dict[str, Any] = {}
    for name, spec in _declaration().get("conn-fields", {}).items():
        schema = spec["schema"]
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        checks: list[Any] = [validators.Optional()]
        if "enum" in schema:
            checks.append(validators.any_of(list(schema["enum"])))
        if "minimum" in schema and hasattr(validators, "NumberRange"):
            checks.append(validators.NumberRange(min=schema["minimum"]))
        common = {"label": spec["label"], "description": spec.get("description", ""), "validators": checks}
        if "default" in schema:
            common["default"] = schema["default"]
        if "boolean" in types:
            fields[name] = wtforms.BooleanField(**common)
        elif "integer" in types or "number" in types:
            fields[name] = wtforms.IntegerField(**common, widget=widget("BS3TextFieldWidget"))
        elif is_secret(name, schema):
            fields[name] = wtforms.PasswordField(**common, widget=_saved_secret_widget(fieldwidgets))
        elif schema.get("format") == "multiline":
            fields[name] = wtforms.StringField(**common, widget=widget("BS3TextAreaFieldWidget"))
        else:
            fields[name] = wtforms.StringField(**common, widget=widget("BS3TextFieldWidget"))
    return fields


def _saved_secret_widget(fieldwidgets: Any) -> Any:
    """A password input that shows a saved secret as Airflow 2's placeholder, never the secret.

    FAB's password input renders empty, and 2.11's edit form then saves that empty custom field as "delete":
    opening a connection and saving it unchanged lost the private key. With the placeholder in the field,
    the save keeps the stored value, as 2.11 does for a placeholder in the Extra JSON.
    """
    base = getattr(fieldwidgets, "BS3PasswordFieldWidget", None)
    if not isinstance(base, type):  # no FAB, or the stand-in 3.0/3.1's API server imports us with: no widgets
        return base() if callable(base) else None

    class SavedSecretInput(base):  # type: ignore[valid-type,misc]
        def __call__(self, field: Any, **kwargs: Any) -> Any:
            kwargs["value"] = AIRFLOW2_PLACEHOLDER if field.data else ""
            return super().__call__(field, **kwargs)

    return SavedSecretInput(hide_value=False)
