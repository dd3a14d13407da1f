"""Figures 1 and 2 (download throughput vs curl; peak RSS as the export grows) and the many-small-files
extra. Every server is a separate sandbox process; every client run is a separate, measured process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    CLIENT_ID,
    KID,
    MB,
    PY,
    SCOPE,
    WORK,
    Export,
    Keys,
    Measured,
    ServerProcess,
    count_lines,
    dir_sizes,
    finish_export,
    fresh_dir,
    log,
    median,
    run_measured,
    start_export,
)

CONCURRENCY = 4  # the client's default max_concurrent_downloads, and xargs -P for curl


@dataclass
class Sizes:
    """Export sizes. Observation lines are ~675 bytes; Patient/Condition/Encounter add ~2.8 kB per patient."""

    patients: int  # the big export (figure 1, and the big side of figure 2)
    obs_per_patient: int
    per_file: int
    small_fraction: int  # figure 2's small export: 1/small_fraction of the patients
    many_files: int  # the many-small-files extra: this many Observation files of ~50 kB
    reps: int
    static_reps: int  # figure 1 (nginx): interleaved repetitions of every variant


FULL = Sizes(
    patients=2400, obs_per_patient=300, per_file=20000, small_fraction=10, many_files=200, reps=3, static_reps=9
)
QUICK = Sizes(patients=160, obs_per_patient=300, per_file=2000, small_fraction=10, many_files=40, reps=1, static_reps=2)
SMALL_FILE_LINES = 75  # ~50 kB Observation files


@dataclass
class Variant:
    key: str
    label: str
    run: Callable[[Path], Measured]
    export: Export


def curl_available() -> tuple[str | None, str]:
    """(path to curl, why not) — the comparison needs ``-H @file`` and ``--output-dir`` (curl >= 7.73)."""
    import subprocess

    curl, xargs = shutil.which("curl") or "/usr/bin/curl", shutil.which("xargs")
    if not Path(curl).exists():
        return None, "curl is not installed: the curl comparison is skipped"
    if xargs is None:
        return None, "xargs is not installed: the curl comparison is skipped"
    try:
        first = subprocess.run([curl, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        major, minor = (int(x) for x in first[1].split(".")[:2])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None, "curl --version could not be read: the curl comparison is skipped"
    if (major, minor) < (7, 73):
        return None, f"curl {first[1]} is older than 7.73 (no --output-dir): the curl comparison is skipped"
    return curl, ""


def curl_version(curl: str | None) -> str:
    import subprocess

    if curl is None:
        return "none"
    return subprocess.run([curl, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]


# -- the runners -----------------------------------------------------------------------------------


def curl_runner(export: Export, curl: str, parallel: int, *, compressed: bool = False) -> Callable[[Path], Measured]:
    """``xargs -P parallel -n 1 curl ... -O URL``: one curl process per file, as a shell script would."""
    tag = f"{export.server.name}-{parallel}-{int(compressed)}"
    urls = WORK / f"urls-{tag}.txt"
    urls.write_text("\n".join(export.urls) + "\n")
    header = WORK / f"curl-header-{export.server.name}.txt"
    header.write_text(f"Authorization: Bearer {export.token}\n")
    header.chmod(0o600)

    def run(dest: Path) -> Measured:
        argv = ["xargs", "-P", str(parallel), "-n", "1", "-a", str(urls), curl, "-sS", "--fail"]
        argv += ["-H", f"@{header}", "--output-dir", str(dest), "-O"]
        if compressed:
            argv.insert(argv.index("-O"), "--compressed")
        m = run_measured(argv, timeout=600, server=export.server)
        m.extra = {"bytes": sum(dir_sizes(dest).values()), "files": len(dir_sizes(dest))}
        return m

    return run


def curl_multi_runner(export: Export, curl: str, parallel: int) -> Callable[[Path], Measured]:
    """One curl process for every file, ``--parallel --parallel-max N``: connections reused, no per-file spawn."""
    config = WORK / f"curl-{export.server.name}-multi.cfg"
    config.write_text("".join(f'url = "{url}"\n' for url in export.urls))
    header = WORK / f"curl-header-{export.server.name}.txt"
    header.write_text(f"Authorization: Bearer {export.token}\n")
    header.chmod(0o600)

    def run(dest: Path) -> Measured:
        argv = [curl, "-sS", "--fail", "--parallel", "--parallel-max", str(parallel), "-H", f"@{header}"]
        argv += ["--output-dir", str(dest), "--remote-name-all", "-K", str(config)]
        m = run_measured(argv, timeout=600, server=export.server)
        m.extra = {"bytes": sum(dir_sizes(dest).values()), "files": len(dir_sizes(dest))}
        return m

    return run


def ours_runner(
    export: Export, keys: Keys, *, concurrency: int = CONCURRENCY, check_resource_types: bool = False
) -> Callable[[Path], Measured]:
    def run(dest: Path) -> Measured:
        spec = {
            "fhir_url": export.server.url,
            "token_url": export.token_url,
            "client_id": CLIENT_ID,
            "kid": KID,
            "scope": SCOPE,
            "key_path": str(keys.pem_path),
            "manifest": export.manifest.to_dict(),
            "status_url": export.status_url,
            "destination": str(dest),
            "concurrency": concurrency,
            "check_resource_types": check_resource_types,
        }
        spec_path, result_path = WORK / "child-spec.json", WORK / "child-result.json"
        spec_path.write_text(json.dumps(spec))
        result_path.unlink(missing_ok=True)
        argv = [PY, str(BENCH_DIR / "child_download.py"), str(spec_path), str(result_path)]
        m = run_measured(argv, timeout=600, server=export.server)
        inner = json.loads(result_path.read_text())
        # The process as a whole (wait4) vs the download() call alone (measured inside the child).
        m.extra = {**inner, "process_wall": m.wall, "process_cpu": m.cpu}
        return m

    return run


def verify(dest: Path, export: Export, *, lines: bool = False) -> None:
    """Every file is there with the server's exact size (and, once, the manifest's line count)."""
    got, want = dir_sizes(dest), export.sizes()
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        wrong = sorted(n for n in want if n in got and got[n] != want[n])[:5]
        raise RuntimeError(f"download into {dest} differs from the server: missing {missing}, wrong size {wrong}")
    if lines:
        counts = export.names()
        bad = [n for n in counts if counts[n] is not None and count_lines(dest / n) != counts[n]]
        if bad:
            raise RuntimeError(f"line counts differ from the manifest for {bad[:5]}")


def measure(variants: list[Variant], reps: int) -> dict[str, list[Measured]]:
    """Run every variant ``reps`` times, round-robin (so drift hits all alike), verifying each download."""
    runs: dict[str, list[Measured]] = {v.key: [] for v in variants}
    for rep in range(reps):
        for v in variants:
            dest = fresh_dir(WORK / "dl" / v.key)
            m = v.run(dest)
            verify(dest, v.export, lines=rep == 0)
            shutil.rmtree(dest)
            runs[v.key].append(m)
            mbps = v.export.total_bytes / MB / _download_wall(m)
            log(f"  {v.label} (rep {rep + 1}/{reps}): {_download_wall(m):.2f} s, {mbps:.0f} MB/s")
    return runs


def _download_wall(m: Measured) -> float:
    return float(m.extra.get("wall", m.wall))


def _download_cpu(m: Measured) -> float:
    if "user" in m.extra:
        return float(m.extra["user"] + m.extra["sys"])
    return m.cpu


def summarise(v: Variant, runs: list[Measured]) -> dict[str, Any]:
    total = v.export.total_bytes
    wall = median(_download_wall(m) for m in runs)
    cpu = median(_download_cpu(m) for m in runs)
    row: dict[str, Any] = {
        "label": v.label,
        "bytes": total,
        "files": len(v.export.urls),
        "wall_s": wall,
        "mb_per_s": total / MB / wall,
        "files_per_s": len(v.export.urls) / wall,
        "client_cpu_s_per_gb": cpu / (total / 1e9),
        "peak_rss_mb": median(m.maxrss_kb for m in runs) / 1024,
        "server_cpu_s": median(m.server_cpu for m in runs),
        "runs": [
            {
                "wall": m.wall,
                "user": m.user,
                "sys": m.sys,
                "maxrss_kb": m.maxrss_kb,
                "server_cpu": m.server_cpu,
                **m.extra,
            }
            for m in runs
        ],
    }
    if runs and "process_wall" in runs[0].extra:
        row["process_wall_s"] = median(m.extra["process_wall"] for m in runs)
        row["process_cpu_s"] = median(m.extra["process_cpu"] for m in runs)
        row["rss_before_download_mb"] = median(m.extra["maxrss_kb_before"] for m in runs) / 1024
    return row


# -- the figures -----------------------------------------------------------------------------------


def run_download_figures(keys: Keys, sizes: Sizes) -> dict[str, Any]:
    curl, curl_skip = curl_available()
    if curl is None:
        log(curl_skip)
    common = {"patients": sizes.patients, "resources_per_patient": sizes.obs_per_patient}
    plain = ServerProcess("plain", keys, resources_per_file=sizes.per_file, gzip=False, **common)
    gz = ServerProcess("gzip", keys, resources_per_file=sizes.per_file, gzip=True, **common)
    many = ServerProcess(
        "many",
        keys,
        patients=sizes.many_files * SMALL_FILE_LINES // 300,
        resources_per_patient=300,
        resources_per_file=SMALL_FILE_LINES,
        gzip=False,
    )
    with plain, gz, many:
        log("generating the exports on three sandbox processes...")
        small_patients = [f"Patient/pat-{p:04d}" for p in range(1, sizes.patients // sizes.small_fraction + 1)]
        pending = [
            (plain, start_export(plain, keys)),
            (gz, start_export(gz, keys)),
            (many, start_export(many, keys, resource_types=["Observation"])),
            (plain, start_export(plain, keys, level="patient", patients=small_patients)),
        ]
        big, big_gz, many_export, small = (finish_export(server, s) for server, s in pending)
        for e in (big, big_gz, many_export, small):
            log(f"  export on {e.server.name}: {len(e.urls)} files, {e.total_bytes / MB:.1f} MB ({e.seconds:.1f} s)")

        # Warm the page cache (server data files) with one untimed, verified pass per export.
        log("warm-up pass (untimed)...")
        for e in (big, big_gz, small, many_export):
            dest = fresh_dir(WORK / "dl" / "warmup")
            ours_runner(e, keys)(dest)
            verify(dest, e, lines=True)
            shutil.rmtree(dest)

        # Figure 2 (and the sandbox row of figure 1's context): our client against the sandbox itself.
        variants: list[Variant] = [
            Variant("ours", f"ours, {CONCURRENCY} threads (defaults)", ours_runner(big, keys), big),
            Variant("ours_small", f"ours, {CONCURRENCY} threads, small export", ours_runner(small, keys), small),
        ]
        from fig_static import run_static_figure

        log("figure 1: nginx serving the big export (http, https; identity, gzip)...")
        static = run_static_figure(big, big_gz, curl, sizes.static_reps)
        log(f"figure 2: {len(variants)} variants x {sizes.reps} repetitions...")
        runs = measure(variants, sizes.reps)
        rows = {v.key: summarise(v, runs[v.key]) for v in variants}

        log("many small files: concurrency 1/4/8...")
        many_variants = [
            Variant(
                f"many_c{c}",
                f"ours, {c} thread{'s' if c > 1 else ''}",
                ours_runner(many_export, keys, concurrency=c),
                many_export,
            )
            for c in (1, 4, 8)
        ]
        if curl is not None:
            many_variants += [
                Variant(
                    "many_curl_par",
                    f"curl, parallel (xargs -P {CONCURRENCY}, a process per file)",
                    curl_runner(many_export, curl, CONCURRENCY),
                    many_export,
                ),
                Variant(
                    "many_curl_multi",
                    f"curl --parallel --parallel-max {CONCURRENCY} (one process)",
                    curl_multi_runner(many_export, curl, CONCURRENCY),
                    many_export,
                ),
            ]
        many_runs = measure(many_variants, sizes.reps)
        many_rows = {v.key: summarise(v, many_runs[v.key]) for v in many_variants}

    return {
        "curl": curl_version(curl),
        "curl_skipped": curl_skip or None,
        "concurrency": CONCURRENCY,
        "reps": sizes.reps,
        "exports": {
            name: {"files": len(e.urls), "bytes": e.total_bytes, "generation_s": e.seconds, **e.server.settings}
            for name, e in (("big", big), ("big_gzip", big_gz), ("small", small), ("many", many_export))
        },
        "rows": rows,
        "static": static,
        "many": many_rows,
    }
