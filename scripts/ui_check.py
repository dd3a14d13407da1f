"""``make ui-check``: the ``smart`` connection form and its Test button in the real Airflow UI.

Installs what it needs when missing (Debian ``chromium`` + ``chromium-driver``, ``selenium`` into this venv),
starts the sandbox SMART server and an Airflow API server (simple auth manager, everyone admin, sqlite in a
temporary AIRFLOW_HOME) on 127.0.0.1, and drives the UI in headless Chromium as a person would:

1. add a Backend Services connection by pasting a PEM; check labels, that no non-secret field shows ``***``;
2. save, open it again: the key shows as ``***``, the other fields as typed;
3. press Test: a green result naming the granted scope;
4. a connection with a key the server does not know: a readable red result;
5. a refresh-token connection made in the form: Test is green without spending the refresh token, a DAG
   run refreshes through it, and Test and a second run still work.

Screenshots go to ``build/ui-check/`` (gitignored); run with an older Airflow's venv
(``.venv-compat/3.1/bin/python scripts/ui_check.py``), to ``build/ui-check/airflow-<version>/``. There the
form comes from the hook's WTForms fields (before 3.2: one Extra Fields section, secrets in single-line
password inputs, whose dropped line breaks the provider restores), and before 3.1 the UI has no Test button:
the same checks run through ``airflow-smart test`` instead. Everything it starts it stops, also on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _airflow_version() -> tuple[int, int]:
    from importlib.metadata import version

    major, minor = version("apache-airflow").split(".")[:2]
    return int(major), int(minor)


AIRFLOW = _airflow_version()
LEGACY_FORM = AIRFLOW < (3, 2)  # the form from WTForms fields: no sections, secrets in single-line inputs
HAS_TEST_BUTTON = AIRFLOW >= (3, 1)
OUT = REPO / "build" / "ui-check" / ("" if AIRFLOW >= (3, 2) else f"airflow-{AIRFLOW[0]}.{AIRFLOW[1]}")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LAUNCH_SCOPE = "openid fhirUser offline_access user/*.rs"
SHOTS: list[str] = []


def say(message: str) -> None:
    print(f"ui-check: {message}", flush=True)


# ---------------------------------------------------------------------------------------------- setup
def ensure_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("ui-check needs Debian's chromium and chromium-driver: run as root, or install them.")
    say("installing chromium and chromium-driver (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def ensure_selenium() -> None:
    if importlib.util.find_spec("selenium") is not None:
        return
    say("installing selenium into the venv (the 'ui' extra)")
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        command = [str(uv), "pip", "install", "--quiet", "--python", sys.executable, "-e", f"{REPO}[ui]"]
    else:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{REPO}[ui]"]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    importlib.invalidate_caches()


@contextlib.contextmanager
def chrome(profile: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(OUT / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------- UI helpers
class Ui:
    def __init__(self, driver: Any, base_url: str) -> None:
        self.d = driver
        self.url = base_url

    def shot(self, name: str, *, full: bool = True) -> Path:
        path = OUT / f"{len(SHOTS) + 1:02d}-{name}.png"
        if full:  # the whole dialog or page; toasts are shot at the normal size, where they sit
            with contextlib.suppress(Exception):
                height = self.d.execute_script("return Math.max(document.body.scrollHeight, 1000)")
                self.d.set_window_size(1280, min(int(height) + 200, 4000))
        self.d.save_screenshot(str(path))
        self.d.set_window_size(1280, 1000)
        SHOTS.append(path.name)
        say(f"screenshot {path}")
        return path

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # the DOM changes under us while React renders
                last = exc
            time.sleep(0.3)
        self.shot("timeout")
        raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))

    def xpath(self, expr: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return [e for e in self.d.find_elements(By.XPATH, expr) if e.is_displayed()]

    def css(self, expr: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return [e for e in self.d.find_elements(By.CSS_SELECTOR, expr) if e.is_displayed()]

    def click(self, element: Any) -> None:
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            element.click()
        except Exception:
            self.d.execute_script("arguments[0].click();", element)

    def button(self, text: str) -> Any:
        return self.wait(lambda: self.xpath(f"//button[normalize-space(.)='{text}']"), f"button {text!r}")[0]

    def body_text(self) -> str:
        return str(self.d.execute_script("return document.body.innerText"))


# ---------------------------------------------------------------------------------------------- steps
NON_SECRET = (
    "host",
    "login",
    "port",
    "element_key_file",
    "element_kid",
    "element_scope",
    "element_oauth_url",
    "element_jku",
    "element_allowed_hosts",
    "element_headers",
    "element_verify",
    "element_timeout",
    "element_rotation_store",
    "element_launch_scope",
)
LABELS = (
    "FHIR base URL",
    "Client ID",
    "Client secret",
    "Port of the FHIR base URL",
    "Auth method",
    "Private key (PEM)",
    "Key file",
    "Key ID (kid)",
    "Signing algorithm",
    "Scope",
    "Token endpoint URL",
    "JWKS URL (jku)",
    "Hosts that may receive the token",
    "Refresh token",
    "Rotation store",
)
EXTRA = "Extra Fields"
REFRESH = "Refresh token (App Launch) connections only"


def check(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def open_connections(ui: Ui) -> None:
    ui.d.get(f"{ui.url}/connections")
    ui.wait(lambda: ui.xpath("//button[contains(., 'Add Connection')]"), "the connections page")


def field(ui: Ui, name: str) -> Any:
    return ui.wait(lambda: ui.css(f"[name='{name}']"), f"the field {name}")[0]


def expand(ui: Ui, section: str) -> None:
    """Open one accordion section of the connection form (the form shows one at a time)."""
    trigger = ui.wait(lambda: ui.xpath(f"//button[normalize-space(.)='{section}']"), f"section {section!r}")[0]
    if trigger.get_attribute("aria-expanded") != "true":
        ui.click(trigger)
    ui.wait(lambda: trigger.get_attribute("aria-expanded") == "true", f"section {section!r} open")
    time.sleep(0.5)


def choose(ui: Ui, combobox: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    combobox.send_keys(text)
    time.sleep(0.5)
    combobox.send_keys(Keys.ENTER)


def choose_auth_method(ui: Ui, value: str) -> None:
    """Pick the Auth method: 3.2+ renders a typeahead combobox input; 3.1 a Chakra select (a button that opens
    a listbox of options); 3.0 a typeahead input after the label."""
    trigger = ui.css("button[role='combobox'][id='select:element_auth_method:trigger']")
    if trigger:
        ui.click(trigger[0])
        option = ui.wait(
            lambda: ui.css(f"[role='option'][data-value='{value}'][id^='select:element_auth_method:']"),
            f"the Auth method option {value}",
        )[0]
        ui.click(option)
        ui.wait(lambda: trigger[0].text.strip() == value, f"the Auth method to show {value}")
        return
    combo = ui.xpath("//input[@name='element_auth_method']/preceding::input[@role='combobox'][1]") or ui.xpath(
        "//*[normalize-space(text())='Auth method']/following::input[@role='combobox'][1]"
    )
    check(combo, "the Auth method dropdown is missing")
    choose(ui, combo[0], value)
    hidden = ui.d.find_elements("css selector", "input[name='element_auth_method']")
    chosen = hidden[0].get_attribute("value") if hidden else combo[0].find_element("xpath", "..").text
    check(value in (chosen or "") or value in ui.body_text(), "the auth method was not chosen")


def type_into(ui: Ui, name: str, value: str) -> None:
    """Enter a value the way a paste does: one input event with the whole text.

    (Selenium's send_keys types key by key, and React's controlled inputs drop keys under that load: a
    typed PEM arrives with characters missing. A person pastes a PEM, so the check pastes too.)
    """
    element = field(ui, name)
    # A single-line input drops line breaks (the browser's value sanitisation); a text area keeps them.
    expected = value if element.tag_name.lower() == "textarea" else value.replace("\r", "").replace("\n", "")
    ui.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    ui.d.execute_script(
        """
        const el = arguments[0];
        const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
        Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, arguments[1]);
        el.dispatchEvent(new Event('input', {bubbles: true}));
        """,
        element,
        value,
    )
    ui.wait(lambda: element.get_attribute("value") == expected, f"{name} to hold what was pasted")


def values_shown(ui: Ui, names: tuple[str, ...]) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    shown = {}
    for name in names:
        for element in ui.d.find_elements(By.CSS_SELECTOR, f"[name='{name}']"):
            shown[name] = element.get_attribute("value") or ""
    return shown


def add_connection(
    ui: Ui,
    conn_id: str,
    *,
    host: str,
    login: str,
    port: int | None,
    extra: dict[str, str],
    refresh: dict[str, str] | None = None,
    auth_method: str | None = None,
    shots: bool = False,
) -> None:
    """Fill the Add Connection form as a person would and save it."""
    open_connections(ui)
    ui.click(ui.button("Add Connection"))
    type_into(ui, "connection_id", conn_id)
    choose(ui, ui.wait(lambda: ui.css("input[role='combobox']"), "the connection type")[0], "SMART on FHIR")
    ui.wait(lambda: ui.xpath("//button[normalize-space(.)='Standard Fields']"), "the SMART form")
    expand(ui, "Standard Fields")
    if shots:
        body = ui.body_text()
        shown = values_shown(ui, ("host", "login", "port", "password"))
        check(all(v == "" for v in shown.values()), f"a new form shows values: {shown}")
        expand(ui, EXTRA)
        if not LEGACY_FORM:  # the legacy form has no sections: all extras are under Extra Fields
            expand(ui, REFRESH)
            body += ui.body_text()
            expand(ui, EXTRA)
        body += ui.body_text()
        missing = [label for label in LABELS if label not in body]
        check(not missing, f"labels missing from the form: {missing}")
        shown = values_shown(ui, (*NON_SECRET, "element_private_key", "element_refresh_token"))
        check("***" not in shown.values(), f"a new form shows *** in {[k for k, v in shown.items() if v == '***']}")
        check(shown.get("element_rotation_store") == "", "the rotation store is not empty on a new form")
        ui.shot("new-form-extra-fields-no-masked-values")
        if not LEGACY_FORM:
            expand(ui, REFRESH)
            ui.shot("new-form-refresh-token-section")
        expand(ui, "Standard Fields")
    type_into(ui, "host", host)
    type_into(ui, "login", login)
    if port is not None:
        type_into(ui, "port", str(port))
    expand(ui, EXTRA)
    if auth_method:
        choose_auth_method(ui, auth_method)
    for name, value in extra.items():
        type_into(ui, f"element_{name}", value)
    if refresh:
        expand(ui, EXTRA if LEGACY_FORM else REFRESH)
        for name, value in refresh.items():
            type_into(ui, f"element_{name}", value)
    if shots:
        expand(ui, EXTRA)
        pem = field(ui, "element_private_key").get_attribute("value") or ""
        pasted = extra["private_key"].replace("\n", "") if LEGACY_FORM else extra["private_key"]
        check(pem == pasted, "the pasted PEM changed in the form (line breaks lost?)")
        ui.shot("pem-pasted-before-save")
    ui.click(ui.button("Save"))
    ui.wait(lambda: ui.xpath(f"//tr[.//td[normalize-space(.)='{conn_id}']]"), f"{conn_id} in the list")


def row_button(ui: Ui, conn_id: str, label: str) -> Any:
    row = ui.wait(lambda: ui.xpath(f"//tr[.//td[normalize-space(.)='{conn_id}']]"), f"the row of {conn_id}")[0]
    buttons = [b for b in row.find_elements("css selector", "button") if b.get_attribute("aria-label") == label]
    check(buttons, f"no {label!r} button for {conn_id}")
    return buttons[0]


def press_test(ui: Ui, conn_id: str, shot: str, api: Any = None) -> tuple[str, str]:
    """Press the row's Test button; the toast's type (success/error) and text, as a person sees them.

    Airflow 3.0's UI has no Test button: the documented alternative, ``airflow-smart test``, instead."""
    if not HAS_TEST_BUTTON:
        out = api.run("airflow-smart", "test", "--conn-id", conn_id)
        text = (out.stdout + out.stderr).strip()
        say(f"airflow-smart test --conn-id {conn_id} (no Test button in this UI): {' '.join(text.split())}")
        return ("success" if out.returncode == 0 else "error"), text
    open_connections(ui)
    for old in ui.d.find_elements("css selector", "[data-scope='toast'][data-part='close-trigger']"):
        with contextlib.suppress(Exception):
            old.click()
    ui.click(row_button(ui, conn_id, "Test Connection"))
    toast = ui.wait(
        lambda: ui.d.find_elements("css selector", "[data-scope='toast'][data-part='root']"), "the Test result", 120
    )[0]
    time.sleep(1.2)  # let it finish sliding in before the screenshot
    kind, text = toast.get_attribute("data-type") or "", toast.text
    ui.shot(shot, full=False)
    say(f"Test of {conn_id}: {kind}: {' '.join(text.split())}")
    return kind, text


