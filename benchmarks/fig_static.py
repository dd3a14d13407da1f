"""Figure 1: download throughput against nginx (http and https, identity and gzip) vs curl.

nginx serves the sandbox's big export straight from its data directories (``sendfile``; ``gzip_static``
for the gzip twin), so the server costs next to nothing and every client measures itself. Every variant
is a separate measured process; repetitions are interleaved round-robin; connections are counted at the
server (nginx's ``$connection``), the server's CPU is read from ``/proc``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BENCH_DIR, MB, PY, WORK, Export, Measured, dir_sizes, fresh_dir, log, median, run_measured
from static_server import Nginx, ensure_nginx

CONCURRENCY = 4


@dataclass
class StaticExport:
    """An export as served by nginx: the sandbox manifest's files, at nginx URLs, no token needed."""

    scheme: str
    root: str
    source: Export
    nginx: Nginx

    @property
    def key(self) -> str:
        return f"{self.scheme}-{self.root}"

    @property
    def urls(self) -> list[str]:
        return [self.nginx.url(self.scheme, self.root, url.rsplit("/", 1)[-1]) for url in self.source.urls]

    @property
    def total_bytes(self) -> int:
        return self.source.total_bytes

    def manifest(self) -> dict[str, Any]:
        data = self.source.manifest.to_dict()
        moved = dict(zip(self.source.urls, self.urls, strict=True))
        for kind in ("output", "deleted", "error"):
            for entry in data.get(kind) or []:
                entry["url"] = moved[entry["url"]]
        data["requiresAccessToken"] = False
        return data


@dataclass
class Variant:
    key: str
    label: str
    export: StaticExport
    run: Callable[[Path], Measured]
    tool: str  # "ours" or "curl"


def curl_xargs(
    export: StaticExport, curl: str, parallel: int, *, compressed: bool = False
) -> Callable[[Path], Measured]:
    urls = WORK / f"urls-{export.key}.txt"
    urls.write_text("\n".join(export.urls) + "\n")

    def run(dest: Path) -> Measured:
        argv = ["xargs", "-P", str(parallel), "-n", "1", "-a", str(urls), curl, "-sS", "--fail"]
        argv += ["--cacert", str(export.nginx.ca_path), "--output-dir", str(dest), "-O"]
        if compressed:
            argv.insert(argv.index("-O"), "--compressed")
        return run_measured(argv, timeout=600, server=export.nginx)

    return run


def curl_parallel(
    export: StaticExport, curl: str, parallel: int, *, compressed: bool = False
) -> Callable[[Path], Measured]:
    config = WORK / f"curl-{export.key}.cfg"
    config.write_text("".join(f'url = "{url}"\n' for url in export.urls))

    def run(dest: Path) -> Measured:
        argv = [curl, "-sS", "--fail", "--parallel", "--parallel-max", str(parallel)]
        argv += ["--cacert", str(export.nginx.ca_path), "--output-dir", str(dest), "--remote-name-all"]
        if compressed:
            argv.append("--compressed")
        return run_measured([*argv, "-K", str(config)], timeout=600, server=export.nginx)

    return run


def ours(export: StaticExport, concurrency: int = CONCURRENCY) -> Callable[[Path], Measured]:
    def run(dest: Path) -> Measured:
        spec = {
            "fhir_url": f"{export.scheme}://127.0.0.1/fhir",
            "ca_path": str(export.nginx.ca_path),
            "manifest": export.manifest(),
            "status_url": None,
            "destination": str(dest),
            "concurrency": concurrency,
            "check_resource_types": False,
        }
        spec_path, result_path = WORK / "child-spec.json", WORK / "child-result.json"
        spec_path.write_text(json.dumps(spec))
        result_path.unlink(missing_ok=True)
        argv = [PY, str(BENCH_DIR / "child_download.py"), str(spec_path), str(result_path)]
        m = run_measured(argv, timeout=600, server=export.nginx)
        inner = json.loads(result_path.read_text())
        m.extra = {**inner, "process_wall": m.wall, "process_cpu": m.cpu}
        return m

    return run


def verify(dest: Path, export: StaticExport) -> None:
    got, want = dir_sizes(dest), export.source.sizes()
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        wrong = sorted(n for n in want if n in got and got[n] != want[n])[:5]
        raise RuntimeError(f"download into {dest} differs from the server: missing {missing}, wrong size {wrong}")


def _wall(m: Measured) -> float:
    return float(m.extra.get("wall", m.wall))


def _cpu(m: Measured) -> float:
    return float(m.extra["user"] + m.extra["sys"]) if "user" in m.extra else m.cpu


def measure(variants: list[Variant], reps: int) -> dict[str, list[Measured]]:
    runs: dict[str, list[Measured]] = {v.key: [] for v in variants}
    for rep in range(reps):
        for v in variants:
            dest = fresh_dir(WORK / "dl" / v.key)
            v.export.nginx.mark()
            m = v.run(dest)
            m.extra["connections"] = v.export.nginx.connections_since_mark()
            verify(dest, v.export)
            shutil.rmtree(dest)
            runs[v.key].append(m)
            mbps = v.export.total_bytes / MB / _wall(m)
            log(
                f"  {v.label} (rep {rep + 1}/{reps}): {_wall(m):.2f} s, {mbps:.0f} MB/s, {m.extra['connections']} conn."
            )
    return runs


