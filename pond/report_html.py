"""`runs/NAME/report.html`: one self-contained page of what a run did, to open in any browser.

Charts are plotly figures; plotly.js itself is embedded once, inline, so the page needs no network
and no server. Text from the data (example rows, reasons, the adapter card) is escaped by the Jinja
template (autoescape) and rendered Markdown has raw HTML disabled. A part the run does not have is a
short "not in this run" line (pond.report_data returns None for it). Div ids are fixed, so the same
run folder gives the same bytes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from curation import store
from pond import layout
from pond import report_data as data

TEMPLATE = "report_html.jinja"
HEIGHT = 360
BINS = 40
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def _chart(fig, div_id: str, height: int = HEIGHT, left: int = 60, top: int = 50) -> str:
    fig.update_layout(template="plotly_white", height=height, margin={"l": left, "r": 20, "t": top, "b": 60})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG,
                       default_height=f"{height}px")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def funnel_chart(rows: list[dict[str, Any]]) -> str | None:
    import plotly.graph_objects as go

    rows = [r for r in rows if r["in"] is not None]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig = go.Figure([go.Bar(name="kept", x=steps, y=[r["kept"] for r in rows], marker_color="#2a9d8f"),
                     go.Bar(name="rejected", x=steps, y=[r["rejected"] for r in rows], marker_color="#e76f51"),
                     go.Scatter(name="rows in", x=steps, y=[r["in"] for r in rows], mode="lines+markers",
                                line={"color": "#264653"})])
    fig.update_layout(barmode="stack", title="rows in, kept and rejected per step", yaxis_title="rows")
    return _chart(fig, "chart-funnel")


def reasons_chart(steps: list[dict[str, Any]]) -> str | None:
    import plotly.graph_objects as go

    bars = [(f"{s['step']} · {r['reason']}", r["rows"]) for s in steps for r in s["reasons"]]
    if not bars:
        return None
    fig = go.Figure(go.Bar(x=[n for _, n in bars], y=[label for label, _ in bars], orientation="h",
                           marker_color="#e76f51"))
    fig.update_layout(title="top rejection reasons per step", xaxis_title="rows rejected",
                      yaxis={"autorange": "reversed"})
    return _chart(fig, "chart-reasons", height=max(HEIGHT, 24 * len(bars) + 120), left=260)


def histogram(groups: dict[str, Any], bins: int = BINS, percent: bool = False) -> tuple[list, float, dict]:
    """(bin centres, bin width, {group: counts}) over the groups' common range. Binned here, not in the browser:
    the page carries BINS numbers per group whatever the run's size, not every row's value."""
    values = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    every = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    lo, hi = float(every.min()), float(every.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {}
    for k, v in values.items():
        c = np.histogram(v, bins=edges)[0].astype(np.float64)
        counts[k] = (100 * c / max(1, v.size) if percent else c).round(3).tolist()
    return ((edges[:-1] + edges[1:]) / 2).tolist(), float(edges[1] - edges[0]), counts


def _bars(name: str, centres: list, width: float, counts: list, color: str, **kw):
    import plotly.graph_objects as go

    return go.Bar(name=name, x=centres, y=counts, width=width, opacity=0.7, marker_color=color, **kw)


def score_chart(score: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    groups = {k: score[k] for k in ("kept", "rejected") if len(score[k])}
    centres, width, counts = histogram(groups)
    colors = {"kept": "#2a9d8f", "rejected": "#e76f51"}
    fig = go.Figure([_bars(f"{k} ({len(score[k])})", centres, width, counts[k], colors[k]) for k in groups])
    fig.update_layout(barmode="overlay", title=f"{score['column']} ({score['step']})", xaxis_title=score["column"],
                      yaxis_title="rows")
    return _chart(fig, f"chart-score-{_slug(score['step'])}-{_slug(score['column'])}")


def synthetic_chart(cmp: dict[str, Any]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("prompt length (chars)", "answer length (chars)"))
    colors = {"real": "#264653", "synthetic": "#f4a261"}
    for col, key in ((1, "prompt_chars"), (2, "answer_chars")):
        centres, width, counts = histogram({k: g[key] for k, g in cmp["groups"].items()}, percent=True)
        for label, g in cmp["groups"].items():
            fig.add_trace(_bars(f"{label} ({g['rows']})", centres, width, counts[label], colors[label],
                                legendgroup=label, showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="overlay", title="synthetic against real rows (share of each group)")
    fig.update_yaxes(title_text="% of rows", row=1, col=1)
    return _chart(fig, "chart-synthetic", top=90)  # room for the title above the subplot titles


def curve_chart(curves: dict[str, dict[str, Any]], div_id: str, title: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, c in curves.items():
        prefix = f"{name}: " if len(curves) > 1 else ""
        if c["loss"]:
            fig.add_trace(go.Scatter(name=f"{prefix}training loss", x=[s for s, _ in c["loss"]],
                                     y=[v for _, v in c["loss"]], mode="lines+markers"))
        if c["eval_loss"]:
            fig.add_trace(go.Scatter(name=f"{prefix}held-out loss", x=[s for s, _ in c["eval_loss"]],
                                     y=[v for _, v in c["eval_loss"]], mode="lines+markers",
                                     line={"dash": "dash"}))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title="loss")
    return _chart(fig, div_id)


def experiment_chart(summary: dict[str, Any]) -> str | None:
    import plotly.graph_objects as go

    metric = summary["metric"]
    arms = [a for a in summary["arms"] if metric in a.get("metrics", {})]
    if not arms:
        return None
    m = [a["metrics"][metric] for a in arms]
    # points, not bars: a bar starts at zero, and the arms differ in the third decimal of a loss near 2
    fig = go.Figure(go.Scatter(x=[a["name"] for a in arms], y=[c["mean"] for c in m], mode="markers",
                               marker={"color": "#2a9d8f", "size": 12}, name=metric,
                               error_y={"type": "data", "symmetric": False, "array": [c["high"] - c["mean"] for c in m],
                                        "arrayminus": [c["mean"] - c["low"] for c in m]}))
    base = (summary.get("base_model") or {}).get(metric)
    if base:
        fig.add_hline(y=base["mean"], line_dash="dot", annotation_text="base model (no training)")
    better = "lower" if summary.get("lower_is_better") else "higher"
    fig.update_layout(title=f"{metric} per arm, {summary.get('confidence', 0.95):.0%} interval ({better} is better)",
                      yaxis_title=metric)
    return _chart(fig, "chart-experiment")


def _ci(c: dict | None, sign: bool = False) -> str:
    if not c or "mean" not in c:
        return "–"
    f = "{:+.4f}" if sign else "{:.4f}"
    return f"{f.format(c['mean'])} [{f.format(c['low'])}, {f.format(c['high'])}]"


def experiment_table(summary: dict[str, Any]) -> dict[str, Any]:
    metric, baseline = summary["metric"], summary.get("baseline", "")
    head = ["arm", "data", "rows", "steps", "answer tokens seen", "train seconds", f"{metric} [CI]",
            f"Δ vs {baseline} [CI]"]
    rows = []
    for a in summary["arms"]:
        rows.append([a["name"], a.get("data", ""), str(a.get("rows", "")), f"{a.get('steps_mean', 0):.0f}",
                     f"{a.get('answer_tokens_seen_mean', 0):,.0f}", f"{a.get('train_seconds_mean', 0):.0f}",
                     _ci(a.get("metrics", {}).get(metric)),
                     "(baseline)" if a["name"] == baseline else _ci(a.get(f"vs_{baseline}", {}).get(metric), True)])
    return {"head": head, "rows": rows, "verdict": (summary.get("verdict") or {}).get("sentence", "")}


def markdown(text: str) -> tuple[str, str]:
    """(front matter, HTML) of a Markdown file; raw HTML in it is escaped, not passed through."""
    from markdown_it import MarkdownIt

    front = ""
    if text.startswith("---\n") and "\n---" in text[4:]:
        front, text = text[4:].split("\n---", 1)
        text = text.lstrip("-\n")
    return front.strip(), MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def build(run: Path) -> dict[str, Any]:
    """Everything the template shows, as strings and small lists."""
    run = Path(run)
    funnel = data.funnel(run)
    reasons = data.reasons(run)
    scores = data.score_columns(run)
    cmp = data.synthetic_vs_real(run, sorted({s["column"] for s in scores}))
    curve = data.training_curve(run)
    exp = data.experiment(run)
    card = data.adapter_card(run)
    evaluation = data.evaluation_report(run)
    manifest = data.manifest(run)
    out: dict[str, Any] = {
        "title": f"pond run {run.resolve().name}", "run": str(run.resolve()), "recipe": manifest.get("recipe", ""),
        "funnel": funnel, "funnel_chart": funnel_chart(funnel),
        "reasons": reasons, "reasons_chart": reasons_chart(reasons),
        "scores": [{"step": s["step"], "column": s["column"], "kept": len(s["kept"]), "rejected": len(s["rejected"]),
                    "chart": score_chart(s)} for s in scores],
        "synthetic": None, "training": None, "experiment": None, "card": None, "evaluation": None,
        "lineage": data.run_json(run),
    }
    if cmp:
        out["synthetic"] = {**cmp, "chart": synthetic_chart(cmp),
                            "score_names": sorted(set(cmp["groups"]["real"]["scores"]) |
                                                  set(cmp["groups"]["synthetic"]["scores"]))}
    if curve:
        out["training"] = {"where": curve["where"], "chart": curve_chart({"adapter": curve}, "chart-training",
                                                                          "training curve")}
    if exp:
        s = exp["summary"]
        out["experiment"] = {"chart": experiment_chart(s), "table": experiment_table(s),
                             "curves": curve_chart(exp["curves"], "chart-experiment-curves",
                                                   "training curve of every arm and seed") if exp["curves"] else None}
    if card:
        front, html = markdown(card[1])
        out["card"] = {"where": card[0], "front": front, "html": html}
    if evaluation:
        out["evaluation"] = markdown(evaluation)[1]
    return out


def render(run: Path) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["jinja", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["safe_html"] = Markup  # only for what pond built: charts and escaped Markdown
    return env.get_template(TEMPLATE).render(plotly_js=Markup(get_plotlyjs()), **build(run))


def write_report_html(run: Path, out: Path | None = None) -> Path:
    """Write the run's report.html, whole or not at all (curation.store)."""
    run = Path(run)
    if not layout.is_run(run):
        raise FileNotFoundError(f"{run}: not a pond run directory (no {layout.STEPS}/)")
    path = Path(out) if out else run / layout.REPORT_HTML
    store.write_text(render(run), path)
    return path
