"""``airflow-smart export``: the operator's workflow from the command line, its progress bar, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.bulk.progress import ProgressSnapshot
from airflow_provider_smart.cli import main
from airflow_provider_smart.cli_export import render


def export(*args: str) -> int:
    return main(["export", *args, "--poll-interval", "0.01"])


def test_export_lands_the_files_the_log_and_shows_progress(smart_conn, sandbox, tmp_path, capsys) -> None:
    dest = tmp_path / "out"
    assert export("--to", str(dest), "--type", "Patient,Observation") == 0
    out, err = capsys.readouterr()
    summary = json.loads((dest / "manifest.json").read_text())["summary"]
    files = [*summary["output"], *summary["deleted"], *summary["error"]]
    assert {e["type"] for e in summary["output"]} == {"Patient", "Observation"}
    assert sandbox.kickoffs[0]["params"]["_type"]  # the same kick-off the operator sends
    assert (dest / "log.ndjson").exists() and f"Landed in {dest}" in out and "Observation" in out
    assert "Kicked off the export" in err
    final = [line for line in err.splitlines() if line.startswith("Downloading [")][-1]
    assert f"{len(files)}/{len(files)} files" in final and "#" * 30 in final and "/s" in final
    assert sandbox.requests_log[-1]["method"] == "DELETE"  # freed on the server, as the operator does
    for token in sandbox.issued_tokens():
        assert token not in out + err

    assert export("--to", str(dest), "--type", "Patient,Observation") == 0
    assert "already landed" in capsys.readouterr().out and len(sandbox.kickoffs) == 1


def test_an_interrupted_export_is_resumed_by_the_same_command(smart_conn, sandbox, tmp_path, capsys) -> None:
    from airflow_provider_smart.bulk import ExportRequest, ExportWorkflow
    from airflow_provider_smart.hooks.smart import SmartHook

    dest = tmp_path / "out"
    request = ExportRequest(resource_types=["Patient"])
    ExportWorkflow(SmartHook().get_bulk_client(), dest, request.to_dict()).start(request)  # then the CLI "died"
    assert export("--to", str(dest), "--type", "Patient") == 0
    assert len(sandbox.kickoffs) == 1 and "Re-attached to the export" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["--type", "Pat-ient"], "--type"),
        (["--since", "yesterday"], "--since"),
        (["--until", "next week"], "--until"),
        (["--level", "group"], "--group-id"),
        (["--group-id", "g1"], "--group-id"),
        (["--type-filter", "category=lab"], "--type-filter"),
        (["--conn-id", "missing_conn"], "--conn-id"),
        (["--max-concurrent-downloads", "0"], "--max-concurrent-downloads"),
        (["--timeout", "nan"], "--timeout"),
        (["--level", "everything"], "--level"),
        (["--to", "nosuchscheme://bucket/x"], "--to"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument_and_exit_2(smart_conn, tmp_path, capsys, args, argument) -> None:
    argv = ["--to", str(tmp_path / "x"), *args] if "--to" not in args else args
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {argument}" in errors[0], err


def test_a_malformed_connection_names_the_field(smart_conn, tmp_path, capsys) -> None:
    smart_conn(raw={"conn_type": "smart", "host": "https://ehr.example/fhir", "login": "c1", "extra": {"kid": "k"}})
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--to", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --conn-id" in err and "private key" in err.lower()


def test_a_server_failure_is_one_line_and_exit_1(smart_conn, sandbox, tmp_path, capsys) -> None:
    sandbox.fail_next_export("the disk is full")
    assert export("--to", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "airflow-smart export: " in err and "the disk is full" in err


def test_the_bar_shows_files_bytes_rate_and_time() -> None:
    line = render(ProgressSnapshot(40, 10, 2, 2_500_000, 0, 5.0))
    assert line.startswith("Downloading [" + "#" * 7 + "-" * 23 + "] 10/40 files (2 already here)")
    assert "2.5 MB" in line and "500.0 KB/s" in line and "0:00:05" in line


def test_without_a_terminal_progress_comes_as_lines(tmp_path: Path) -> None:
    from airflow_provider_smart.bulk.progress import TransferProgress
    from airflow_provider_smart.cli_export import ProgressDisplay

    class Stream:
        text = ""

        def write(self, text: str) -> Any:
            self.text += text

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    stream = Stream()
    progress = TransferProgress()
    progress.start(2)
    with ProgressDisplay(stream).downloading(progress):  # type: ignore[arg-type]
        progress.add_bytes(10)
        progress.file_done()
    assert "\r" not in stream.text
    assert stream.text.splitlines()[-1].startswith("Downloading [") and "1/2 files" in stream.text