def summarise(v: Variant, runs: list[Measured]) -> dict[str, Any]:
    total = v.export.total_bytes
    mbps = [total / MB / _wall(m) for m in runs]
    row: dict[str, Any] = {
        "label": v.label,
        "scheme": v.export.scheme,
        "encoding": "gzip" if v.export.root == "gzip" else "identity",
        "tool": v.tool,
        "bytes": total,
        "files": len(v.export.urls),
        "wall_s": median(_wall(m) for m in runs),
        "mb_per_s": median(mbps),
        "mb_per_s_min": min(mbps),
        "mb_per_s_max": max(mbps),
        "mb_per_s_runs": mbps,
        "client_cpu_s_per_gb": median(_cpu(m) for m in runs) / (total / 1e9),
        "client_cpu_s_per_gb_runs": [_cpu(m) / (total / 1e9) for m in runs],
        "peak_rss_mb": median(m.maxrss_kb for m in runs) / 1024,
        "connections": max(m.extra["connections"] for m in runs),
        "server_cpu_s_per_gb": median(m.server_cpu for m in runs) / (total / 1e9),
        "runs": [{"wall": m.wall, "user": m.user, "sys": m.sys, "maxrss_kb": m.maxrss_kb, **m.extra} for m in runs],
    }
    if runs and "process_wall" in runs[0].extra:
        process = [total / MB / m.extra["process_wall"] for m in runs]
        row["process_mb_per_s"] = median(process)
        row["process_mb_per_s_runs"] = process
        row["process_cpu_s_per_gb"] = median(m.extra["process_cpu"] for m in runs) / (total / 1e9)
    return row


def make_variants(exports: dict[tuple[str, str], StaticExport], curl: str | None) -> list[Variant]:
    c = CONCURRENCY
    variants: list[Variant] = []
    for s in ("http", "https"):
        plain, gz = exports[(s, "plain")], exports[(s, "gzip")]

        def add(key: str, label: str, export: StaticExport, run: Callable[[Path], Measured], tool: str) -> None:
            variants.append(Variant(f"{s}_{key}", f"{s}: {label}", export, run, tool))  # noqa: B023

        if curl is not None:
            if s == "http":
                add("curl_seq", "curl, sequential (xargs -P 1)", plain, curl_xargs(plain, curl, 1), "curl")
            add("curl_par", f"curl, xargs -P {c}", plain, curl_xargs(plain, curl, c), "curl")
            add("curl_multi", f"curl --parallel-max {c}", plain, curl_parallel(plain, curl, c), "curl")
        add("ours", f"ours, {c} threads", plain, ours(plain), "ours")
        add("ours_c1", "ours, 1 thread", plain, ours(plain, 1), "ours")
        add("ours_gzip", f"ours, {c} threads, gzip", gz, ours(gz), "ours")
        if curl is not None:
            label = f"curl --compressed, xargs -P {c}, gzip"
            add("curl_par_gzip", label, gz, curl_xargs(gz, curl, c, compressed=True), "curl")
            label = f"curl --compressed --parallel-max {c}, gzip"
            add("curl_multi_gzip", label, gz, curl_parallel(gz, curl, c, compressed=True), "curl")
    return variants


def run_static_figure(big: Export, big_gz: Export, curl: str | None, reps: int) -> dict[str, Any]:
    binary, why = ensure_nginx()
    if binary is None:
        log(f"figure 1 skipped: {why}")
        return {"skipped": why}
    roots = {"plain": big.server.job_dir(big.status_url), "gzip": big_gz.server.job_dir(big_gz.status_url)}
    with Nginx(binary, WORK / "nginx", roots) as nginx:
        exports = {
            (scheme, root): StaticExport(scheme, root, big if root == "plain" else big_gz, nginx)
            for scheme in ("http", "https")
            for root in ("plain", "gzip")
        }
        variants = make_variants(exports, curl)
        log("figure 1 (nginx): warm-up pass (untimed, verified)...")
        for scheme, root in (("http", "plain"), ("https", "gzip")):
            dest = fresh_dir(WORK / "dl" / "warmup")
            ours(exports[(scheme, root)])(dest)
            verify(dest, exports[(scheme, root)])
            shutil.rmtree(dest)
        log(f"figure 1 (nginx): {len(variants)} variants x {reps} interleaved repetitions...")
        runs = measure(variants, reps)
        rows = {v.key: summarise(v, runs[v.key]) for v in variants}
    return {
        "nginx": binary,
        "concurrency": CONCURRENCY,
        "reps": reps,
        "export": {"files": len(big.urls), "bytes": big.total_bytes, "gzip_bytes": _gz_bytes(roots["gzip"])},
        "rows": rows,
    }


def _gz_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.ndjson.gz"))
