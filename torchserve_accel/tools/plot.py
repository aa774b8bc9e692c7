"""PNG plots of served-performance results: throughput against p99 latency per configuration.

    torchserve-accel plot gpu_out/serve_results.json [--out-dir benchmarks/results] [--p99-bound-ms 100]
    torchserve-accel plot benchmarks/results/sweep/          # a folder of bench / sweep JSON
(``python scripts/plot_results.py ...`` runs the same)

Inputs are what ``bench``, ``sweep`` and scripts/gpu_serve_check.sh write (combined files, single runs, sweep
summaries, or folders of them). Writes, per model:
    <model>_throughput_vs_p99.png   every run as a point (items answered 200 per s, p99), sweep points joined
                                    per (batchSize, maxBatchDelay) in worker order, the p99 bound dashed
    <model>_sweep_workers.png       (when there is a sweep) items/s and p99 against workers
Items are images or texts: a run of several images per request is placed by its images/s, not its requests/s.
    <model>_gpu_busy.png            (when runs sampled a GPU) the first GPU's busy % over each run's window
Needs matplotlib (not on the GPU image: plot here, from the JSON the GPU run wrote).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.sweep import load_documents, point_summary


def _model_of(point: dict) -> str:
    model = point.get("model") or "model"
    # the baselines share ResNet-101's plots, the FP8 archive BERT-Large's
    for family in ("resnet101", "bert_large"):
        if model.startswith(family + "_"):
            return family
    return model


def _items(point: dict) -> float:
    """Images or texts answered 200 per second (requests/s times the items each request carried)."""
    return point.get("ok_items_per_s") or point["ok_rps"]


def _label(point: dict) -> str:
    per = point.get("items_per_request") or 1
    return f"{point.get('label')}" + (f" ({per}/req)" if per > 1 else "")


def _save(fig: Any, path: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)


def plot_model(model: str, points: list[dict], card: str | None, out_dir: Path,
               p99_bound_ms: float | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    swept = [p for p in points if p.get("sweep")]
    single = [p for p in points if not p.get("sweep")]
    fig, ax = plt.subplots(figsize=(9, 6))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in swept:
        groups[(p.get("batch_size"), p.get("max_batch_delay"))].append(p)
    for (batch, delay), members in sorted(groups.items(), key=lambda kv: tuple(v or 0 for v in kv[0])):
        members.sort(key=lambda p: p.get("workers") or 0)
        ax.plot([_items(p) for p in members], [p["p99_ms"] for p in members], marker="o",
                label=f"sweep: batch {batch}, delay {delay} ms")
        for p in members:
            ax.annotate(f"w{p.get('workers')}", (_items(p), p["p99_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    for p in single:
        baseline = "baseline" in (p.get("label") or "")
        ax.scatter([_items(p)], [p["p99_ms"]], marker="s" if baseline else "*", s=90 if baseline else 160,
                   zorder=3, label=_label(p))
    if p99_bound_ms:
        ax.axhline(p99_bound_ms, linestyle="--", color="grey", linewidth=1)
        ax.text(ax.get_xlim()[0], p99_bound_ms, f" p99 bound {p99_bound_ms:g} ms", va="bottom", fontsize=8,
                color="grey")
    ax.set_xlabel("throughput (images or texts answered 200, per s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_xscale("log")  # ours and the stock baseline differ by an order of magnitude or more
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f"{model}: served throughput vs p99 latency\n{card or ''}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, out_dir / f"{model}_throughput_vs_p99.png", written)

    if swept:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        for (batch, delay), members in sorted(groups.items(), key=lambda kv: tuple(v or 0 for v in kv[0])):
            workers = [p.get("workers") for p in members]
            top.plot(workers, [_items(p) for p in members], marker="o", label=f"batch {batch}, delay {delay} ms")
            bottom.plot(workers, [p["p99_ms"] for p in members], marker="o")
        if p99_bound_ms:
            bottom.axhline(p99_bound_ms, linestyle="--", color="grey", linewidth=1)
        ticks = sorted({p.get("workers") for p in swept if p.get("workers")})
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(ticks, [str(t) for t in ticks])
        top.set_ylabel("items answered 200 per s")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_xlabel("workers (one GPU)")
        top.set_title(f"{model}: sweep over workers\n{card or ''}", fontsize=10)
        top.legend(fontsize=8)
        for a in (top, bottom):
            a.grid(True, alpha=0.3)
        _save(fig, out_dir / f"{model}_sweep_workers.png", written)

    sampled = [p for p in single if p.get("gpu_series")]
    if sampled:
        fig, ax = plt.subplots(figsize=(9, 5))
        for p in sampled:
            ax.plot(*zip(*p["gpu_series"]), label=f"{p.get('label')} (mean {p.get('gpu_util')}%)", linewidth=1)
        ax.set_ylim(0, 105)
        ax.set_xlabel("seconds into the measured window")
        ax.set_ylabel("GPU busy (%)")
        ax.set_title(f"{model}: GPU busy over time, per run\n{card or ''}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        _save(fig, out_dir / f"{model}_gpu_busy.png", written)
    return written


def plot_all(inputs: list[Path], out_dir: Path, p99_bound_ms: float | None = None) -> list[Path]:
    runs, sweeps = load_documents(inputs)
    sweep_labels = {p.get("label") for s in sweeps for p in s.get("points", [])}
    points = []
    for run in runs:
        point = point_summary(run)
        point["sweep"] = point["label"] in sweep_labels or "sweep_point" in run
        points.append(point)
    known = {p["label"] for p in points}
    for sweep in sweeps:  # summaries carry their points even when the per-point files are not at hand
        for p in sweep.get("points", []):
            if p.get("label") not in known:
                points.append({**p, "sweep": True})
    points = [p for p in points if p.get("ok_rps") and p.get("p99_ms") is not None]
    if p99_bound_ms is None:
        p99_bound_ms = next((s.get("p99_bound_ms") for s in sweeps if s.get("p99_bound_ms")), None)
    card = next((r.get("card") for r in runs if r.get("card")), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        by_model[_model_of(p)].append(p)
    written = []
    for model, model_points in sorted(by_model.items()):
        written += plot_model(model, model_points, card, out_dir, p99_bound_ms)
    return written


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("plot", _plot, "throughput-vs-p99 plots of result files (needs matplotlib)", details=__doc__)
    p.add_argument("inputs", nargs="+", type=Path, help="result JSON files or folders of them")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--p99-bound-ms", type=float, default=None, help="default: the sweep's bound")


def _plot(args: Any) -> int:
    written = plot_all(args.inputs, args.out_dir, args.p99_bound_ms)
    if not written:
        print("nothing to plot: no run with throughput and p99 in the inputs", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
