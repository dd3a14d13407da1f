"""Run every benchmark of airflow-provider-smart side by side and print one report (``make bench``).

    .venv/bin/python benchmarks/run_all.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes, one repetition: a smoke run (< 60 s)
    .venv/bin/python benchmarks/run_all.py --only download,import

Offline: every server is a local sandbox on 127.0.0.1. Temporary data lives in ``benchmarks/.work/``
and is deleted at the end, except ``results.json`` (every number, machine-readable) and ``report.txt``
(the printed report). Figures are reported as ratios measured in the same run; absolute numbers are
printed for context only. See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import MB, REPO, WORK, Keys, log, median, table, verdict

FIGURES = ("download", "tokens", "polls", "import")
KEEP = {"results.json", "report.txt"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one repetition (a smoke run, < 60 s)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    parser.add_argument("--keep-work", action="store_true", help="leave benchmarks/.work/ in place (debugging)")
    args = parser.parse_args(argv)
    args.figures = FIGURES if not args.only else tuple(f.strip() for f in args.only.split(","))
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    return args


def environment(quick: bool) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": commit or "unknown",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- report sections -------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def section_download(d: dict[str, Any]) -> list[str]:
    rows, big = d["rows"], d["exports"]["big"]
    out = [
        "FIGURE 1 - download throughput vs curl",
        f"  export: {big['bytes'] / MB:.1f} MB in {big['files']} files, served by a separate sandbox process; "
        f"{d['concurrency']} concurrent downloads; median of {d['reps']} run(s) after a warm-up pass; "
        "every download verified (sizes; line counts once)",
        f"  curl: {d['curl']}",
    ]
    if d["curl_skipped"]:
        out.append(f"  NOTE: {d['curl_skipped']}")
    ref = rows.get("curl_par")
    order = ["curl_seq", "curl_par", "ours", "ours_check", "ours_c1", "ours_gzip", "curl_par_gzip"]
    body = [
        [
            r["label"],
            r["wall_s"],
            r["mb_per_s"],
            _ratio(r["mb_per_s"], ref["mb_per_s"]) if ref else None,
            r["client_cpu_s_per_gb"],
            r["peak_rss_mb"],
            r["server_cpu_s"],
        ]
        for r in (rows[k] for k in order if k in rows)
    ]
    out.append(
        table(["variant", "wall s", "MB/s", "x curl -P4", "client CPU s/GB", "peak RSS MB", "server CPU s"], body)
    )
    out.append(
        "  ours: wall and CPU of the download() call, measured inside the child process; curl: the whole xargs + curl\n"
        "  process tree. MB = 10^6 bytes of NDJSON as written to disk (decoded, also for gzip)."
    )
    ours, checked, gzip = rows["ours"], rows["ours_check"], rows["ours_gzip"]
    ratios: list[list[Any]] = []
    if ref:
        r = _ratio(ours["mb_per_s"], ref["mb_per_s"])
        r2 = _ratio(checked["mb_per_s"], ref["mb_per_s"])
        ratios += [
            ["ours (defaults) / parallel curl, throughput", r, ">= 0.80", verdict(r >= 0.8)],
            ["ours (check_resource_types=True) / parallel curl, throughput", r2, "", ""],
            [
                "ours incl. interpreter start-up and imports / parallel curl",
                _ratio(ours["bytes"] / MB / ours["process_wall_s"], ref["mb_per_s"]),
                "",
                "",
            ],
            [
                "ours / parallel curl, client CPU per GB",
                _ratio(ours["client_cpu_s_per_gb"], ref["client_cpu_s_per_gb"]),
                "",
                "",
            ],
        ]
        if "curl_par_gzip" in rows:
            g = _ratio(gzip["mb_per_s"], rows["curl_par_gzip"]["mb_per_s"])
            ratios.append(["ours gzip / curl --compressed -P4 gzip, throughput", g, "", ""])
    ratios += [
        ["ours: check_resource_types off / on, throughput", _ratio(ours["mb_per_s"], checked["mb_per_s"]), "", ""],
        ["ours: 4 threads / 1 thread, throughput", _ratio(ours["mb_per_s"], rows["ours_c1"]["mb_per_s"]), "", ""],
        [
            "ours: gzip on / off, throughput (loopback: bandwidth is free)",
            _ratio(gzip["mb_per_s"], ours["mb_per_s"]),
            "",
            "",
        ],
        [
            "ours: gzip on / off, client CPU per GB",
            _ratio(gzip["client_cpu_s_per_gb"], ours["client_cpu_s_per_gb"]),
            "",
            "",
        ],
    ]
    out.append(table(["ratio (same run)", "value", "target", ""], ratios, "lrrl"))
    if ref:
        speedup = _ratio(ref["mb_per_s"], rows["curl_seq"]["mb_per_s"])
        over_ours = _ratio(ref["mb_per_s"], ours["mb_per_s"])
        fair = speedup >= 1.15 or over_ours >= 1.15
        d["fairness"] = {"curl_par_over_seq": speedup, "curl_par_over_ours": over_ours, "ok": fair}
        out.append(
            f"  fairness (server not the bottleneck): parallel curl = {speedup:.2f} x sequential curl and "
            f"{over_ours:.2f} x ours -> {'OK' if fair else 'WARNING'}"
        )
        if not fair:
            out.append(
                "  WARNING: parallel curl is not clearly (>= 1.15 x) faster than sequential curl nor than our client:\n"
                "  the sandbox server, loopback or disk may be the ceiling, so 'ours / parallel curl' may flatter us."
            )
    return out


def section_rss(d: dict[str, Any]) -> list[str]:
    rows, exports = d["rows"], d["exports"]
    small, big = rows["ours_small"], rows["ours"]
    diff = big["peak_rss_mb"] - small["peak_rss_mb"]
    d["rss"] = {"small_mb": small["peak_rss_mb"], "big_mb": big["peak_rss_mb"], "diff_mb": diff, "ok": diff <= 20}

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        export = exports[name]
        hwm = median(run["vm_hwm_kb"] for run in r["runs"] if run.get("vm_hwm_kb")) / 1024
        label = f"{name} export ({export['bytes'] / MB:.0f} MB)"
        return [label, export["files"], r["rss_before_download_mb"], r["peak_rss_mb"], hwm]

    growth = exports["big"]["bytes"] / exports["small"]["bytes"]
    return [
        f"FIGURE 2 - client peak RSS as the export grows (separate child processes, {d['concurrency']} threads, "
        f"checks on, median of {d['reps']})",
        table(
            ["export", "files", "RSS before download MB", "peak RSS MB (wait4)", "VmHWM MB (cross-check)"],
            [row("small", small), row("big", big)],
        ),
        f"  growth: {diff:+.1f} MB for {growth:.1f} x the data (peak RSS big / small = "
        f"{_ratio(big['peak_rss_mb'], small['peak_rss_mb']):.2f}); target <= +20 MB: {verdict(diff <= 20)}",
    ]


def section_many(d: dict[str, Any]) -> list[str]:
    many, export = d["many"], d["exports"]["many"]
    base = many["many_c1"]
    body = [
        [
            r["label"],
            r["wall_s"],
            r["files_per_s"],
            r["mb_per_s"],
            _ratio(r["files_per_s"], base["files_per_s"]),
            r["client_cpu_s_per_gb"] * r["bytes"] / 1e9 / r["files"] * 1000,
            r["server_cpu_s"] / r["files"] * 1000,
            r["peak_rss_mb"],
        ]
        for r in many.values()
    ]
    ours4 = many["many_c4"]
    notes = []
    for key, what in (("many_curl_par", "curl xargs -P 4"), ("many_curl_multi", "curl --parallel (one process)")):
        if key in many:
            ratio = _ratio(ours4["files_per_s"], many[key]["files_per_s"])
            notes.append(f"  ours 4 threads / {what}, files/s: {ratio:.2f}")
    return [
        f"EXTRA - many small files: {export['files']} files of ~{export['bytes'] / export['files'] / 1e3:.0f} kB "
        f"({export['bytes'] / MB:.1f} MB), median of {d['reps']} run(s)",
        table(
            [
                "variant",
                "wall s",
                "files/s",
                "MB/s",
                "x ours 1 thread",
                "client CPU ms/file",
                "server CPU ms/file",
                "peak RSS MB",
            ],
            body,
        ),
        *notes,
    ]


def section_tokens(t: dict[str, Any]) -> list[str]:
    s = t["settings"]
    return [
        "FIGURE 3 - token requests during a long export (in-process sandbox)",
        f"  token lifetime {s['token_lifetime']} s, client expiry_skew {s['expiry_skew']:.0f} s -> a token lasts "
        f"{t['effective_lifetime_s']:.0f} s; export: {s['polls']} x 202 (Retry-After 1),\n"
        f"  then {t['files']} files each delayed {s['file_delay']} s by the server, {s['concurrency']} at a time",
        table(
            ["measure", "value"],
            [
                ["duration (kick-off to last file), s", t["duration_s"]],
                ["  of which waiting for the export, s", t["wait_s"]],
                ["token requests observed", t["token_requests"]],
                ["bound ceil(duration / (lifetime - skew)) + 1", t["bound"]],
                ["HTTP requests to the FHIR server (not the token endpoint)", t["http_requests"]],
                ["  of which carrying the token", t["http_requests_with_token"]],
                ["  of which answered 401", t["http_401"]],
                ["token requests per authenticated HTTP request", t["token_requests"] / t["http_requests_with_token"]],
            ],
            "lr",
        ),
        f"  observed <= bound and far fewer than one per request: {verdict(t['ok'])}",
    ]


def section_polls(rows: list[dict[str, Any]]) -> list[str]:
    body = [
        [r["settings"]["retry_after"], r["settings"]["polls"], r["wait_s"], r["polls"], r["bound"], verdict(r["ok"])]
        for r in rows
    ]
    return [
        "FIGURE 4 - status polls per export (client.wait, Retry-After honoured)",
        table(["Retry-After s", "202 answers", "wait s", "polls", "bound wait/RA + 2", ""], body, "rrrrrl"),
    ]


def section_import(i: dict[str, Any]) -> list[str]:
    out = [
        f"FIGURE 5 - import time of airflow_provider_smart.operators.bulk_export (median of {i['runs']} fresh "
        "interpreters)",
        table(
            ["step", "ms", "% of import airflow.sdk"],
            [
                ["import airflow.sdk", i["sdk_ms"], 100.0],
                [
                    "+ Airflow names the module imports (compat BaseOperator, BaseHook, conf)",
                    i["compat_ms"],
                    100 * i["compat_ms"] / i["sdk_ms"],
                ],
                [
                    "+ the module itself (and the airflow_provider_smart modules it pulls)",
                    i["own_ms"],
                    100 * i["own_ms"] / i["sdk_ms"],
                ],
                ["= increment of the module over airflow.sdk", i["increment_ms"], 100 * i["ratio"]],
            ],
        ),
        f"  ratio increment / import airflow.sdk = {i['ratio']:.4f} ({i['ratio'] * 100:.2f} %); modules newly "
        f"loaded by the module itself: {len(i['new_modules_own'])} ({', '.join(i['new_modules_own'])})",
        table(["heavy module", "state"], [[k, v] for k, v in i["heavy"].items()], "ll"),
        f"  none of the heavy modules newly imported: {verdict(i['ok'])}",
    ]
    if i["slowest"]:
        out.append("  slowest imports triggered by the module (python -X importtime, one run):")
        out.append(
            table(
                ["module", "self ms", "cumulative ms"],
                [[r["module"], r["self_ms"], r["cumulative_ms"]] for r in i["slowest"]],
            )
        )
    return out


# -- main ------------------------------------------------------------------------------------------


def cleanup(keep_work: bool) -> None:
    if keep_work or not WORK.exists():
        return
    for path in WORK.iterdir():
        if path.name in KEEP:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    results: dict[str, Any] = {"environment": environment(args.quick)}
    errors: dict[str, str] = {}
    sections: list[list[str]] = []
    try:
        keys = Keys.create(WORK / "keys")
        if "download" in args.figures:
            _run(results, errors, "download", lambda: _download(keys, args.quick))
        if "tokens" in args.figures:
            _run(results, errors, "tokens", lambda: _tokens(keys, args.quick))
        if "polls" in args.figures:
            _run(results, errors, "polls", lambda: _polls(keys, args.quick))
        if "import" in args.figures:
            _run(results, errors, "import", lambda: _import(args.quick))

        env = results["environment"]
        header = (
            f"airflow-provider-smart benchmarks ({env['mode']} run) - commit {env['commit']}, Python {env['python']}, "
            f"{env['cpus']} CPUs, {env['platform']}"
        )
        renderers = [
            ("download", section_download),
            ("download", section_rss),
            ("tokens", section_tokens),
            ("polls", section_polls),
            ("import", section_import),
            ("download", section_many),
        ]
        for name, render in renderers:
            if name in results:
                try:
                    sections.append(render(results[name]))
                except Exception:
                    errors[f"report:{render.__name__}"] = traceback.format_exc()
        elapsed = time.monotonic() - started
        results["environment"]["seconds"] = elapsed
        results["errors"] = errors
        lines = [header, "=" * min(len(header), 110), ""]
        for section in sections:
            lines += [*section, ""]
        for name, error in errors.items():
            lines += [f"ERROR in {name}:", error]
        lines.append(f"total benchmark time: {elapsed:.0f} s; results: {WORK / 'results.json'}")
        report = "\n".join(lines)
        print(report, flush=True)
        (WORK / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (WORK / "report.txt").write_text(report + "\n")
    finally:
        cleanup(args.keep_work)
    return 1 if errors else 0


def _run(results: dict[str, Any], errors: dict[str, str], name: str, func: Any) -> None:
    t0 = time.monotonic()
    log(f"== {name}")
    try:
        results[name] = func()
    except Exception:
        errors[name] = traceback.format_exc()
        log(f"{name} FAILED:\n{errors[name]}")
    log(f"== {name} done in {time.monotonic() - t0:.0f} s")


def _download(keys: Keys, quick: bool) -> dict[str, Any]:
    from fig_download import FULL, QUICK, run_download_figures

    return run_download_figures(keys, QUICK if quick else FULL)


def _tokens(keys: Keys, quick: bool) -> dict[str, Any]:
    from fig_protocol import TOKEN_FULL, TOKEN_QUICK, run_token_figure

    return run_token_figure(keys, TOKEN_QUICK if quick else TOKEN_FULL)


def _polls(keys: Keys, quick: bool) -> list[dict[str, Any]]:
    from fig_protocol import POLL_FULL, POLL_QUICK, run_poll_figure

    return run_poll_figure(keys, POLL_QUICK if quick else POLL_FULL)


def _import(quick: bool) -> dict[str, Any]:
    from fig_import import run_import_figure

    return run_import_figure(runs=2 if quick else 5, importtime=not quick)


if __name__ == "__main__":
    sys.exit(main())
