"""Run the test suite, or the demo from the built wheel, on each supported Airflow, each in its own venv.

    python scripts/compat.py test [--fast] [VERSION ...]   # make compat (all), CI (--fast, lowest and highest)
    python scripts/compat.py wheel [VERSION ...]           # CI: the demo against the wheel, not the source
    python scripts/compat.py ui [VERSION ...]              # the browser check on each version's own UI

VERSION is a minor with a pin file in compat/ (``compat/3.1.txt``): the exact Airflow release and the few
pins its constraints file makes (README, "Airflow versions"). Test venvs live in ``.venv-compat/<version>``
(the provider installed editable with its dev extra) and are reused while pyproject.toml and the pin file
are unchanged; wheel venvs (``.venv-wheel/<version>``) are made afresh each time from ``dist/*.whl``.
Logs go to ``build/compat/``. Exits non-zero if any version fails.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PINS = REPO / "compat"
LOGS = REPO / "build" / "compat"
UV = Path(sys.executable).parent / "uv"
SUPPORTED = sorted((p.stem for p in PINS.glob("*.txt")), key=lambda v: tuple(int(x) for x in v.split(".")))


def sh(args: list[str | Path], log: Path | None = None, cwd: Path = REPO) -> int:
    with log.open("a") if log else open("/dev/null", "w") as out:
        return subprocess.run([str(a) for a in args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode


def fresh_venv(path: Path) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    if not (path / "bin" / "python").exists():
        subprocess.run([base, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def test_venv(version: str) -> Path:
    venv = REPO / ".venv-compat" / version
    python = fresh_venv(venv)
    pins = PINS / f"{version}.txt"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + pins.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.run(
            [UV, "pip", "install", "--quiet", "--python", python, "-e", ".[dev]", "-r", pins], cwd=REPO, check=True
        )
        stamp.write_text(digest)
    return python


def airflow_version(python: Path) -> str:
    return subprocess.run(
        [python, "-c", "import airflow; print(airflow.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_tests(versions: list[str], fast: bool, pytest_args: list[str]) -> int:
    rows, failed = [], False
    for version in versions:
        started = time.monotonic()
        python = test_venv(version)
        log = LOGS / f"test-{version}.log"
        log.unlink(missing_ok=True)
        marker = ["-m", "not slow"] if fast else []
        code = sh([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *marker, *pytest_args], log)
        summary = log.read_text().strip().splitlines()[-1] if log.exists() else "no output"
        rows.append((airflow_version(python), summary.strip("= "), time.monotonic() - started))
        failed |= code != 0
        print(f"Airflow {rows[-1][0]}: {rows[-1][1]} ({rows[-1][2]:.0f} s; log {log.relative_to(REPO)})", flush=True)
    print("\nAirflow   result" + (" (fast suite)" if fast else ""))
    for airflow, summary, _ in rows:
        print(f"{airflow:<9} {summary}")
    return 1 if failed else 0


def build_wheel() -> Path:
    shutil.rmtree(REPO / "dist", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "build", "--outdir", "dist", str(REPO)], check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, (REPO / "dist").iterdir())], check=True
    )
    return next((REPO / "dist").glob("*.whl"))


def run_wheel_demo(versions: list[str]) -> int:
    wheel = build_wheel()
    failed = False
    for version in versions:
        venv = REPO / ".venv-wheel" / version
        shutil.rmtree(venv, ignore_errors=True)
        python = fresh_venv(venv)
        log = LOGS / f"wheel-{version}.log"
        log.unlink(missing_ok=True)
        started = time.monotonic()
        code = sh([UV, "pip", "install", "--python", python, wheel, "-r", PINS / f"{version}.txt"], log)
        # Run from outside the checkout: the package must come from the wheel, not the source tree.
        code = code or sh([python, "-c", WHERE_FROM], log, cwd=venv)
        code = code or sh([python, REPO / "scripts" / "demo.py"], log, cwd=venv)
        text = log.read_text()
        result = "demo OK" if code == 0 and "=== Done" in text else f"FAILED (log {log.relative_to(REPO)})"
        print(f"Airflow {airflow_version(python)} from {wheel.name}: {result} ({time.monotonic() - started:.0f} s)")
        failed |= code != 0
        if code == 0:
            shutil.rmtree(venv)  # about 400 MB each
    return 1 if failed else 0


def run_ui_checks(versions: list[str]) -> int:
    """``scripts/ui_check.py`` in each version's test venv (``ui_check_airflow2.py`` for 2.x's Flask UI)."""
    rows, failed = [], False
    for version in versions:
        started = time.monotonic()
        python = test_venv(version)
        script = "ui_check_airflow2.py" if version.startswith("2.") else "ui_check.py"
        log = LOGS / f"ui-{version}.log"
        log.unlink(missing_ok=True)
        code = sh([python, REPO / "scripts" / script], log)
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("ui-check: ")]
        result = (lines[-1] if lines else "no output").removeprefix("ui-check: ")
        rows.append(f"Airflow {airflow_version(python)}: {result} ({time.monotonic() - started:.0f} s)")
        print(rows[-1] if code == 0 else f"{rows[-1]}; log {log.relative_to(REPO)}", flush=True)
        failed |= code != 0
    return 1 if failed else 0


WHERE_FROM = (
    "import airflow_provider_smart as p, sys; print('airflow_provider_smart from', p.__file__);"
    "sys.exit('site-packages' not in p.__file__)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["test", "wheel", "ui"])
    parser.add_argument("versions", nargs="*", help=f"default: all ({', '.join(SUPPORTED)})")
    parser.add_argument("--fast", action="store_true", help="the fast suite (-m 'not slow')")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-x tests/airflow'")
    args = parser.parse_intermixed_args()
    versions = [{"lowest": SUPPORTED[0], "highest": SUPPORTED[-1]}.get(v, v) for v in args.versions] or SUPPORTED
    unknown = [v for v in versions if v not in SUPPORTED]
    if unknown:
        parser.error(f"no pin file for {unknown}; supported: {SUPPORTED}")
    LOGS.mkdir(parents=True, exist_ok=True)
    if args.what == "wheel":
        return run_wheel_demo(versions)
    if args.what == "ui":
        return run_ui_checks(versions)
    return run_tests(versions, args.fast, re.split(r"\s+", args.pytest_args.strip()) if args.pytest_args else [])


if __name__ == "__main__":
    sys.exit(main())
