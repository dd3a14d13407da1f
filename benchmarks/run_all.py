"""Run every benchmark of airflow-provider-smart side by side and print one report (``make bench``).

    .venv/bin/python benchmarks/run_all.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes, one repetition: a smoke run (< 60 s)
    .venv/bin/python benchmarks/run_all.py --only download,import
    .venv/bin/python benchmarks/run_all.py --only triggerer   # figure 8 alone (about 4 minutes)

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

FIGURES = ("download", "tokens", "polls", "triggerer", "import", "views", "merge")
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


def _paired(a: dict[str, Any], b: dict[str, Any], key: str = "mb_per_s_runs") -> tuple[float, float, float]:
    """Median, min and max of the per-repetition ratios a/b (repetitions are interleaved, so pairs are fair)."""
    ratios = [x / y for x, y in zip(a[key], b[key], strict=False) if y]
    if not ratios:
        return float("nan"), float("nan"), float("nan")
    return median(ratios), min(ratios), max(ratios)


def _range(value: float, low: float, high: float) -> str:
    return f"{value:.2f} ({low:.2f}-{high:.2f})"


def section_download(d: dict[str, Any]) -> list[str]:
    s = d.get("static") or {}
    if "rows" not in s:
        return ["FIGURE 1 - download throughput vs curl against nginx", f"  SKIPPED: {s.get('skipped', 'no data')}"]
    rows, export = s["rows"], s["export"]
    c = s["concurrency"]
    out = [
        "FIGURE 1 - download throughput vs curl, against nginx (static files, page cache, 127.0.0.1)",
        f"  export: {export['bytes'] / MB:.1f} MB of NDJSON in {export['files']} files (gzip twin: "
        f"{export['gzip_bytes'] / MB:.1f} MB); nginx {s['nginx']} (sendfile, gzip_static, 2 workers);",
        f"  https: TLS with a CA generated for the run; {c} concurrent downloads; medians of {s['reps']} interleaved "
        "repetitions (min-max); every download verified (file sizes)",
        f"  curl: {d['curl']}",
    ]
    body = []
    for key, r in rows.items():
        scheme = r["scheme"]
        ref_key = f"{scheme}_curl_par_gzip" if r["encoding"] == "gzip" else f"{scheme}_curl_par"
        ref = rows.get(ref_key)
        ratio = _range(*_paired(r, ref)) if ref else "-"
        cpu_ratio = _ratio(r["client_cpu_s_per_gb"], ref["client_cpu_s_per_gb"]) if ref else None
        body.append(
            [
                r["label"],
                _range(r["mb_per_s"], r["mb_per_s_min"], r["mb_per_s_max"]),
                ratio,
                r["client_cpu_s_per_gb"],
                cpu_ratio,
                r["peak_rss_mb"],
                r["connections"],
                r["server_cpu_s_per_gb"],
            ]
        )
        del key
    out.append(
        table(
            [
                "variant",
                "MB/s median (min-max)",
                "x curl -P4 (same enc.)",
                "client CPU s/GB",
                "x curl CPU",
                "peak RSS MB",
                "conns",
                "server CPU s/GB",
            ],
            body,
        )
    )
    out.append(
        "  ours: wall and CPU of the download() call, measured inside the child; curl: the whole xargs + curl process\n"
        "  tree. 'x curl -P4': ratio to xargs -P4 curl of the same scheme and encoding, paired per repetition.\n"
        "  conns: TCP connections nginx saw (distinct $connection), the most in any repetition. MB = 10^6 bytes of\n"
        "  NDJSON as written (decoded, also for gzip); server CPU = nginx master + workers, from /proc."
    )
    checks: list[list[Any]] = []
    targets: dict[str, bool] = {}
    for scheme in ("http", "https"):
        ours, ref = rows.get(f"{scheme}_ours"), rows.get(f"{scheme}_curl_par")
        if ours and ref:
            tput = _paired(ours, ref)
            cpu = _ratio(ours["client_cpu_s_per_gb"], ref["client_cpu_s_per_gb"])
            targets[f"{scheme}_throughput"] = tput[0] >= 1.0
            targets[f"{scheme}_cpu"] = cpu <= 1.1
            checks += [
                [f"{scheme}: ours / xargs -P{c} curl, throughput (download() call)", _range(*tput), ">= 1.0",
                 verdict(tput[0] >= 1.0)],
                [f"{scheme}: ours / xargs -P{c} curl, client CPU per GB", cpu, "<= 1.1", verdict(cpu <= 1.1)],
                [f"{scheme}: ours whole process / xargs -P{c} curl, throughput",
                 _range(*_paired({"r": ours["process_mb_per_s_runs"]}, {"r": ref["mb_per_s_runs"]}, "r")), "", ""],
            ]  # fmt: skip
            multi = rows.get(f"{scheme}_curl_multi")
            if multi:
                checks.append(
                    [f"{scheme}: ours / curl --parallel-max {c}, throughput", _range(*_paired(ours, multi)), "", ""]
                )
        gz, gz_ref = rows.get(f"{scheme}_ours_gzip"), rows.get(f"{scheme}_curl_par_gzip")
        if gz and gz_ref:
            g = _paired(gz, gz_ref)
            targets[f"{scheme}_gzip"] = g[0] >= 0.9
            checks.append(
                [
                    f"{scheme}: ours gzip / curl --compressed -P{c}, throughput",
                    _range(*g),
                    ">= 0.9",
                    verdict(g[0] >= 0.9),
                ]
            )
            gcpu = _ratio(gz["client_cpu_s_per_gb"], gz_ref["client_cpu_s_per_gb"])
            checks.append([f"{scheme}: ours gzip / curl --compressed -P{c}, client CPU per GB", gcpu, "", ""])
        one = rows.get(f"{scheme}_ours_c1")
        if ours and one:
            t = _paired(ours, one)
            targets[f"{scheme}_threads"] = t[0] >= 1.0
            checks.append(
                [f"{scheme}: ours {c} threads / 1 thread, throughput", _range(*t), ">= 1.0", verdict(t[0] >= 1.0)]
            )
        if ours:
            ok = ours["connections"] <= c + 1
            targets[f"{scheme}_connections"] = ok
            checks.append([f"{scheme}: connections opened by ours for {export['files']} files", ours["connections"],
                           f"<= {c + 1}", verdict(ok)])  # fmt: skip
    out.append(table(["ratio (same run)", "value", "target", ""], checks, "lrrl"))
    seq, par = rows.get("http_curl_seq"), rows.get("http_curl_par")
    if seq and par:
        speedup = _ratio(par["mb_per_s"], seq["mb_per_s"])
        server = max(
            r["server_cpu_s_per_gb"] for r in rows.values() if r["scheme"] == "http" and r["encoding"] == "identity"
        )
        fair = speedup >= 1.15
        out.append(
            f"  server not the bottleneck: xargs -P{c} curl = {speedup:.2f} x sequential curl; nginx used at most "
            f"{server:.2f} CPU s/GB over http -> {'OK' if fair else 'WARNING'}"
        )
    s["targets"] = targets
    return out


def section_rss(d: dict[str, Any]) -> list[str]:
    rows, exports = d["rows"], d["exports"]
    small, big = rows["ours_small"], rows["ours"]
    sandbox = big["bytes"] / MB / big["wall_s"]
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
        f"  (the big export from the sandbox server: {sandbox:.0f} MB/s, its median over {d['reps']} runs)\n"
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


def section_triggerer(rows: list[dict[str, Any]]) -> list[str]:
    body = []
    for r in rows:
        c, t = r["case"], r["targets"]
        body.append(
            [
                c["triggers"],
                f"{c['latency']:g}/{c['retry_after']}/{c['duration']:g}",
                f"{r['polls']}/{c['triggers'] * r['ideal_polls']}",
                r["pace"],
                r["overshoot_s"],
                f"{r['worst_stall_ms']:.0f} (idle {r['idle_stall_ms']:.0f})",
                r["full_gc_ms"],
                r["peak_rss_mb"],
                r["kb_per_export"],
                r["most_threads"],
                r["server"]["token_requests"],
                r["server"]["early_polls"],
                verdict(all(t.values())),
            ]
        )
    return [
        "FIGURE 8 - triggerer capacity: N bulk-export triggers of one connection in one event loop, against a local "
        "async server",
        table(
            [
                "N",
                "L/R/end s",
                "polls / server pace",
                "pace",
                "overshoot s",
                "worst stall ms",
                "full GC ms",
                "peak RSS MB",
                "KB/export",
                "threads",
                "tokens",
                "early",
                "",
            ],
            body,
        ),
        "  targets: pace >= 0.95, overshoot <= 1 s, stall <= 100 ms (50 ms ticker), 1 token request, <= 200 MB RSS at\n"
        "  N = 1,000, no poll before the server's Retry-After. 'idle': the ticker alone just before (the machine's\n"
        "  noise); full GC: the longest generation-2 collection (Airflow's start-up heap frozen: benchmarks/README).",
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


def section_views(v: dict[str, Any]) -> list[str]:
    t, m = v["throughput"], v["memory"]
    body = [
        [name, r["rows"], r["engine_rows_per_s"], r["hand_rows_per_s"],
         _range(r["ratio"], r["ratio_min"], r["ratio_max"]), verdict(r["ratio"] >= 0.5)]
        for name, r in t["rows"].items()
    ]  # fmt: skip
    sizes = sorted(m.values(), key=lambda r: r["bytes"])
    growth = sizes[-1]["peak_rss_mb"] - sizes[0]["peak_rss_mb"]
    peak_ok = all(r["peak_rss_mb"] <= 512 for r in sizes)
    v["targets"] = {name: r["ratio"] >= 0.5 for name, r in t["rows"].items()} | {"rss": peak_ok}
    return [
        f"FIGURE 6 - SQL on FHIR views: engine vs hand-written DuckDB SQL ({t['threads']} thread(s), "
        f"{t['bytes'] / MB:.0f} MB of generated Observations, CPU time, median of {v['settings']['reps']})",
        table(["view", "rows", "engine rows/s", "hand-written rows/s", "ratio (min-max)", ">= 0.5"], body),
        table(
            ["export", "files", "rows", "peak RSS MB", "wall s"],
            [[f"{r['bytes'] / MB:.0f} MB", r["files"], r["rows"], r["peak_rss_mb"], r["wall_s"]] for r in sizes],
        ),
        f"  peak RSS <= 512 MB: {verdict(peak_ok)}; growth {growth:+.0f} MB for "
        f"{sizes[-1]['bytes'] / sizes[0]['bytes']:.1f} x the data",
    ]


def section_merge(m: dict[str, Any]) -> list[str]:
    rows = m["rows_by"]
    rewrite = rows.get("delta_rewrite", {}).get("median_s")
    labels = {
        "delta_merge": "Delta, ours (one MERGE transaction)",
        "delta_rewrite": "Delta, whole table rebuilt and overwritten",
        "parquet_version": "Parquet, ours (new version folder)",
        "duckdb_file": "DuckDB file, ours (DELETE + INSERT, file replaced)",
    }
    body = [
        [
            labels.get(name, name),
            r["median_s"],
            f"{min(r['seconds']):.2f}-{max(r['seconds']):.2f}",
            _ratio(r["median_s"], rewrite) if rewrite else "-",
            r["median_cpu_s"],
            r["max_peak_rss_mb"],
            verdict(r["ok"]),
        ]
        for name, r in rows.items()
    ]
    return [
        f"FIGURE 7 - incremental merge: a 1 % change set into a {m['rows']:,}-row table (median of {m['reps']}, "
        "interleaved, each on a fresh copy)",
        f"  change set: {m['changed']:,} resources replaced ({m['updated_rows']:,} updated rows, {m['deleted']:,} "
        "deleted), spread over the whole key range",
        table(
            ["variant", "commit s", "min-max", "x rebuild", "process CPU s", "peak RSS MB", "result"],
            body,
        ),
        "  commit s: the commit call inside the child; CPU and peak RSS: the whole child (interpreter and imports).",
    ]


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
        if "triggerer" in args.figures:
            _run(results, errors, "triggerer", lambda: _triggerer(keys, args.quick))
        if "import" in args.figures:
            _run(results, errors, "import", lambda: _import(args.quick))
        if "views" in args.figures:
            _run(results, errors, "views", lambda: _views(args.quick))
        if "merge" in args.figures:
            _run(results, errors, "merge", lambda: _merge(args.quick))

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
            ("triggerer", section_triggerer),
            ("import", section_import),
            ("views", section_views),
            ("merge", section_merge),
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


def _triggerer(keys: Keys, quick: bool) -> list[dict[str, Any]]:
    from fig_triggerer import TRIGGERER_FULL, TRIGGERER_QUICK, run_triggerer_figure

    return run_triggerer_figure(keys, TRIGGERER_QUICK if quick else TRIGGERER_FULL)


def _import(quick: bool) -> dict[str, Any]:
    from fig_import import run_import_figure

    return run_import_figure(runs=2 if quick else 5, importtime=not quick)


def _views(quick: bool) -> dict[str, Any]:
    from fig_views import FULL, QUICK, run_views_figure

    return run_views_figure(QUICK if quick else FULL)


def _merge(quick: bool) -> dict[str, Any]:
    from fig_merge import FULL, QUICK, run_merge_figure

    return run_merge_figure(QUICK if quick else FULL)


if __name__ == "__main__":
    sys.exit(main())
