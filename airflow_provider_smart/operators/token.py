"""``SmartTokenOperator``: acquire (and check) a SMART Backend Services access token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import AirflowException, BaseOperator
from airflow_provider_smart.hooks.smart import SmartHook

if TYPE_CHECKING:
    from airflow_provider_smart.compat import Context


class SmartTokenOperator(BaseOperator):
    """Acquire a token through the ``smart`` connection and return its scope, expiry and type.

    :param smart_conn_id: the ``smart`` connection.
    :param scope: request this scope instead of the connection's.
    :param required_scopes: fail unless the granted scope covers all of these (v1 and v2 spellings
        compare equal: ``system/Patient.read`` is covered by ``system/*.rs``).
    :param push_token: also return the access token itself (masked in logs). Off by default: XCom is
        readable by anyone who can see the DAG run, so prefer using the hook in the consuming task.
    """

    template_fields: Sequence[str] = ("smart_conn_id", "scope", "required_scopes")
    ui_color = "#d5e8f7"

    def __init__(
        self,
        *,
        smart_conn_id: str = SmartHook.default_conn_name,
        scope: str | None = None,
        required_scopes: Sequence[str] | str | None = None,
        push_token: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smart_conn_id = smart_conn_id
        self.scope = scope
        self.required_scopes = required_scopes
        self.push_token = push_token

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.auth.scopes import missing_scopes

        hook = SmartHook(self.smart_conn_id, scope=self.scope)
        token = hook.get_token()
        hook.ensure_tokens_saved()
        required = self.required_scopes.split() if isinstance(self.required_scopes, str) else self.required_scopes
        missing = missing_scopes(token.scope, required or [])
        if missing:
            raise AirflowException(
                f"The server granted scope {token.scope!r}, which lacks {', '.join(missing)}. "
                "Ask the server's administrators to register these scopes for the client, or narrow required_scopes."
            )
        summary = token.summary()
        self.log.info(
            "Token for %s: scope %r, expires at %s.", hook.settings.client_id, token.scope, summary["expires_at"]
        )
        if self.push_token:
            summary["access_token"] = token.access_token  # already registered with the secret masker
        return summary
