"""The house's layer order, checked from the code's own imports (README, "Architecture notes").

Every ``import`` / ``from ... import`` in ``sgalign/`` and ``data_builders/`` -- at module level or inside a
function -- may name a module of its own layer or of a lower one, never of a higher one:

    0  scene_graph, diffusion, config, world, machine (and the small shared modules at sgalign/'s top:
       errors, hashing, outdir, progress, pair_schema, _torchvision_guard)
    1  models, methods, rewards
    2  pipelines, training, evaluation, data_builders
    3  jobs
    (scripts/ on top: they may import anything)

and no module there edits ``sys.path``. Within that order, ``training/`` imports neither ``world`` nor
``pipelines.tiny``: which base model a run starts from ("auto": the world model or a tiny random init) is decided
by the command layer, and the trainer takes a folder (the SG pre-training takes the world renders and tiny components
from ``jobs.pretrain_sg``).

An import inside a function says why it is not at the module's top (an optional dependency, a heavy import on a
cold path, or an import cycle) in a comment on its line or the line before; a comment that opens a block of such
imports covers the block.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sgalign", "data_builders")
LAYERS = {
    0: ("scene_graph", "diffusion", "config", "world", "machine", "errors", "hashing", "outdir", "progress",
        "pair_schema", "_torchvision_guard"),
    1: ("models", "methods", "rewards"),
    2: ("pipelines", "training", "evaluation", "data_builders"),
    3: ("jobs",),
}
LAYER_OF = {unit: n for n, units in LAYERS.items() for unit in units}


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted module name: ``sgalign.X...`` -> X, ``data_builders...`` -> data_builders;
    ``sgalign`` itself (the package __init__) -> "" ; anything else (third-party) -> None."""
    parts = module.split(".")
    if parts[0] == "data_builders":
        return "data_builders"
    if parts[0] != "sgalign":
        return None
    return parts[1] if len(parts) > 1 else ""


def source_files():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, mod: str | None = None):
    """(line, imported module) of every import statement in ``path`` (module ``mod``, by default its own dotted
    name), relative imports resolved."""
    mod = mod or module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # from . import x, y: each name may be a module of its own unit
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def test_every_module_has_a_layer():
    units = {unit_of(module_name(f)) for f in source_files()}
    units.discard("")  # sgalign/__init__.py
    assert units <= set(LAYER_OF), f"modules without a layer (add them to LAYERS and the README): " \
                                   f"{sorted(units - set(LAYER_OF))}"


def test_imports_only_go_down():
    upward = []
    for f in source_files():
        src = unit_of(module_name(f))
        if src == "":
            continue
        for line, target in imports(f):
            dst = unit_of(target)
            if dst is None or dst == "" or dst == src:
                continue
            if LAYER_OF[dst] > LAYER_OF[src]:
                upward.append(f"{f.relative_to(ROOT)}:{line}: {src} (layer {LAYER_OF[src]}) imports {target} "
                              f"(layer {LAYER_OF[dst]})")
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


# unit -> modules it must not import even where the layer order allows it
FORBIDDEN = {"training": ("sgalign.world", "sgalign.pipelines.tiny")}


def forbidden_imports(path: Path, mod: str | None = None) -> set[str]:
    """The FORBIDDEN prefixes that ``path`` (module ``mod``, by default its own dotted name) imports."""
    banned = FORBIDDEN.get(unit_of(mod or module_name(path)) or "", ())
    return {p for _, t in imports(path, mod) for p in banned if t == p or t.startswith(p + ".")}


def test_training_imports_neither_the_world_nor_the_tiny_factory():
    """No exception: the SG pre-training gets its world renders and tiny components from jobs.pretrain_sg."""
    hits = {str(f.relative_to(ROOT)): sorted(h) for f in source_files() if (h := forbidden_imports(f))}
    assert not hits, f"training/ imports what it must not (resolve models and world data in jobs/): {hits}"


def test_the_forbidden_check_sees_what_the_trainer_used_to_import(tmp_path):
    import textwrap

    f = tmp_path / "probe.py"
    f.write_text(textwrap.dedent("""
        from ..world.paths import world_model_path
        def f():
            from ..pipelines.tiny import make_tiny
            from ..pipelines import sg_pipeline
    """))
    assert forbidden_imports(f, "sgalign.training.probe") == {"sgalign.world", "sgalign.pipelines.tiny"}
    assert forbidden_imports(f, "sgalign.jobs.probe") == set()  # the command layer may


