"""The capacity-sweep picture of `simulate --sweep`: TTFT p90 and goodput against DDR and
flash sizes, and the Pareto front of lower-tier capacity against TTFT p90."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from load.plots import STYLE, plt, save


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs no other run beats on both total lower-tier GiB and TTFT p90 (by GiB)."""
    ranked = sorted(
        (r for r in rows if r["ttft_p90_ms"] is not None),
        key=lambda r: (r["ddr_gb"] + r["flash_gb"], r["ttft_p90_ms"]),
    )
    front: list[dict[str, Any]] = []
    for r in ranked:
        if not front or r["ttft_p90_ms"] < front[-1]["ttft_p90_ms"]:
            front.append(r)
    return front


def write_sweep_plot(rows: list[dict[str, Any]], path: Path, slo_text: str) -> Path:
    flash_sizes = sorted({r["flash_gb"] for r in rows})
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for flash in flash_sizes:
            runs = sorted((r for r in rows if r["flash_gb"] == flash), key=lambda r: r["ddr_gb"])
            x = [r["ddr_gb"] for r in runs]
            label = f"flash {flash:g} GiB"
            axes[0].plot(x, [r["ttft_p90_ms"] for r in runs], marker="o", label=label)
            axes[1].plot(x, [r["goodput_requests_per_s"] for r in runs], marker="o", label=label)
        axes[0].set(xlabel="DDR GiB", ylabel="TTFT p90 (ms)", title="TTFT p90")
        axes[0].set_yscale("log")
        axes[1].set(xlabel="DDR GiB", ylabel="requests/s", title=f"goodput ({slo_text})")
        for ax in axes[:2]:
            ax.legend(fontsize=8)
        total = [r["ddr_gb"] + r["flash_gb"] for r in rows]
        axes[2].scatter(total, [r["ttft_p90_ms"] for r in rows], color="0.6", label="runs")
        front = pareto(rows)
        axes[2].plot(
            [r["ddr_gb"] + r["flash_gb"] for r in front],
            [r["ttft_p90_ms"] for r in front],
            marker="o",
            color="C3",
            label="Pareto front",
        )
        for r in front:
            axes[2].annotate(
                f"{r['ddr_gb']:g}+{r['flash_gb']:g}",
                (r["ddr_gb"] + r["flash_gb"], r["ttft_p90_ms"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        axes[2].set(
            xlabel="DDR + flash GiB",
            ylabel="TTFT p90 (ms)",
            title="capacity vs TTFT p90 (labels: DDR+flash)",
        )
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=8)
        return save(fig, path)
