"""A report of one evaluation folder (``results.json`` + ``images/*.npz``): Markdown and self-contained HTML.

    write_report(out_dir)  ->  out_dir/report.md, out_dir/report.html, out_dir/report_files/*.png

Content: protocol and provenance (fallbacks first, in bold), metric tables (mean [CI]), paired differences /
win-rates vs the baseline, matplotlib plots (means with interval bars, differences with the 0 line), and per
graph an image grid -- the input scene graph drawn as a graph (networkx + matplotlib) beside the baseline's and
the model's images for every seed. PNGs are linked from the Markdown and embedded (base64) in the HTML, so the
HTML opens anywhere as a single file. Dependencies: matplotlib, networkx, numpy (no templating library).
"""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..scene_graph import LaionSGRecord, SceneGraph
from .run import RESULTS_NAME

METRIC_NAMES = {"sg_iou": "SG-IoU", "entity_iou": "Entity-IoU", "relation_iou": "Relation-IoU"}
FILES_DIR = "report_files"


def _plt():
    import matplotlib  # heavy (~0.5 s with pyplot): only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use: the backend is chosen first

    return plt


def _ci(d: dict[str, Any], digits: int = 3) -> str:
    return f"{d['estimate']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


class Document:
    """Collects blocks once and renders them as Markdown and as HTML: the one renderer of the evaluation report and
    the world job's results table (``sgalign.jobs.tables``). Inline markup: **bold**, `code`, [text](link)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, rows: list[str]) -> None:
        self.blocks.append(("ul", rows))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self, root: Path) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "ul":
                out.append("\n".join(f"* {r}" for r in v))
            elif kind == "table":
                header, rows = v
                lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("\n".join(lines))
            else:
                out.append(f"![{v[1]}]({v[0].relative_to(root).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{_inline(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(v)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(r)}</li>" for r in v) + "</ul>")
            elif kind == "table":
                header, rows = v
                head = "".join(f"<th>{_inline(c)}</th>" for c in header)
                trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                data = base64.b64encode(v[0].read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(v[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(v[1])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
                 "text-align:left;font-size:14px}th{background:#eee}img{max-width:100%}"
                 "figure{display:inline-block;vertical-align:top;margin:.5em 1.5em .5em 0}"
                 "figcaption{font-size:13px;color:#555;max-width:480px}code{background:#f3f3f3}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's **bold**, `code` and [text](link) as HTML (the only inline markup the documents use)."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return re.sub(r"\[([^\[\]]+)\]\(([^()\s]+)\)", r'<a href="\2">\1</a>', t)


# ---- plots --------------------------------------------------------------------------------------------------------
def interval_error_bars(cis: list[dict[str, Any]]) -> np.ndarray:
    """matplotlib ``yerr`` (2, n): [estimate - low, high - estimate] per interval, asymmetric as the interval is.
    An interval that excludes its estimate (an old results.json's percentile FID interval) gets NaN: no bar is
    drawn rather than a clipped, misleading one."""
    err = np.array([[c["estimate"] - c["low"] for c in cis], [c["high"] - c["estimate"] for c in cis]], dtype=float)
    err[:, (err < 0).any(axis=0)] = np.nan
    return err


def _bar_plot(path: Path, title: str, groups: list[str], series: dict[str, list[dict[str, Any]]], ylabel: str,
              hline: float | None = None) -> Path:
    """Grouped bars of estimates with [low, high] error bars; ``series`` maps a legend name to one CI per group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.0, 1.1 * len(groups) + 1.3), 2.8), dpi=100)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, cis) in enumerate(series.items()):
        est = np.array([c["estimate"] for c in cis])
        ax.bar(x + (k - (len(series) - 1) / 2) * width, est, width, yerr=interval_error_bars(cis), capsize=4,
               label=name)
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_scene_graph(ax: Any, record: dict[str, Any]) -> None:
    """The scene graph on ``ax``: one node per item (its phrase), one labelled arrow per relation."""
    import networkx as nx  # heavy (~0.2 s): only when a scene graph is drawn

    sg = SceneGraph.from_record(LaionSGRecord.model_validate(record))
    g = sg.to_networkx()
    pos = nx.circular_layout(g) if len(g) > 1 else {n: np.zeros(2) for n in g}
    labels = {n: "\n".join(d["phrase"].rsplit(" ", 1)) for n, d in g.nodes(data=True)}  # attributes / label
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dde7f7", node_size=900, edgecolors="#4a6fa5")
    for text in nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=7).values():
        text.set_clip_on(False)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=12, node_size=900, connectionstyle="arc3,rad=0.1")
    edge_labels = {(u, v): d["relation"] for u, v, d in g.edges(data=True)}
    nx.draw_networkx_edge_labels(g, pos, edge_labels=edge_labels, ax=ax, font_size=7, font_color="#a33")
    ax.set_axis_off()
    ax.margins(0.3)


