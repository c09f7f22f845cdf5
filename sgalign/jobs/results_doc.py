"""The one writer of docs/RESULTS.md sections: benchmarks return results; this module renders them and puts each
section in place.

* ``write_section(path, title, text)``: replace the ``## title`` section of a markdown file (up to the next ``## ``
  heading or the end) with ``text``, or append it; every benchmark that updates docs goes through it.
* ``render_base_section(result)``: the "World base model" section of a ``jobs.base_bench.bench_world_base`` result.
* ``render_vae_section(result)``: the "World VAE" section of ``scripts/bench_world_vae.py``'s result.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PREAMBLE = "# Results\n\nMeasured numbers, with the command and machine that produced each.\n\n"


def write_section(path: str | Path, title: str, text: str, preamble: str = PREAMBLE) -> None:
    """Put ``text`` (a section starting with ``## title``) in the markdown file ``path``: it replaces the section of
    that title, from its heading to the next ``## `` heading or the end, or is appended; other sections are left as
    they are. A missing file is created with ``preamble``."""
    if not text.startswith(f"## {title}\n"):
        raise ValueError(f"section text must start with its heading '## {title}'")
    path = Path(path)
    doc = path.read_text() if path.exists() else preamble
    pat = re.compile(r"## " + re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
    doc = pat.sub(lambda _: text.rstrip("\n") + "\n", doc) if pat.search(doc) else doc.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


# ---- "World base model" -------------------------------------------------------------------------------------------
def render_base_section(r: dict[str, Any], title: str = "World base model") -> str:
    """The markdown section of one ``bench_world_base`` result (with the script's ``command`` and ``machine``)."""
    p, m = r["protocol"], r["machine"]
    fid, floor = r["fid_world_clip"], r["fid_renders_vs_renders"]
    recipe, total = _training_text(r.get("model_training") or {})
    ent = r["iou"]["phrase"]["mean"]["entity_iou"]
    sg = r["iou"]["phrase"]["mean"]["sg_iou"]
    target = _target_text(r, ent, sg)
    return f"""## {title}

World SD1.5-SG (`{r['model']}`, {total['steps']} training steps in all) on {p['n_graphs']} {p['split']}-split graphs
x {len(p['seeds'])} seeds ({p['n_images']} images,
{p['resolution']}x{p['resolution']}); {p['scheduler']} {p['steps']} steps, eta {p.get('eta', 0.0):g}, CFG {p['guidance_scale']}
{_graph_guidance_text(p)}(unconditional = empty text), seeds {p['seeds']}, noise rule {p.get('noise_rule', {}).get('rule', 'shared')}, initial noise mean scale {p.get('initial_noise_mean_scale', 1.0):g} (the
model's own, `model_index.json`). Scored by the world oracle (closed vocabulary, as LAION-SG's
SG-IoU prompt), `normalized` IoU mode; mean [95 % bootstrap CI, resampling graphs with all their seeds].

| entity granularity | Entity-IoU | Relation-IoU | SG-IoU |
|---|---|---|---|
{chr(10).join(_iou_rows(r["iou"]))}

{_spatial_text(r.get("spatial_hold"))}`phrase`: an entity is "colour size shape" and a triple holds only between objects with exactly those phrases
(strict); `label`: entities are shape labels, as LAION-SG's entity lists. With only three shape labels, spurious
blobs that the oracle reads as shapes raise label-level Entity-IoU (a random-init tiny model scores ~0.5 there),
so the phrase level is the one to read. Mean objects detected per image {r['mean_detected_objects']:.2f} (ground
truth {r['mean_gt_objects']:.2f}).

FID on world-CLIP image features ({fid['features'].get('num_features')}-d projected embeddings), generated vs the
renders of the same graphs: **{fid['fid']:.2f}** [{fid['ci']['low']:.2f}, {fid['ci']['high']:.2f}]
({fid['n_real']} renders vs {fid['n_fake']} images). Floor at this N (renders vs renders of other test graphs):
{floor['fid']:.2f}.

{_gap_text(r.get("conditioning_gap"))}{_probe_text(r.get("predicate_probe"))}
{target}

Model training: {recipe}; in all {total['steps']} optimiser steps, {total['wall_seconds']:.0f} s wall.

Command: `{r['command']}` ({r['total_seconds']:.0f} s, generation {r['generation_seconds']:.0f} s).
Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']} ({m['device']}), {m['torch_threads']}
threads, shared with other jobs: {m.get('shared_with_other_jobs', 'not recorded')}. Raw numbers: `results.json` next to the images.
"""


def _graph_guidance_text(p: dict) -> str:
    """The sampler beyond plain classifier-free guidance: graph guidance and guidance rescale, where used."""
    parts = []
    if p.get("graph_guidance_scale") is not None:
        parts.append(f"graph guidance {p['graph_guidance_scale']:g} against the {p.get('graph_guidance_negative')!r} "
                     f"branch on the steps with t >= {p.get('graph_guidance_min_t')}")
    if p.get("guidance_rescale"):
        parts.append(f"guidance rescale {p['guidance_rescale']:g}")
    return f"with {' and '.join(parts)} " if parts else ""



def _target_text(r: dict, ent: float, sg: float) -> str:
    """Issue 28's targets where the predicate probe ran (a base that reads its predicates), else issue 13's."""
    probe, sp = r.get("predicate_probe"), r.get("spatial_hold") or {}
    if not probe or (sp.get("holds_given_found") or {}).get("estimate") is None:
        return (f"Target (Entity-IoU >= 0.6, SG-IoU clearly below 1) at phrase granularity: Entity-IoU {ent:.3f} -> "
                f"{'met' if ent >= 0.6 else 'NOT met'}; SG-IoU {sg:.3f}.")
    d, hold, fid = probe["relation_iou_drop"], sp["holds_given_found"]["estimate"], r["fid_world_clip"]["fid"]
    checks = [(f"relation drop under inversion {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] >= 0.10 with "
               "its interval above 0", d["estimate"] >= 0.10 and d["low"] > 0),
              (f"spatial hold {hold:.3f} >= 0.55", hold >= 0.55), (f"Entity-IoU {ent:.3f} >= 0.70", ent >= 0.70),
              (f"SG-IoU {sg:.3f} <= 0.85", sg <= 0.85), (f"FID {fid:.2f} <= 5.8", fid <= 5.8)]
    return "Targets (issue 28) at phrase granularity: " + "; ".join(
        f"{text} -> {'met' if ok else 'NOT met'}" for text, ok in checks) + "."


def _fmt(mean: float, ci: dict) -> str:
    return f"{mean:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _iou_rows(iou: dict) -> list[str]:
    rows = []
    for gran in ("phrase", "label"):
        d = iou[gran]
        rows.append(f"| {gran} | {_fmt(d['mean']['entity_iou'], d['ci']['entity_iou'])} | "
                    f"{_fmt(d['mean']['relation_iou'], d['ci']['relation_iou'])} | "
                    f"{_fmt(d['mean']['sg_iou'], d['ci']['sg_iou'])} |")
    return rows


def _training_text(mt: dict) -> tuple[str, dict]:
    """(how the model was trained, {"steps", "wall_seconds"} in all) from a result's ``model_training``."""
    if mt.get("stages"):  # one-command recipe (sgalign.jobs.world_base): every stage in one record
        phases = mt.get("lineage") or []  # stage 1 resumed in phases with changed settings: not one command
        head = (f"not one command: stage 1 in {len(phases)} resumed phases ("
                + "; ".join(f"{ph['phase']} steps {ph['stage1_steps'][0]}-{ph['stage1_steps'][1]}: "
                            f"{ph.get('target') or ph.get('change')}" for ph in phases)
                + "; `training_record.json` `lineage`)") if phases else f"`{mt['recipe']}`"
        recipe = f"{head}: " + "; ".join(
            f"{name} {st.get('steps_done', st.get('steps', st.get('graphs', '')))}"
            f"{' steps' if name != 'cache' else ' graphs'} ({st.get('wall_seconds', 0):.0f} s)"
            for name, st in mt["stages"].items())
        return recipe, {"steps": mt.get("steps"), "wall_seconds": mt.get("wall_seconds") or 0}
    stages, st = [], mt
    while st:  # each stage records the one it started from: oldest first
        stages.insert(0, st)
        st = st.get("initialised_from")

    def command(st: dict) -> str:
        launcher = st.get("launcher", "").split(" (")[0]
        return f"{launcher} {st.get('recipe', '').removeprefix('python ')}" if launcher else st.get("recipe")

    recipe = "; then ".join(f"`{command(st)}` ({st.get('steps')} steps x batch {st.get('effective_batch')}, "
                            f"{st.get('wall_seconds', 0):.0f} s)" for st in stages)
    return recipe, mt.get("all_stages") or {"steps": mt.get("steps"), "wall_seconds": mt.get("wall_seconds") or 0}


def _gap_text(gap: dict | None) -> str:
    if not gap:
        return ""
    e = gap["eps_mse"]
    return (f"Conditioning gap ({gap['n_graphs']} graphs, one seeded noise and timestep each, the same for every "
            f"conditioning): eps-MSE true {e['true']:.4f}, text only (no SG residual) {e['text_only']:.4f}, "
            f"empty text {e['empty']:.4f}, shuffled graphs {e['shuffled']:.4f}"
            + (f", every predicate inverted {e['inverted']:.4f}" if "inverted" in e else "")
            + f"; the conditioning explains {100 * gap['share_of_loss_explained']:.0f} % of the empty-text loss."
            + ("" if "embedding_change" not in gap else " Conditioning embeddings moved (relative to the true graph's): "
               + ", ".join(f"{k} {v:.3f}" for k, v in gap["embedding_change"].items()) + ".") + "\n")


def _probe_text(probe: dict | None) -> str:
    if not probe:
        return ""
    r, d = probe["relation_iou_vs_true_graph"], probe["relation_iou_drop"]
    return (f"Predicate probe ({probe['n_graphs']} graphs with relations x seeds {probe['seeds']}, each sampled again "
            f"with every predicate inverted with the same noise, both scored against the true graph): phrase "
            f"Relation-IoU {r['true']:.3f} (true graph) vs {r['inverted']:.3f} (inverted), drop {d['estimate']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}]; mean pixel change {probe['pixel_change_inverted']:.1f} / 255 "
            + ("" if probe["pixel_change_other_seed"] is None else  # one seed: no other seed to compare with
               f"(another seed of the same graph: {probe['pixel_change_other_seed']:.1f})") + "." + _kinds_text(probe)
            + "\n")


def _spatial_text(sp: dict | None) -> str:
    if not sp or sp.get("holds_given_found") is None:
        return ""
    c = sp["holds_given_found"]
    return (f"Spatial hold rate (phrase granularity): of the true graphs' {sp['triples']} spatial triples, "
            f"{sp['both_found']} had both phrases drawn, and {c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}] of "
            f"those hold ({sp['holds']}).\n\n")


def _kinds_text(probe: dict) -> str:
    kinds = probe.get("triples_by_kind", {})
    out = ""
    for kind, v in kinds.get("true", {}).items():
        inv = kinds["inverted"][kind]["holds_given_found"]
        if v["both_found"] is not None and v["holds_given_found"] is not None and inv is not None:
            out += (f" {kind} triples: both phrases drawn {v['both_found']:.3f}, then holding "
                    f"{v['holds_given_found']:.3f} (true graph) / {inv:.3f} (inverted);")
    return out


# ---- "World VAE" --------------------------------------------------------------------------------------------------
def render_vae_section(r: dict[str, Any]) -> str:
    """The "World VAE" section of a ``scripts/bench_world_vae.py`` result: per VAE, its reconstruction and blend
    test; then each VAE's centre readings along the background -> colour paths."""
    lines = ["| VAE | training | PSNR dB | oracle reads exactly | blend test (bg -> colour) | colour pairs through "
             "a third colour |", "|---|---|---|---|---|---|"]
    paths = []
    for name, v in r["vaes"].items():
        b, rc, t = v["blend"], v["recon"], v["trained"]
        ok = sum(x["passes"] for x in b["background"].values())
        bad_pairs = sum(1 for x in b["pairs"].values() if x["other_colours"])
        steps = t.get("steps_done") or t.get("steps")
        lines.append(f"| {name} | {steps} steps, interp weight {t.get('interp_weight', 0) or 0:g} | "
                     f"{rc['psnr_db']:.2f} | {rc['oracle_objects_exact']:.3f} | {ok}/{len(b['background'])} "
                     f"{'pass' if b['passes'] else 'FAIL'} | {bad_pairs}/{len(b['pairs'])} |")
        paths.append(f"* {name}: " + "; ".join(f"{c} `{' '.join(x[:3] for x in d['reads'])}` (max "
                                              f"{d['max_rgb_off_line']:.0f} RGB off the blend line)"
                                              for c, d in b["background"].items()))
    m = r["machine"]
    return f"""## World VAE

The blend test and reconstruction quality ({r['n_test_renders']} test renders, posterior mode). Blend test: latent
paths background -> colour decoded and the centre read with the oracle's colour model; a colour passes iff every
point reads as the background or that colour (`sgalign.world.models.vae.blend_test`).

{chr(10).join(lines)}

Centre readings along each background -> colour path (l = 0, 0.1, ..., 1):

{chr(10).join(paths)}

Command: `{r['command']}`. Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']} ({m['device']}).
"""
