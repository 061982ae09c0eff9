"""Offline quality on any interaction log: the two-tower beside popularity, ALS and EASE, and the freshness lift.

    streamrec bench quality --data DIR [--split temporal|leave-last-out|both] [--report BENCHMARKS.md]

DIR holds the project's three parquet files (`streamrec generate`, or `streamrec import movielens|table`).
Every ranker (models/rankers.py, shared with `streamrec train`'s table) answers the same requests on the
same split (models/quality.py draws them): Recall@10/20, NDCG@10, coverage@10, seconds to fit, and the paired
bootstrap 95% interval of each baseline's NDCG@10 and Recall@10 minus the two-tower's. The freshness lift
scores the temporal split's two-tower and EASE with each request's history as of the request (the stream's
online features) and as of the start of its day (a nightly snapshot). Writes a table, ``quality.json`` and
``quality.png`` (in --out-dir) and, with --report, the same as a section of that Markdown file (kept by
`streamrec bench`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from streamrec.plots import png
from streamrec.schemas import HISTORY_LENGTH

METRICS = ("recall@10", "recall@20", "ndcg@10", "coverage@10")
REFERENCE = "two-tower"
SEQUENCE = "two-tower (sequence)"


def run(data: Path, splits: list[str], epochs: int = 30, seed: int = 0, als: bool = True,
        report: Any = print, history: int = HISTORY_LENGTH, sequence: bool = True,
        tower_options: dict[str, float] | None = None) -> dict[str, Any]:
    """Every protocol in ``splits`` plus the freshness lift (when temporal is one): a JSON-able dict.
    ``tower_options``: TowerConfig options for both two-towers instead of the defaults (a what-if, named in the data's
    name so its report section stands beside the defaults' one)."""
    import torch

    from models.data import load_data
    from models.quality import PROTOCOLS, freshness_lift, run_protocol
    from models.quality import paired_interval as interval
    from models.rankers import ALS, EASE, Oracle, Popularity, TwoTowerRanker, context
    from models.selection import MIN_REQUESTS
    from models.train import SEQUENCE_TRAINING, TrainConfig

    raw = load_data(data)
    t0 = time.perf_counter()
    ctx = context(raw, max_history=history)
    ev = ctx.ev
    options = dict(tower_options or {})
    out: dict[str, Any] = {
        "data": {"name": Path(data).resolve().name + ("" if history == HISTORY_LENGTH else f"-history{history}")
                 + "".join(f"-{k.replace('_', '-')}{v:g}" for k, v in sorted(options.items())),
                 "events": len(ev.frame),
                 "users": len(ev.user_ids), "items": ctx.n_items, "positive_events": int(ctx.positive.sum()),
                 "window": [str(np.datetime64(int(ev.ts.min()), "ns"))[:19],
                            str(np.datetime64(int(ev.ts.max()), "ns"))[:19]]},
        "settings": {"epochs": epochs, "seed": seed, "history": history, "threads": torch.get_num_threads(),
                     "tower": options},
        "splits": {}}
    for name in splits:
        protocol = PROTOCOLS[name](ctx)
        rankers = [Popularity(), EASE(), *([ALS(seed=seed)] if als else []),
                   TwoTowerRanker(TrainConfig(epochs=epochs, seed=seed), options),
                   # the sequence tower (causal self-attention, every position trained in one pass) on the same
                   # harness, at the batch and learning rate it was tuned with
                   *([TwoTowerRanker(TrainConfig(epochs=epochs, seed=seed, **SEQUENCE_TRAINING),
                                     {**options, "user_tower": "sequence"}, SEQUENCE)] if sequence else [])]
        if raw.affinities is not None:
            rankers.append(Oracle())
        warnings = [f"{what} has {n} requests (< {MIN_REQUESTS}): {consequence}"
                    for what, n, consequence in (
                        ("the test split", len(protocol.test.rows), "its figures say little; read the intervals"),
                        ("the validation split", len(protocol.tune.rows),
                         "nothing was chosen from it (default schedules)"))
                    if n < MIN_REQUESTS]
        for line in warnings:
            report(f"warning: {name}: {line}")
        outcomes = run_protocol(ctx, protocol, rankers, report)
        ref = outcomes[REFERENCE].rows
        tower = next(r for r in rankers if r.name == REFERENCE)
        out["splits"][name] = {
            "requests": len(protocol.test.rows), "validation_requests": len(protocol.tune.rows),
            "validation": protocol.tune_kind, "warnings": warnings,
            "selection": getattr(tower, "selection", ""),
            "targets_per_request": float((protocol.test.targets >= 0).sum(axis=1).mean()),
            "rankers": {r: {**o.metrics, "fit_s": o.train_s, "tune_s": o.tune_s, "params": o.params,
                            "ndcg@10_ci": interval(o.rows["ndcg@10"], np.zeros_like(o.rows["ndcg@10"]))[1:],
                            "vs_two_tower": {m: interval(o.rows[m], ref[m]) for m in ("ndcg@10", "recall@10")}}
                        for r, o in outcomes.items()}}
        if name == "temporal":
            lift = freshness_lift(ctx, protocol, [r for r in rankers if r.name in (REFERENCE, "EASE")])
            out["freshness_lift"] = lift
    out["seconds"] = time.perf_counter() - t0
    return out


# ---- presentation -----------------------------------------------------------------------------
def _ci(t: Any) -> str:
    mean, lo, hi = t
    return f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def markdown(r: dict[str, Any], command: str) -> str:
    d = r["data"]
    h = r["settings"].get("history", HISTORY_LENGTH)
    what_if = (f" (what-if: the two-tower reads {h} recent events; the stream keeps {HISTORY_LENGTH})"
               if h != HISTORY_LENGTH else "")
    lines = [f"### Quality on `{d['name']}`{what_if}", "",
             f"Produced by `{command}`: {d['events']:,} events ({d['positive_events']:,} positive), "
             f"{d['users']:,} users, {d['items']:,} items, {d['window'][0]} to {d['window'][1]}. Each baseline's "
             "difference to the two-tower is its mean minus the two-tower's over the same requests, with a paired "
             "bootstrap 95% interval; an interval that contains 0 is no evidence either way.", ""]
    for name, s in r["splits"].items():
        lines += [f"**{name}**: {s['requests']:,} test requests ({s['targets_per_request']:.1f} targets each), "
                  f"tuned on {s['validation_requests']:,} validation requests ({s.get('validation', 'per-user cut')}); "
                  f"two-tower epochs: {s.get('selection') or 'chosen on validation'}.", "",
                  *(f"> **Warning:** {w}." for w in s.get("warnings", ())), *([""] if s.get("warnings") else []),
                  "| ranker | " + " | ".join(METRICS) + " | NDCG@10 − two-tower | fit s | chosen |",
                  "|---|" + "---:|" * len(METRICS) + "---:|---:|---|"]
        for ranker, m in s["rankers"].items():
            diff = "" if ranker == REFERENCE else _ci(m["vs_two_tower"]["ndcg@10"])
            params = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in m["params"].items())
            lines.append(f"| {ranker} | " + " | ".join(f"{m[x]:.4f}" for x in METRICS)
                         + f" | {diff} | {m['fit_s']:.1f} | {params} |")
        lines.append("")
    if "freshness_lift" in r:
        f = r["freshness_lift"]
        lines += [f"**Freshness lift** (temporal split's models; {f['n_requests']:,} requests, each test-period "
                  f"first-time positive; the history differs from the day-start snapshot for "
                  f"{f['history_changed_share']:.0%} of them):", "",
                  "| ranker | Recall@10 fresh | stale | lift | NDCG@10 fresh | stale | lift |",
                  "|---|---:|---:|---|---:|---:|---|"]
        for ranker, x in f["rankers"].items():
            lines.append(f"| {ranker} | {x['fresh']['recall@10']:.4f} | {x['stale']['recall@10']:.4f} | "
                         f"{_ci(x['lift']['recall@10'])} | {x['fresh']['ndcg@10']:.4f} | {x['stale']['ndcg@10']:.4f} "
                         f"| {_ci(x['lift']['ndcg@10'])} |")
        lines.append("")
        if "controls" in f:
            c = f["controls"]
            fresh = f["rankers"][REFERENCE]["fresh"]
            lines += ["**History controls** (the same two-tower, the same requests, the history as of the request "
                      "but shuffled, or emptied; fresh minus each, paired):", "",
                      "| two-tower input | Recall@10 | NDCG@10 | fresh − this, Recall@10 | fresh − this, NDCG@10 |",
                      "|---|---:|---:|---|---|",
                      f"| history as of the request | {fresh['recall@10']:.4f} | {fresh['ndcg@10']:.4f} | | |"]
            for label, key in (("history shuffled (order and recency lost)", "shuffled"),
                               ("history emptied (profile only)", "empty")):
                lines.append(f"| {label} | {c[key]['recall@10']:.4f} | {c[key]['ndcg@10']:.4f} | "
                             f"{_ci(c[key]['worth']['recall@10'])} | {_ci(c[key]['worth']['ndcg@10'])} |")
            lines.append("")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> Path:
    splits = list(r["splits"])
    panels = len(splits) + (1 if "freshness_lift" in r else 0)
    with png(path, panels, size=(5 * panels, 4)) as axes:
        _draw_quality(r, splits, axes)
    return path