def _grid(path: Path, title: str, record: dict[str, Any] | None, rows: dict[str, np.ndarray],
          captions: dict[str, list[str]], seeds: list[int], thumb_px: int,
          reference: np.ndarray | None = None) -> Path:
    """One figure: the scene graph (left, both rows) [and its render] beside one row of images per model, a column
    per seed."""
    plt = _plt()
    k = len(seeds)
    inch = thumb_px / 100
    ref = int(reference is not None)
    fig = plt.figure(figsize=(2.6 + inch * (k + ref) * 1.1, 0.5 + (inch + 0.35) * len(rows)), dpi=100)
    gs = fig.add_gridspec(len(rows), k + 1 + ref, width_ratios=[2.6 / inch] + [1.0] * (k + ref))
    if ref:
        ax = fig.add_subplot(gs[0, 1])
        ax.imshow(reference, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("render\n(reference)", fontsize=7)
    ax_g = fig.add_subplot(gs[:, 0])
    if record is not None:
        draw_scene_graph(ax_g, record)
    else:
        ax_g.set_axis_off()
        ax_g.text(0.5, 0.5, "(prompt is not a world graph)", ha="center", va="center", fontsize=8)
    for r, (role, imgs) in enumerate(rows.items()):
        for j in range(k):
            ax = fig.add_subplot(gs[r, j + 1 + ref])
            ax.imshow(imgs[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            cap = captions.get(role, [""] * k)[j]
            ax.set_title(f"seed {seeds[j]}" + (f"\n{cap}" if cap else ""), fontsize=7)
            if j == 0:
                ax.set_ylabel(role, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- sections -----------------------------------------------------------------------------------------------------
def _header(doc: Document, r: dict[str, Any]) -> None:
    prov, proto, res = r["provenance"], r["protocol"], r["resolved"]
    doc.h(1, f"sgalign evaluation: {r['task']}")
    if prov["fallbacks"]:
        doc.p("**Fallbacks in this run (numbers are NOT comparable with real evaluations):**")
        doc.items([f"**{f}**" for f in prov["fallbacks"]])
    models = prov["models"]
    rows = [[role, m["path_name"], m["class"], m["sha256"][:16], "yes" if m["random_init"] else "no",
             "yes" if m["lora"] else "no"] for role, m in models.items()]
    doc.h(2, "Models")
    doc.table(["role", "folder", "class", "sha256 (first 16)", "random-init", "LoRA"], rows)
    s = proto["sampling"]
    doc.h(2, "Protocol")
    doc.items([
        f"inputs: `{json.dumps(prov['inputs'])}`",
        f"sampler: {res['scheduler_class']}, {s['steps']} steps, eta {s['eta']}, CFG {res['guidance_scale']}, "
        f"resolution {res['resolution'][0]}x{res['resolution'][1]}, seeds {s['seeds']} "
        f"({res['n_images_per_model']} images per model; {r['inputs']['image_order']})",
        f"statistics: {proto['stats']['level']:.0%} percentile bootstrap, {proto['stats']['n_resamples']} resamples, "
        f"seed {proto['stats']['seed']}",
        f"commit `{prov.get('sgalign_commit')}`, torch {prov['machine']['torch']}, diffusers {prov['diffusers']}, "
        f"{prov['machine']['torch_threads']} torch threads; total {prov['timing']['total_s']} s",
    ])


def _compositional(doc: Document, r: dict[str, Any], files: Path) -> None:
    m = r["metrics"]
    roles = list(m["iou"])
    doc.h(2, "Scene-graph fidelity (SG-IoU family)")
    ex = r["provenance"].get("extractor", {})
    doc.p("Extractor: " + "; ".join(f"{g}: `{json.dumps(v, sort_keys=True)}`" for g, v in ex.items()))
    failed = "; ".join(f"{role} {rep['n_failed']}/{rep['n_images']} ({key})" for role in roles
                       for key, rep in list(m["iou"][role].items())[:1])
    doc.p(f"**Failed extractions:** {failed} (policy `{r['protocol']['compositional']['failures']}`)")
    header = ["granularity / mode", "role"] + [METRIC_NAMES[k] for k in METRIC_NAMES] + ["failed extractions"]
    rows = []
    for key in m["iou"][roles[0]]:
        for role in roles:
            rep = m["iou"][role][key]
            rows.append([key, role] + [_ci(rep["ci"][k]) for k in METRIC_NAMES] + [f"{rep['n_failed']}/"
                                                                                   f"{rep['n_images']}"])
    doc.table(header, rows)
    for key in m["iou"][roles[0]]:
        series = {role: [m["iou"][role][key]["ci"][k] for k in METRIC_NAMES] for role in roles}
        png = _bar_plot(files / f"iou_{key.replace('/', '_')}.png", f"mean [95% CI], {key}",
                        list(METRIC_NAMES.values()), series, "IoU")
        doc.image(png, f"SG-IoU family, {key}: means with bootstrap intervals")
    if m["vs_baseline"]:
        doc.h(2, "Model - baseline (paired, same graphs and seeds)")
        rows = [[key] + [_ci(d[k]) + (" *" if (d[k]["low"] > 0 or d[k]["high"] < 0) else "") for k in METRIC_NAMES]
                for key, d in m["vs_baseline"].items()]
        doc.table(["granularity / mode"] + [f"delta {METRIC_NAMES[k]}" for k in METRIC_NAMES], rows)
        doc.p("* the interval excludes 0.")
        keys = list(m["vs_baseline"])
        series = {key: [m["vs_baseline"][key][k] for k in METRIC_NAMES] for key in keys}
        png = _bar_plot(files / "iou_paired_difference.png", "model - baseline [95% paired CI]",
                        list(METRIC_NAMES.values()), series, "difference", hline=0.0)
        doc.image(png, "paired differences model - baseline")
    _spatial_section(doc, m.get("spatial"), roles)
    doc.h(2, "FID")
    fid = m["fid"]
    if "skipped" in fid:
        doc.p(f"Not computed: {fid['skipped']}.")
    else:
        feat = r["provenance"]["fid_features"]
        doc.p(f"Features: {feat.get('backbone')} ({feat.get('num_features')}-d, {feat.get('preprocess')} "
              f"preprocessing; choice `{feat.get('choice')}`). Reference: {fid[roles[0]]['reference']}.")
        shown = roles + (["floor"] if "floor" in fid else [])
        doc.table(["role", "FID [95% CI]", "real", "generated"],
                  [[role if role != "floor" else "floor (renders of other graphs)", _fid_ci(fid[role]),
                    str(fid[role]["n_real"]), str(fid[role]["n_fake"])] for role in shown])
        unit = fid[roles[0]]["ci"].get("unit", "image")
        doc.p(f"Intervals: bootstrap over {unit}, spread re-centred on the estimate (FID is biased upward at small "
              "N, so a plain percentile interval can exclude the estimate). Read a FID against the floor: the FID "
              "of perfect renders of other graphs at the same N.")
        if "vs_baseline" in fid:
            v = fid["vs_baseline"]
            d = v["difference"]
            doc.table(["FID model - baseline [95% paired CI]", "permutation p"],
                      [[_ci(d, 2) + (" *" if (d["low"] > 0 or d["high"] < 0) else ""), f"{v['p_value']:.3f}"]])
            doc.p("Paired: the same resampled graphs on both sides; the p-value swaps each graph's model and "
                  f"baseline images ({v['n_permutations']} permutations). * the interval excludes 0.")
        png = _bar_plot(files / "fid.png", "FID [95% bootstrap CI]", ["FID"],
                        {role: [fid[role]["ci"]] for role in shown}, "FID (lower is better)")
        doc.image(png, "FID with bootstrap intervals (asymmetric)")


def _spatial_section(doc: Document, sp: dict[str, Any] | None, roles: list[str]) -> None:
    """The spatial hold rate per role, its counts and the paired Δ (absent before results version 3)."""
    if sp is None:
        return
    doc.h(2, "Spatial relations")
    if "skipped" in sp:
        doc.p(f"Not computed: {sp['skipped']}.")
        return
    doc.p(f"Spatial hold rate: the {sp['definition']}. Size triples hold whenever both phrases are drawn, so this is "
          "the figure that says whether the layout follows the predicates (chance is about 1 in 4).")
    rows = [[role, _ci(sp[role]["holds_given_found"]) if sp[role]["holds_given_found"] else "n/a (none drawn)",
             str(sp[role]["triples"]), str(sp[role]["both_found"]), str(sp[role]["holds"])] for role in roles]
    doc.table(["role", "holds [95% CI]", "spatial triples", "both phrases drawn", "holding"], rows)
    d = sp.get("vs_baseline")
    if d:
        doc.p("Model - baseline (paired, same graphs and noise): " + _ci(d)
              + (" *" if (d["low"] > 0 or d["high"] < 0) else "") + ".")


def _fid_ci(d: dict[str, Any]) -> str:
    ci = d["ci"]
    if not ci["low"] <= d["fid"] <= ci["high"]:  # results.json from before the re-centred interval
        return f"{d['fid']:.2f} (interval excludes the estimate: not shown)"
    return _ci(ci, 2)


def _t2i(doc: Document, r: dict[str, Any], files: Path) -> None:
    m = r["metrics"]
    roles = list(m["scores"])
    doc.h(2, "Preference scores")
    for name, d in r["provenance"]["scorers"].items():
        doc.p(f"`{name}`: {d.get('definition', d.get('skipped', ''))}")
    rows = [[name, role, _ci(s["mean"]), _ci(s["median"])] for role in roles for name, s in m["scores"][role].items()]
    doc.table(["scorer", "role", "mean [95% CI]", "median [95% CI]"], rows)
    names = list(m["scores"][roles[0]])
    series = {role: [m["scores"][role][n]["mean"] for n in names] for role in roles}
    doc.image(_bar_plot(files / "scores.png", "mean score [95% CI]", names, series, "score"),
              "preference scores: means with bootstrap intervals")
    if m["vs_baseline"]:
        doc.h(2, "Model vs baseline (paired, same prompts and seeds)")
        rows = [[n, _ci(d["win_rate"]), f"{d['wins']}/{d['ties']}/{d['losses']}", _ci(d["mean_difference"])]
                for n, d in m["vs_baseline"].items()]
        doc.table(["scorer", "win-rate of model [95% CI]", "wins/ties/losses", "mean difference [95% CI]"], rows)
        series = {"win-rate": [d["win_rate"] for d in m["vs_baseline"].values()]}
        doc.image(_bar_plot(files / "win_rate.png", "win-rate of model over baseline [95% CI]",
                            list(m["vs_baseline"]), series, "win-rate", hline=0.5),
                  "win-rates (0.5 = no preference)")


def _grids(doc: Document, r: dict[str, Any], root: Path, files: Path) -> None:
    n = r["protocol"]["report"]["grid_graphs"]
    if n == 0:
        return
    seeds = r["protocol"]["sampling"]["seeds"]
    k = len(seeds)
    imgs = {role: np.load(root / rel)["images"] for role, rel in r["inputs"]["images"].items()}
    order = [role for role in ("baseline", "model") if role in imgs]
    ref_rel = r["inputs"].get("reference_images")
    refs = np.load(root / ref_rel)["images"] if ref_rel else None
    doc.h(2, "Image grids: input scene graph, baseline and model" if "baseline" in imgs else
          "Image grids: input scene graph and model")
    m = r["metrics"]
    for g in range(min(n, len(r["inputs"]["ids"]))):
        captions: dict[str, list[str]] = {}
        for role in order:
            if r["task"] == "compositional":
                key = next(iter(m["iou"][role]))
                per = m["iou"][role][key]["per_image"][g * k:(g + 1) * k]
                captions[role] = ["SG-IoU " + ("skip" if p is None else f"{p['sg_iou']:.2f}") for p in per]
            else:
                name = next(iter(m["scores"][role]), None)
                captions[role] = ["" if name is None else f"{name} {v:.2f}"
                                  for v in m["scores"][role][name]["per_image"][g * k:(g + 1) * k]]
        title = f"input {r['inputs']['ids'][g]}"
        if r["inputs"]["prompts"]:
            title += f": \"{r['inputs']['prompts'][g]}\""
        png = _grid(files / f"grid_{g:03d}.png", title, r["inputs"]["graphs"][g],
                    {role: imgs[role][g * k:(g + 1) * k] for role in order}, captions, seeds,
                    r["protocol"]["report"]["thumb_px"], None if refs is None else refs[g])
        doc.image(png, f"input {r['inputs']['ids'][g]}: scene graph, " + " and ".join(order) + " images")


def write_report(out_dir: str | Path, results: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report_files/`` into ``out_dir`` (which holds results.json)."""
    root = Path(out_dir)
    if results is None:
        path = root / RESULTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results.json; run scripts/evaluate.py first")
        results = json.loads(path.read_text(encoding="utf-8"))
    files = root / FILES_DIR
    if files.is_dir():  # the report owns this folder: no plot or grid of an earlier report may linger
        shutil.rmtree(files)
    files.mkdir(parents=True)
    doc = Document()
    _header(doc, results)
    (_compositional if results["task"] == "compositional" else _t2i)(doc, results, files)
    _grids(doc, results, root, files)
    md, page = root / "report.md", root / "report.html"
    md.write_text(doc.markdown(root), encoding="utf-8")
    page.write_text(doc.html(f"sgalign evaluation: {results['task']}"), encoding="utf-8")
    return {"markdown": md, "html": page, "files": files}