# the classes of a denoising model: loaded only by models.loading.load_model (issue 30 item 1, "one model object")
DENOISER_CLASSES = {"UNet2DConditionModel", "DiffusionPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline",
                    "StableDiffusionSGPipeline", "StableDiffusionXLSGPipeline", "SGPipelineBase"}
THE_LOADER = ROOT / "sgalign" / "models" / "loading.py"


def loader_bypasses(path: Path) -> list[str]:
    """``X.from_pretrained(...)`` of a denoiser class X, or any ``.from_local(...)``, called in ``path``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if node.func.attr == "from_local" or (node.func.attr == "from_pretrained" and owner in DENOISER_CLASSES):
                hits.append(f"{path.name}:{node.lineno}: {owner or '...'}.{node.func.attr}")
    return hits


def test_models_load_through_the_one_loader():
    hits = [h for f in source_files() if f != THE_LOADER for h in loader_bypasses(f)]
    assert not hits, "a model loaded around models.loading.load_model (use it, or sgalign.pipelines." \
                     "load_pipeline / build_pipeline):\n" + "\n".join(hits)


def test_the_loader_check_sees_a_bypass(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def f(p):\n    a = UNet2DConditionModel.from_pretrained(p)\n    b = CLIPModel.from_pretrained(p)\n"
                 "    return StableDiffusionSGPipeline.from_local(p)\n")
    assert loader_bypasses(f) == ["probe.py:2: UNet2DConditionModel.from_pretrained",
                                  "probe.py:4: StableDiffusionSGPipeline.from_local"]


def test_package_init_imports_nothing_above_the_bottom():
    init = ROOT / "sgalign" / "__init__.py"
    bad = [t for _, t in imports(init) if unit_of(t) not in (None, "") and LAYER_OF[unit_of(t)] > 0]
    assert not bad, f"sgalign/__init__.py imports {bad}: importing sgalign would load higher layers"


def test_no_sys_path_edits_in_the_library():
    hits = []
    for f in source_files():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                hits.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not hits, "sys.path used inside the library: " + ", ".join(hits)


@pytest.mark.parametrize("module, unit", [("sgalign.world.sampler", "world"), ("data_builders.cli", "data_builders"),
                                          ("sgalign", ""), ("torch.nn", None)])
def test_unit_of(module, unit):
    assert unit_of(module) == unit


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    """A relative import inside a function is resolved against its package (the form every upward import took)."""
    import textwrap

    f = tmp_path / "probe.py"
    f.write_text(textwrap.dedent("""
        def f():
            from ..training.trainer import train
            from . import sampler
    """))
    assert [t for _, t in imports(f, "sgalign.world.probe")] == ["sgalign.training.trainer", "sgalign.world.sampler"]


def function_level_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, text, explained) of every import statement inside a function of ``path``. Explained: a comment on one of
    its lines or on the line before, or it directly follows an explained function-level import (one comment above a
    block covers the block)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    nodes = {}
    for fn in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nodes[node.lineno] = node
    out, explained_end = [], set()
    for line in sorted(nodes):
        node = nodes[line]
        own = any("#" in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1))
        before = node.lineno > 1 and lines[node.lineno - 2].strip().startswith("#")
        ok = own or before or (node.lineno - 1) in explained_end
        if ok:
            explained_end.add(node.end_lineno)
        out.append((node.lineno, lines[node.lineno - 1].strip(), ok))
    return out


def test_function_level_imports_say_why():
    """Imports go at the module's top; one stays in a function only for an optional dependency, a heavy import on a
    cold path (e.g. a script's --help) or an import cycle, and says which."""
    bare = [f"{f.relative_to(ROOT)}:{line}: {text}" for f in source_files()
            for line, text, ok in function_level_imports(f) if not ok]
    assert not bare, ("imports inside functions without a comment saying why (move them to the module's top, or "
                      "say: optional dependency / heavy: <what it keeps light> / cycle: <who imports whom>):\n"
                      + "\n".join(bare))


def test_the_why_check_sees_a_bare_function_level_import(tmp_path):
    import textwrap

    f = tmp_path / "probe.py"
    f.write_text(textwrap.dedent("""
        import os


        def f():
            import json
            import torch  # heavy: keeps --help light
            import diffusers
            # optional dependency
            import bitsandbytes

            import yaml
            from a import (b,
                           c)  # cycle: a imports this module
    """))
    assert [(line, ok) for line, _, ok in function_level_imports(f)] == [
        (6, False), (7, True), (8, True), (10, True), (12, False), (13, True)]
