#!/usr/bin/env python3
"""Draws the PNG plots of a `compare` run from its summary.json.

Usage: plot.py SUMMARY_JSON OUT_DIR

matplotlib rather than a Rust plotting crate: the harness already depends on Python (Envoy comes
from PyPI), matplotlib's wheel needs no system fonts or native libraries, and the plots stay out
of the Rust build.
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"direct": "#7f7f7f", "envoy": "#d62728", "petrel": "#1f77b4"}
TITLES = {"direct": "direct", "envoy": "Envoy", "petrel": "Petrel"}
SCENARIOS = [
    ("http1", "HTTP/1.1 router"),
    ("h2c", "h2c router"),
    ("grpc", "gRPC unary"),
    ("tcp-http", "TCP proxy (HTTP/1.1)"),
    ("tcp-echo", "TCP echo 64 B"),
    ("churn", "connection churn"),
]
BULK = [("bulk-up", "bulk upload"), ("bulk-down", "bulk download")]


def main():
    summary_path, out = sys.argv[1], sys.argv[2]
    with open(summary_path) as f:
        s = json.load(f)
    rows, plan = s["rows"], s["meta"]["plan"]
    targets = plan["targets"]
    proxies = [t for t in targets if t != "direct"]
    meta = s["meta"]
    subtitle = f'{meta["cpu_model"]}, {meta["date"]}, {meta["mode"]} mode'
    os.makedirs(out, exist_ok=True)
    throughput(rows, plan, targets, subtitle, out)
    fixed_rate(rows, plan, targets, subtitle, out)
    cpu(rows, plan, proxies, subtitle, out)
    memory(s, proxies, subtitle, out)


def get(rows, sc, load, t, field):
    r = rows.get(f"{sc}/{load}/{t}")
    if not r or r["ok"] == 0:
        return None
    return r.get(field)


def throughput(rows, plan, targets, subtitle, out):
    levels = plan["levels"]
    n = len(SCENARIOS) + 1
    cols = 4
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(16, 8))
    axes = axes.flatten()
    for ax, (sc, title) in zip(axes, SCENARIOS):
        for t in targets:
            pts = [(c, get(rows, sc, f"c{c}", t, "rps")) for c in levels]
            pts = [(c, v) for c, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=COLORS[t], label=TITLES[t])
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_title(title)
        ax.set_xlabel("connections")
        ax.set_ylabel("req/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax = axes[len(SCENARIOS)]
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        vals = [get(rows, sc, "c1", t, "gbps") or 0 for sc, _ in BULK]
        ax.bar([x + i * width for x in range(len(BULK))], vals, width, color=COLORS[t], label=TITLES[t])
    ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(BULK))])
    ax.set_xticklabels([b for _, b in BULK])
    ax.set_title("bulk TCP, 1 connection")
    ax.set_ylabel("Gbit/s")
    for ax in axes[n:]:
        ax.axis("off")
    axes[0].legend()
    fig.suptitle(f"Closed-loop throughput (higher is better)\n{subtitle}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=100)
    plt.close(fig)


def fixed_rate(rows, plan, targets, subtitle, out):
    rates = plan["rates"]
    scenarios = [(sc, title) for sc, title in SCENARIOS
                 if any(get(rows, sc, f"r{r}", t, "p50_us") for r in rates for t in targets)]
    if not scenarios or not rates:
        return
    # One row per rate, one column per scenario.
    fig, axes = plt.subplots(len(rates), len(scenarios), figsize=(4.5 * len(scenarios), 4 * len(rates)),
                             squeeze=False)
    pcts = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    width = 0.8 / max(len(targets), 1)
    cells = [(axes[i][j], sc, title, r) for i, r in enumerate(rates) for j, (sc, title) in enumerate(scenarios)]
    for ax, sc, title, r in cells:
        for i, t in enumerate(targets):
            vals = [get(rows, sc, f"r{r}", t, k) or 0 for k, _ in pcts]
            ax.bar([x + i * width for x in range(len(pcts))], vals, width, color=COLORS[t], label=TITLES[t])
        ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(pcts))])
        ax.set_xticklabels([p for _, p in pcts])
        ax.set_yscale("log")
        ax.set_ylabel("µs")
        ax.set_title(f"{title}\n{r} req/s, 16 conns")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend()
    fig.suptitle(f"Fixed-rate latency, coordinated-omission corrected (lower is better)\n{subtitle}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency_fixed_rate.png"), dpi=100)
    plt.close(fig)


def cpu(rows, plan, proxies, subtitle, out):
    if not proxies:
        return
    level = 64 if 64 in plan["levels"] else max(plan["levels"])
    cases = [(sc, title, f"c{level}") for sc, title in SCENARIOS] + [(sc, title, "c1") for sc, title in BULK]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(proxies)
    for i, t in enumerate(proxies):
        vals = [get(rows, sc, load, t, "cpu_per_10k") or 0 for sc, _, load in cases]
        ax.bar([x + i * width for x in range(len(cases))], vals, width, color=COLORS[t], label=TITLES[t])
    ax.set_xticks([x + width * (len(proxies) - 1) / 2 for x in range(len(cases))])
    ax.set_xticklabels([f"{title}\n{load}" for _, title, load in cases], fontsize=8)
    ax.set_ylabel("proxy CPU-seconds per 10,000 requests\n(bulk: per 10,000 × 64 KiB)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Proxy CPU per request at {level} connections (lower is better)\n{subtitle}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu_per_request.png"), dpi=100)
    plt.close(fig)


def memory(s, proxies, subtitle, out):
    if not proxies:
        return
    rows, extras, plan = s["rows"], s["extras"], s["meta"]["plan"]
    labels, series = [], {t: [] for t in proxies}
    labels.append("idle")
    for t in proxies:
        idle = sorted(r["idle_rss_kib"] for k, r in rows.items() if k.endswith("/" + t) and r.get("idle_rss_kib"))
        series[t].append(idle[len(idle) // 2] / 1024 if idle else 0)
    for key, label in ((f'idle-conns-{plan["idle_conns"]}', f'{plan["idle_conns"]} idle conns'),
                       (f'clusters-{plan["clusters"]}', f'{plan["clusters"]} clusters')):
        labels.append(label)
        for t in proxies:
            e = extras.get(f"{key}/{t}") or {}
            series[t].append((e.get("rss_kib") or 0) / 1024)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(proxies)
    for i, t in enumerate(proxies):
        ax.bar([x + i * width for x in range(len(labels))], series[t], width, color=COLORS[t], label=TITLES[t])
    ax.set_xticks([x + width * (len(proxies) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels)
    ax.set_ylabel("RSS, MiB")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Proxy memory (lower is better)\n{subtitle}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