def _draw_quality(r: dict[str, Any], splits: list[str], axes: list[Any]) -> None:
    for ax, name in zip(axes, splits, strict=False):
        rankers = r["splits"][name]["rankers"]
        names = list(rankers)
        means = [rankers[n]["ndcg@10"] for n in names]
        lo = [m - rankers[n]["ndcg@10_ci"][0] for n, m in zip(names, means, strict=True)]
        hi = [rankers[n]["ndcg@10_ci"][1] - m for n, m in zip(names, means, strict=True)]
        ax.bar(names, means, yerr=[lo, hi], capsize=4, color=["C1" if n == REFERENCE else "C0" for n in names])
        ax.set(title=f"{r['data']['name']}: {name} split", ylabel="NDCG@10 (test, 95% bootstrap interval)")
        ax.tick_params(axis="x", rotation=30)
    if "freshness_lift" in r:
        ax = axes[-1]
        f = r["freshness_lift"]["rankers"]
        x = np.arange(len(f))
        for i, (label, key) in enumerate((("history as of the request", "fresh"), ("day-start snapshot", "stale"))):
            ax.bar(x + (i - 0.5) * 0.4, [f[n][key]["ndcg@10"] for n in f], width=0.4, label=label)
        ax.set_xticks(x, list(f))
        ax.set(title="freshness lift (temporal split)", ylabel="NDCG@10 per request")
        ax.legend(fontsize=8)