def check_readable(text: str, *secrets: str) -> None:
    description = text.split("\n", 1)[-1]
    check(not re.match(r"\w*(Error|Exception)\b", description), f"the message starts with a class name: {text}")
    check("Connection '" not in text, f"the message names the temporary connection id: {text}")
    for secret in secrets:
        check(secret not in text, "a secret is shown in the Test result")


def edit_shows_masked_key(ui: Ui, conn_id: str, kid: str) -> None:
    open_connections(ui)
    ui.click(row_button(ui, conn_id, "Edit Connection"))
    expand(ui, EXTRA)
    shown = values_shown(ui, (*NON_SECRET, "element_private_key"))
    check(
        shown.get("element_private_key") == "***", f"the saved key is not masked: {shown.get('element_private_key')!r}"
    )
    masked = [k for k, v in shown.items() if v == "***" and k != "element_private_key"]
    check(not masked, f"non-secret fields show *** when editing: {masked}")
    check(shown.get("element_kid") == kid, "the kid is not shown as saved")
    ui.shot("edit-saved-key-masked")
    ui.click(ui.wait(lambda: ui.css("button[aria-label='Close']"), "the dialog's close button")[0])


def run_steps(ui: Ui, sandbox: Any, api: Any) -> None:
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks
    from airflow_provider_smart.testing.airflow_server import ui_sends_port_zero_bug

    key = generate_private_key("ES384")
    pem = private_key_to_pem(key)
    sandbox.register_client("ui-client", jwks=public_jwks(key, kid="ui-key", alg="ES384"), scopes="system/*.rs")
    ui.d.get(f"{ui.url}/auth/token/login?next={ui.url}/connections")
    open_connections(ui)

    say("1. a Backend Services connection, PEM pasted into the form")
    add_connection(
        ui,
        "smart_ui",
        host=sandbox.url,
        login="ui-client",
        port=sandbox.port,
        extra={"private_key": pem, "kid": "ui-key"},
        shots=True,
    )
    edit_shows_masked_key(ui, "smart_ui", "ui-key")
    kind, text = press_test(ui, "smart_ui", "test-backend-services-green", api)
    check(
        kind == "success" and "Connected: the server issued an access token for scope system/*.rs" in text,
        f"Test was not green: {kind}: {text}",
    )
    check_readable(text, pem)

    say("2. a key the server does not know")
    wrong = private_key_to_pem(generate_private_key("ES384"))
    add_connection(
        ui,
        "smart_ui_wrong_key",
        host=sandbox.url,
        login="ui-client",
        port=sandbox.port,
        extra={"private_key": wrong, "kid": "ui-key"},
    )
    kind, text = press_test(ui, "smart_ui_wrong_key", "test-wrong-key-red", api)
    check(
        kind == "error" and "invalid_client" in text and "check the client id" in text.lower(),
        f"Test of a wrong key was not a readable red: {kind}: {text}",
    )
    check_readable(text, wrong)

    say("3. the same connection without a port")
    add_connection(
        ui,
        "smart_ui_no_port",
        host=sandbox.url,
        login="ui-client",
        port=None,
        extra={"private_key": pem, "kid": "ui-key"},
    )
    kind, text = press_test(ui, "smart_ui_no_port", "test-without-port", api)
    if ui_sends_port_zero_bug():  # Airflow 3.3.1/3.3.2: the API refuses before our hook runs
        check(kind == "error" and "Bad Request" in text, f"expected Airflow's Bad Request: {kind}: {text}")
        out = api.run("airflow-smart", "test", "--conn-id", "smart_ui_no_port")
        check(out.returncode == 0 and "OK: Connected:" in out.stdout, f"airflow-smart test failed: {out.stderr}")
        say("   the documented alternative, airflow-smart test --conn-id smart_ui_no_port: OK")
    else:
        check(kind == "success", f"Test without a port was not green: {kind}: {text}")

    say("4. a refresh-token connection made in the form")
    refresh_token = sandbox.launch_refresh_token("ui-launch-app", LAUNCH_SCOPE)
    add_connection(
        ui,
        "smart_ui_refresh",
        host=sandbox.url,
        login="ui-launch-app",
        port=sandbox.port,
        extra={},
        refresh={"refresh_token": refresh_token},
        auth_method="refresh_token",
    )
    before = sandbox.refresh_requests
    kind, text = press_test(ui, "smart_ui_refresh", "test-refresh-token-not-spent", api)
    check(
        kind == "success" and "was not refreshed" in text and "has not been used yet" in text,
        f"Test of the refresh-token connection: {kind}: {text}",
    )
    check_readable(text, refresh_token)
    check(sandbox.refresh_requests == before, "Test spent the refresh token")
    sandbox.token_lifetime = 1  # every run below finds its stored access token expired and refreshes
    env = {"SMART_TEST_CONN_ID": "smart_ui_refresh", "SMART_TEST_REQUIRED_SCOPES": "user/Patient.rs"}
    for run in (1, 2):
        out = api.run("airflow", "dags", "test", "smart_token_check", extra_env=env)
        check(out.returncode == 0, f"the DAG run {run} failed:\n{(out.stdout + out.stderr)[-3000:]}")
        check(sandbox.refresh_requests == before + run, "the DAG run did not refresh through the connection")
        say(f"   DAG run {run} refreshed the token through smart_ui_refresh")
        kind, text = press_test(ui, "smart_ui_refresh", f"test-refresh-token-after-run-{run}", api)
        check(kind == "success" and "rotated from the one in the connection" in text, f"Test after run: {text}")
    failed = [e for e in sandbox.token_log if e.get("grant_type") == "refresh_token" and not e.get("ok")]
    check(not failed, f"a refresh failed (a burnt token?): {failed}")


