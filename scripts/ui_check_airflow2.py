"""The ``smart`` connection form and its Test button in Airflow 2.11's Flask UI, in headless Chromium.

Run with the 2.11 venv: ``.venv-compat/2.11/bin/python scripts/ui_check_airflow2.py`` (``make compat-ui``
runs it with the 3.x checks of ``scripts/ui_check.py``). Starts the sandbox SMART server and ``airflow
webserver`` (FAB login, an admin user, sqlite in a temporary AIRFLOW_HOME, connection testing enabled) on
127.0.0.1 and, as a person would:

1. adds a Backend Services connection, the PEM pasted into the form, and presses Test before saving;
2. saves it, opens it again: no secret is on the page; Test there, and after saving the edit untouched;
3. a connection with a key the server does not know: Test names the failure;
4. a refresh-token connection made in the form: Test does not spend the refresh token.

Screenshots go to ``build/ui-check/airflow-2.11/``. Everything it starts it stops, also on failure.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ui_check  # the browser, screenshots and checks of the 3.x UI check
from ui_check import LAUNCH_SCOPE, REPO, Ui, check, check_readable, say

ADMIN = ("admin", "admin-password")


class Airflow2Webserver:
    """``airflow db migrate``, an admin user, then ``airflow webserver`` in a fresh home."""

    def __init__(self, home: Path) -> None:
        from airflow_provider_smart.testing.airflow_server import free_port

        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "_AIRFLOW"))}
        self.env = {
            **base,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags"),
            "AIRFLOW__WEBSERVER__SECRET_KEY": base64.urlsafe_b64encode(os.urandom(24)).decode(),
            "AIRFLOW__WEBSERVER__WORKERS": "1",
            "AIRFLOW__WEBSERVER__BASE_URL": self.url,
        }
        self.log_path = home / "webserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "airflow", *args[1:]] if args[0] == "airflow" else list(args)
        if args[0] == "airflow-smart":
            command = [sys.executable, "-m", "airflow_provider_smart.cli", *args[1:]]
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    def __enter__(self) -> Airflow2Webserver:
        from airflow_provider_smart.testing.airflow_server import wait_until_healthy

        for step in (
            ("airflow", "db", "migrate"),
            ("airflow", "users", "create", "--role", "Admin", "--username", ADMIN[0], "--password", ADMIN[1]),
        ):
            extra = (
                ("--email", "admin@example.org", "--firstname", "A", "--lastname", "Admin") if "users" in step else ()
            )
            out = self.run(*step, *extra)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "webserver", "--hostname", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_healthy(
            self._process, f"{self.url}/health", 240, "the webserver", lambda: self.log_path.read_text()[-3000:]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        from airflow_provider_smart.testing.airflow_server import stop_process_group

        process, self._process = self._process, None
        stop_process_group(process)


def log_in(ui: Ui) -> None:
    ui.d.get(f"{ui.url}/login/")
    ui.wait(lambda: ui.css("input#username"), "the login form")[0].send_keys(ADMIN[0])
    ui.css("input#password")[0].send_keys(ADMIN[1])
    ui.click(ui.css("input[type='submit'], button[type='submit']")[0])
    ui.wait(lambda: "/login" not in ui.d.current_url, "the login to finish")


def fill(ui: Ui, field_id: str, value: str) -> None:
    """Paste a value into a field, as :func:`ui_check.type_into` does (one input event with the whole text)."""
    element = ui.wait(lambda: ui.css(f"#{field_id}"), f"the field {field_id}")[0]
    ui.d.execute_script(
        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
        "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
        element,
        value,
    )


def extra_field(name: str) -> str:
    return f"extra__smart__{name}"


def open_add_form(ui: Ui, conn_id: str) -> None:
    ui.d.get(f"{ui.url}/connection/add")
    ui.wait(lambda: ui.d.find_elements("css selector", "#conn_type"), "the connection form")
    fill(ui, "conn_id", conn_id)
    # select2 keeps the real <select>: set it and let the page react as to a choice.
    ui.d.execute_script("$('#conn_type').val('smart').trigger('change');")
    ui.wait(lambda: ui.css(f"#{extra_field('private_key')}"), "the SMART fields")


def fill_connection(ui: Ui, *, host: str, login: str, port: int, extra: dict[str, str]) -> None:
    fill(ui, "host", host)
    fill(ui, "login", login)
    fill(ui, "port", str(port))
    for name, value in extra.items():
        fill(ui, extra_field(name), value)


def press_test(ui: Ui, shot: str) -> tuple[str, str]:
    """Press the form's Test button; the alert's class and text as a person sees them."""
    before = ui.d.execute_script("return $('.container .row .alert').text()") or ""
    ui.click(ui.wait(lambda: ui.css("#test-connection:not([disabled])"), "an enabled Test button")[0])

    def result() -> Any:
        alerts = ui.css(".container .row .alert")
        shown = [a for a in alerts if a.text.strip() and a.text != before and "Warning: Fields" not in a.text]
        return shown[0] if shown else None

    alert = ui.wait(result, "the Test result", 120)
    ui.d.execute_script("window.scrollTo(0, 0);")
    time.sleep(0.5)
    # The page's first alert is a warning; the script adds the result's class to it without removing that,
    # so every result looks yellow: the class tells what the script meant, the text what a person reads.
    classes = (alert.get_attribute("class") or "").split()
    kind = next((c for c in ("alert-success", "alert-error") if c in classes), "alert-warning")
    text = alert.text.replace("\u00d7", "").strip()  # the close button
    ui.shot(shot, full=False)
    say(f"Test: {kind}: {' '.join(text.split())}")
    return kind, text


def save(ui: Ui, conn_id: str) -> None:
    ui.click(ui.wait(lambda: ui.css("form#model_form [type='submit']"), "the Save button")[0])
    ui.wait(
        lambda: ui.xpath("//*[contains(@class, 'alert')][contains(., 'Added Row') or contains(., 'Changed Row')]"),
        f"{conn_id} saved",
    )


def open_edit_form(ui: Ui, conn_id: str) -> None:
    ui.d.get(f"{ui.url}/connection/list/?_flt_0_conn_id={conn_id}")
    link = ui.wait(lambda: ui.css("a[href*='/connection/edit/']"), f"the edit link of {conn_id}")[0]
    ui.d.get(link.get_attribute("href"))
    ui.wait(lambda: ui.css(f"#{extra_field('private_key')}"), "the SMART fields")


def run_steps(ui: Ui, sandbox: Any, web: Airflow2Webserver) -> None:
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks

    key = generate_private_key("ES384")
    pem = private_key_to_pem(key)
    sandbox.register_client("ui-client", jwks=public_jwks(key, kid="ui-key", alg="ES384"), scopes="system/*.rs")
    log_in(ui)

    say("1. a Backend Services connection, PEM pasted into the form, Test before saving")
    open_add_form(ui, "smart_ui")
    body = ui.body_text()
    missing = [label for label in ui_check.LABELS if label not in body]
    check(not missing, f"labels missing from the form: {missing}")
    fill_connection(
        ui, host=sandbox.url, login="ui-client", port=sandbox.port, extra={"private_key": pem, "kid": "ui-key"}
    )
    ui.shot("new-form-pem-pasted")
    kind, text = press_test(ui, "test-before-save-green")
    check(kind == "alert-success" and "Connected: the server issued an access token" in text, f"not green: {text}")
    check_readable(text, pem)
    save(ui, "smart_ui")

    say("2. open it again: no secret on the page; Test there; save the edit untouched")
    open_edit_form(ui, "smart_ui")
    check(pem.splitlines()[1] not in ui.d.page_source, "the saved private key is in the edit page's HTML")
    ui.shot("edit-form-no-secret")
    kind, text = press_test(ui, "test-on-edit-form-sends-the-placeholder")
    check(
        text.startswith("Failed:") and "what Airflow shows for a saved secret" in text and "airflow-smart test" in text,
        f"Test of the edit form's placeholder is not explained: {text}",
    )
    fill(ui, extra_field("private_key"), pem)
    kind, text = press_test(ui, "test-on-edit-form-key-pasted-again")
    check(kind == "alert-success" and "Connected:" in text, f"Test with the key pasted again: {kind}: {text}")
    open_edit_form(ui, "smart_ui")
    save(ui, "smart_ui")
    out = web.run("airflow-smart", "test", "--conn-id", "smart_ui")
    check(out.returncode == 0 and "OK: Connected:" in out.stdout, f"the edit lost the key: {out.stdout}{out.stderr}")
    say("   after saving the edit untouched, airflow-smart test --conn-id smart_ui: OK")

    say("3. a key the server does not know")
    wrong = private_key_to_pem(generate_private_key("ES384"))
    open_add_form(ui, "smart_ui_wrong_key")
    fill_connection(
        ui, host=sandbox.url, login="ui-client", port=sandbox.port, extra={"private_key": wrong, "kid": "ui-key"}
    )
    kind, text = press_test(ui, "test-wrong-key")
    check("invalid_client" in text and "check the client id" in text.lower(), f"not a readable failure: {text}")
    check(text.startswith("Failed"), f"a failure shown in Airflow 2's green box does not say it failed: {text}")
    check_readable(text, wrong)

    say("4. a refresh-token connection made in the form")
    refresh_token = sandbox.launch_refresh_token("ui-launch-app", LAUNCH_SCOPE)
    open_add_form(ui, "smart_ui_refresh")
    fill_connection(
        ui,
        host=sandbox.url,
        login="ui-launch-app",
        port=sandbox.port,
        extra={"auth_method": "refresh_token", "refresh_token": refresh_token},
    )
    before = sandbox.refresh_requests
    kind, text = press_test(ui, "test-refresh-token-not-spent")
    check(kind == "alert-success" and "was not refreshed" in text, f"Test of the refresh-token connection: {text}")
    check_readable(text, refresh_token)
    check(sandbox.refresh_requests == before, "Test spent the refresh token")
    save(ui, "smart_ui_refresh")
    env = {"SMART_TEST_CONN_ID": "smart_ui_refresh", "SMART_TEST_REQUIRED_SCOPES": "user/Patient.rs"}
    sandbox.token_lifetime = 1
    out = web.run("airflow", "dags", "test", "smart_token_check", extra_env=env)
    check(out.returncode == 0, f"the DAG run failed:\n{(out.stdout + out.stderr)[-3000:]}")
    check(sandbox.refresh_requests == before + 1, "the DAG run did not refresh through the connection")
    say("   a DAG run refreshed the token through smart_ui_refresh")


def main() -> int:
    return ui_check.run_check(Airflow2Webserver, run_steps, "webserver.log")


if __name__ == "__main__":
    sys.exit(main())