HEADING = "## Quality (`streamrec bench quality`)"
SECTION = re.compile(r"<!-- quality:(?P<name>[^ ]+) -->\n.*?<!-- /quality:(?P=name) -->\n?", re.S)


def put_section(text: str, name: str, body: str) -> str:
    """``text`` with the quality section ``name`` replaced by ``body`` (appended when absent)."""
    block = f"<!-- quality:{name} -->\n{body.rstrip()}\n<!-- /quality:{name} -->\n"
    for m in SECTION.finditer(text):
        if m.group("name") == name:
            return text[: m.start()] + block + text[m.end():]
    head = "" if sections(text) else HEADING + "\n\n"
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + head + block


def sections(text: str) -> list[str]:
    """Every quality section of ``text``, markers included (what `streamrec bench` keeps when it rewrites)."""
    return [m.group(0) for m in SECTION.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from streamrec.config import get_settings

    ap = argparse.ArgumentParser(prog="streamrec bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="folder of the three parquet files (default: $STREAMREC_DATA_DIR)")
    ap.add_argument("--split", choices=["temporal", "leave-last-out", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=30,
                    help="two-tower epochs at most (models/selection.py chooses the length on validation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history", type=int, default=HISTORY_LENGTH,
                    help=f"recent events the two-tower reads (the stream keeps {HISTORY_LENGTH}: another is a what-if)")
    ap.add_argument("--skip", type=float, default=None,
                    help="the two-towers' linear path scale (TowerConfig.skip; 0 = none) instead of "
                         "choosing it on validation")
    ap.add_argument("--skip-dropout", type=float, default=None,
                    help="dropout on that path in training (TowerConfig.skip_dropout); setting it pins the path")
    ap.add_argument("--last-events", type=int, default=0,
                    help="the pooled two-tower also reads the newest N events' mean as an input (TowerConfig."
                         "last_events; 0 = not, the default): a what-if, its section named <log>-last-eventsN")
    ap.add_argument("--no-als", action="store_true", help="leave ALS out")
    ap.add_argument("--no-sequence", action="store_true",
                    help="leave out the sequence user tower, shown beside the default (pooled) one")
    ap.add_argument("--out-dir", type=Path, default=Path("quality"), help="where quality.json and quality.png go")
    ap.add_argument("--report", type=Path, default=None,
                    help="Markdown file whose quality section for this data is written (e.g. BENCHMARKS.md)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.history < 1:
        ap.error("--epochs and --history must be at least 1")
    if not 0 <= args.last_events <= args.history:
        ap.error("--last-events must be between 0 and --history")
    if (args.skip is not None and args.skip < 0) or (args.skip_dropout is not None and not 0 <= args.skip_dropout < 1):
        ap.error("--skip must be at least 0 and --skip-dropout in [0, 1)")
    err = Console(stderr=True)
    data = args.data or get_settings().data_dir
    splits = ["temporal", "leave-last-out"] if args.split == "both" else [args.split]
    from models.train import path_options

    tower = path_options(args.skip, args.skip_dropout)
    if args.last_events:
        tower["last_events"] = args.last_events
    with err.status("quality benchmark…") as status:
        r = run(data, splits, epochs=args.epochs, seed=args.seed, als=not args.no_als, history=args.history,
                sequence=not args.no_sequence, tower_options=tower,
                report=lambda line: (status.update(line), err.print(line, highlight=False)))
    command = "streamrec bench quality " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(r, command.strip())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "quality.json").write_text(json.dumps(r, indent=1, default=float))
    png = plot(r, args.out_dir / "quality.png")
    if args.report:
        old = args.report.read_text() if args.report.is_file() else ""
        tmp = args.report.with_name(args.report.name + ".tmp")
        tmp.write_text(put_section(old, r["data"]["name"], text))
        tmp.replace(args.report)
    if args.json:
        print(json.dumps(r, default=float))
    else:
        print(text)
        print(f"wrote {args.out_dir / 'quality.json'}, {png}" + (f", {args.report}" if args.report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