def run_check(
    start_airflow: Callable[[Path], contextlib.AbstractContextManager[Any]],
    steps: Callable[[Ui, Any, Any], None],
    server_log: str,
) -> int:
    """The sandbox, an Airflow (``start_airflow(home)``, with a ``url``) and Chromium; then ``steps``.

    On failure: the page's source beside the screenshots and the tail of the Airflow's ``server_log``."""
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    ensure_chromium()
    ensure_selenium()
    from airflow_provider_smart.testing import SmartSandbox

    work = Path(tempfile.mkdtemp(prefix="smart-ui-check-"))
    failed = False
    try:
        with (
            SmartSandbox(patients=3) as sandbox,
            start_airflow(work / "airflow") as airflow,
            chrome(work / "chrome-profile") as driver,
        ):
            say(f"sandbox {sandbox.url}, Airflow {airflow.url}")
            ui = Ui(driver, airflow.url)
            try:
                steps(ui, sandbox, airflow)
            except BaseException:  # the page as it was, for finding what a locator missed
                (OUT / "failed-page.html").write_text(driver.page_source)
                raise
    except BaseException as exc:
        failed = True
        say(f"FAILED: {exc}")
        traceback.print_exc()
        log = work / "airflow" / server_log
        if log.exists():
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{'FAILED' if failed else 'passed'}; screenshots in {OUT.relative_to(REPO)}/: {', '.join(SHOTS)}")
    return 1 if failed else 0


def main() -> int:
    from airflow_provider_smart.testing.airflow_server import AirflowApiServer

    def api_server(home: Path) -> AirflowApiServer:
        return AirflowApiServer(home, env={"AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags")})

    return run_check(api_server, run_steps, "api-server.log")


if __name__ == "__main__":
    sys.exit(main())
