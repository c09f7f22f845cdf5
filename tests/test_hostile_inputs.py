"""Issue 29: bad inputs as a hostile or careless user gives them. Each is refused with exit 2 before the work,
and the input is left byte for byte as it was; a damaged build folder is rebuilt, never trusted."""
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from build_pairs_helpers import SMALL, rows, small_config, tiny  # noqa: F401 (tiny: a fixture)
from data_builders import cli as build_cli
from data_builders import shards as sh
from data_builders.laion_sg import build_candidates, load_candidates
from data_builders.shapes import plan_world
from helpers import evaluate_main
from sgalign.errors import EXIT_USAGE, UserError
from sgalign.jobs import train_cli

N = 3  # world annotations, one per shard


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (the input's state, to compare before / after)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _build(tiny, out, seed=0):
    cfg = small_config(tiny, world={"n": N}, generation={"seed": seed})
    build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """A finished build_pairs folder (3 shards), and one of another seed (its shards are another build's)."""
    root = tmp_path_factory.mktemp("built")
    return {"a": _build(tiny, root / "a"), "b": _build(tiny, root / "b", seed=1)}


def _nan_reward(d: Path) -> None:
    """Shard 0 rewritten with a NaN reward, its manifest and the index updated to match (only the NaN is wrong)."""
    import pyarrow.parquet as pq
    f = d / sh.shard_name(0)
    t = pq.read_table(f).to_pydict()
    t["reward"][0] = [math.nan] + t["reward"][0][1:]
    from sgalign.pair_schema import candidate_features
    sh.write_parquet_atomic(f, t, candidate_features(list(t["scores"][0])))
    idx = json.loads((d / "index.json").read_text())
    idx["shards"][0].update(sha256=sh.file_sha256(f), size=f.stat().st_size)
    (d / "index.json").write_text(json.dumps(idx))


DAMAGE = {
    "deleted shard": lambda d, b: (d / sh.shard_name(2)).unlink(),
    "stray copy": lambda d, b: shutil.copy(d / sh.shard_name(0), d / "shard (copy).parquet"),
    "other build's shard": lambda d, b: shutil.copy(b / sh.shard_name(1), d / sh.shard_name(1)),
    "truncated shard": lambda d, b: (d / sh.shard_name(1)).write_bytes((d / sh.shard_name(1)).read_bytes()[:200]),
    "complete false": lambda d, b: (d / "index.json").write_text(
        json.dumps({**json.loads((d / "index.json").read_text()), "complete": False})),
    "corrupt index": lambda d, b: (d / "index.json").write_text('{"complete": true, "shards": [{'),
    "deep index": lambda d, b: (d / "index.json").write_text("[" * 100000 + "]" * 100000),
    "index without shards": lambda d, b: (d / "index.json").write_text('{"complete": true, "rows": 3}'),
    "nan reward": lambda d, b: _nan_reward(d),
    "shard listed twice": lambda d, b: _edit_index(d, lambda i: i["shards"].append(i["shards"][0])),
    "path outside the folder": lambda d, b: _edit_index(d, lambda i: i["shards"][0].update(file="../x.parquet")),
    "index is a list": lambda d, b: (d / "index.json").write_text("[]"),
}


def _edit_index(d: Path, edit) -> None:
    idx = json.loads((d / "index.json").read_text())
    edit(idx)
    (d / "index.json").write_text(json.dumps(idx))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_refuses_a_dataset_that_is_not_its_index(built, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    DAMAGE[damage](data, built["b"])
    before = snapshot(data)
    run = tmp_path / "run"
    rc = train_cli.main(["--task", "compositional", "--set", f"data.path={data}",
                         "--set", f"trainer.output_dir={run}"])
    assert rc == EXIT_USAGE
    assert not run.exists()  # refused before the run folder (or any model) was made
    assert snapshot(data) == before


def test_intact_dataset_verifies_and_the_stamp_never_trusts_a_changed_file(built, tmp_path, monkeypatch):
    from sgalign import hashing
    from sgalign.training.data import DatasetMismatch, verify_dataset
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    monkeypatch.setenv(hashing.STAMPS_ENV, str(tmp_path / "stamps"))
    monkeypatch.setattr(hashing, "_STAMP_MIN_AGE_NS", 0)  # stamp files just written
    idx = verify_dataset(data)
    assert idx["rows"] == N and all(s["size"] == (data / s["file"]).stat().st_size for s in idx["shards"])
    assert len(list((tmp_path / "stamps").iterdir())) == N  # stamped, outside the data
    calls = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: calls.append(p) or real(p))
    verify_dataset(data)
    assert calls == []  # unchanged files: taken from the stamps
    f = data / sh.shard_name(1)
    st, b = f.stat(), bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the ctime says it changed
    with pytest.raises(DatasetMismatch):
        verify_dataset(data)
    assert calls  # rehashed


@pytest.mark.parametrize("damage", ["other build's shard", "truncated shard"])
def test_resumed_build_pairs_rebuilds_a_shard_that_fails_verification(tiny, built, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(built["a"], out)
    DAMAGE[damage](out, built["b"])
    (out / "index.json").unlink()  # as if killed before the end; the rerun also re-checks finished shards
    logs = []
    cfg = small_config(tiny, world={"n": N})
    build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=logs.append)
    assert any("rebuilding shard 1" in x for x in logs)
    assert rows(load_candidates(out)) == rows(load_candidates(built["a"]))  # the same dataset, bit for bit


def test_resumed_build_pairs_refuses_a_stray_data_file(tiny, built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built["a"], out)
    DAMAGE["stray copy"](out, built["b"])
    before = snapshot(out)
    args = ["--source", "shapes", "--n", str(N), "--model", str(tiny), "--out", str(out), "--no-progress",
            *[x for s in SMALL for x in ("--set", s)]]
    assert build_cli.main(args) == EXIT_USAGE
    assert snapshot(out) == before


# ---- outputs inside inputs --------------------------------------------------------------------------------------
@pytest.fixture
def model(tmp_path):
    """A stand-in model folder: every command refuses before it reads a weight."""
    m = tmp_path / "M"
    (m / "unet").mkdir(parents=True)
    (m / "model_index.json").write_text('{"_class_name": "StableDiffusionSGPipeline"}')
    (m / "unet" / "config.json").write_text("{}")
    return m


def test_train_refuses_output_inside_the_model(model, tmp_path):
    before = snapshot(model)
    for out in (model / "sub", model / "unet" / "deeper" / "x"):
        assert train_cli.main(["--task", "compositional", "--set", f"model.path={model}",
                               "--set", "data.path=synthetic", "--set", f"trainer.output_dir={out}"]) == EXIT_USAGE
    assert snapshot(model) == before and sorted(p.name for p in model.iterdir()) == ["model_index.json", "unet"]


def test_train_refuses_output_inside_its_data_or_config(built, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    (cfgdir / "c.yaml").write_text("task: compositional\ndata: {path: synthetic}\n")
    before = snapshot(tmp_path)
    assert train_cli.main(["--task", "compositional", "--set", f"data.path={data}",
                           "--set", f"trainer.output_dir={data / 'run'}"]) == EXIT_USAGE
    assert train_cli.main(["--task", "compositional", "--config", str(cfgdir / "c.yaml"),
                           "--set", f"trainer.output_dir={cfgdir / 'c.yaml' / 'run'}"]) == EXIT_USAGE
    assert snapshot(tmp_path) == before


def test_build_pairs_refuses_out_inside_the_model(model, tmp_path):
    before = snapshot(model)
    assert build_cli.main(["--source", "shapes", "--n", "2", "--model", str(model), "--out",
                           str(model / "pairs")]) == EXIT_USAGE
    assert snapshot(model) == before and not (model / "pairs").exists()


def test_evaluate_refuses_out_inside_the_model(model, tmp_path):
    before = snapshot(model)
    assert evaluate_main()(["--task", "compositional", "--model", str(model), "--out", str(model / "ev")]) == \
        EXIT_USAGE
    assert snapshot(model) == before and not (model / "ev").exists()


def test_refuse_inputs_rules(tmp_path):
    from sgalign.outdir import OutputIsInput, refuse_inputs
    m = tmp_path / "M"
    m.mkdir()
    (tmp_path / "link").symlink_to(m)
    for out in (m, m / "a", m / "a" / "b", tmp_path / "link" / "x", m / ".." / "M" / "y"):
        with pytest.raises(OutputIsInput):
            refuse_inputs({"--out": out}, {"--model": m})
    refuse_inputs({"--out": tmp_path / "other"}, {"--model": m})
    refuse_inputs({"--out": tmp_path}, {"--model": m})  # a parent, not emptied: allowed
    with pytest.raises(OutputIsInput):
        refuse_inputs({"--out": tmp_path}, {"--model": m}, emptied=True)
    assert issubclass(OutputIsInput, UserError)


# ---- configs ----------------------------------------------------------------------------------------------------
def _train(tmp_path, *args):
    return train_cli.main(["--task", "compositional", "--set", "data.path=synthetic",
                           "--set", f"trainer.output_dir={tmp_path / 'run'}", *args])


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just a string\n", "[" * 1200])
def test_empty_or_non_mapping_config_file_is_2_in_every_command(tmp_path, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert _train(tmp_path, "--config", str(cfg)) == EXIT_USAGE
    assert build_cli.main(["--source", "shapes", "--config", str(cfg), "--out", str(tmp_path / "bp")]) == EXIT_USAGE
    assert evaluate_main()(["--task", "compositional", "--config", str(cfg), "--model", str(tmp_path),
                            "--out", str(tmp_path / "ev")]) == EXIT_USAGE
    assert not any((tmp_path / d).exists() for d in ("run", "bp", "ev"))


@pytest.mark.parametrize("setting", ["optimizer.lr=.inf", "optimizer.lr=nan", "optimizer.betas=[0.9, .nan]",
                                     "data.margin=inf", "data.margin=.inf", "method.options.diffusion-dpo.beta=.inf",
                                     "method.options.inpo.beta=nan", "trainer.ema_decay=.nan",
                                     "trainer.max_steps=1000000000", "trainer.gradient_accumulation_steps=10000000",
                                     "checkpointing.every=1000000000"])
def test_train_refuses_nonfinite_and_unbounded_settings(tmp_path, setting):
    assert _train(tmp_path, "--set", setting) == EXIT_USAGE
    assert not (tmp_path / "run").exists()


def test_every_config_float_rejects_nan_and_inf():
    """The rule lives in the base class: every section of every command's config refuses nan / inf."""
    from pydantic import ValidationError
    from data_builders.config import BuildPairsConfig, GenerationSection
    from sgalign.config import ConfigModel
    from sgalign.evaluation.protocol import EvalProtocol, SamplingProtocol
    assert ConfigModel.model_config["allow_inf_nan"] is False
    for cls, field in ((GenerationSection, "guidance_scale"), (SamplingProtocol, "guidance_scale"),
                       (GenerationSection, "eta")):
        for bad in (math.nan, math.inf, "nan", "-inf"):
            with pytest.raises(ValidationError):
                cls(**{field: bad})
    assert EvalProtocol() and BuildPairsConfig()


def test_nan_guidance_is_refused_before_sampling(tmp_path, tiny):
    assert evaluate_main()(["--task", "compositional", "--model", str(tiny), "--out", str(tmp_path / "ev"),
                            "--set", "sampling.guidance_scale=.nan"]) == EXIT_USAGE
    assert build_cli.main(["--source", "shapes", "--n", "2", "--model", str(tiny), "--out", str(tmp_path / "bp"),
                           "--set", "generation.guidance_scale=nan"]) == EXIT_USAGE
    assert not (tmp_path / "ev").exists() and not (tmp_path / "bp").exists()


def test_divergence_advice_is_a_command_that_works(tiny, tmp_path, capsys):
    import shlex
    run = tmp_path / "r"
    rc = train_cli.main(["--task", "compositional", "--set", f"model.path={tiny}", "--set", "data.path=synthetic",
                         "--set", f"trainer.output_dir={run}", "--set", "optimizer.lr=1e10",
                         "--set", "optimizer.warmup_steps=0", "--set", "trainer.max_steps=6",
                         "--set", "checkpointing.every=0", "--set", "logging.tqdm=false"])
    assert rc == 3
    nxt = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("next: ")]
    argv = shlex.split(nxt[-1].removeprefix("next: "))
    assert argv[:2] == ["python", "scripts/train.py"]
    args, cfg = train_cli.parse(argv[2:])  # the command parses: its config is valid
    assert cfg.optimizer.lr == pytest.approx(1e9) and cfg.model.path == str(tiny)
    out = Path(cfg.trainer.output_dir)
    assert not out.exists() and out.parent == run.parent  # a new run beside the diverged one: nothing refuses it
    from sgalign.outdir import refuse_inputs
    from sgalign.training.trainer import train_inputs
    refuse_inputs({"trainer.output_dir": out}, train_inputs(cfg, args.config), emptied=True)


# ---- exit codes and messages ------------------------------------------------------------------------------------
def validate_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("validate_script", Path(__file__).resolve().parents[1] /
                                                  "scripts" / "validate_sg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_deeply_nested_json_is_2(tiny, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    before = deep.read_bytes()
    assert validate_main()([str(deep)]) == EXIT_USAGE
    assert "deep.json" in _error_line(capsys.readouterr().err)
    assert build_cli.main(["--source", "laion-sg", "--annotations", str(deep), "--out", str(tmp_path / "o")]) == 2
    assert "deep.json" in _error_line(capsys.readouterr().err)
    for task in ("compositional", "t2i"):  # evaluate's inputs.path: a split file or a prompt list
        assert evaluate_main()(["--task", task, "--model", str(tiny), "--out", str(tmp_path / f"e-{task}"),
                                "--set", "inputs.source=file", "--set", f"inputs.path={deep}"]) == EXIT_USAGE
        assert "deep.json" in _error_line(capsys.readouterr().err)
    assert deep.read_bytes() == before and not (tmp_path / "o").exists()


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_weights_are_2_before_sampling(tiny, tmp_path, capsys, monkeypatch):
    from sgalign.evaluation import run as eval_run
    from sgalign.pipelines.tiny import make_tiny
    truncated = _copy_model(tiny, tmp_path / "truncated")
    f = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    other = _copy_model(tiny, tmp_path / "other")
    wide = make_tiny("sdxl-sg", tmp_path / "wide")  # another architecture
    shutil.copy(wide / "unet" / "diffusion_pytorch_model.safetensors", other / "unet")
    sampled = []
    monkeypatch.setattr(eval_run, "generate", lambda *a, **k: sampled.append(1) or (_ for _ in ()).throw(
        AssertionError("sampled")))
    for model, baseline, bad in ((truncated, None, "unet"), (tiny, truncated, "unet"), (tiny, other, "unet")):
        out = tmp_path / "ev"
        args = ["--task", "compositional", "--model", str(model), "--out", str(out)]
        assert evaluate_main()(args + (["--baseline", str(baseline)] if baseline else [])) == EXIT_USAGE
        line = _error_line(capsys.readouterr().err)
        assert f"{bad}/diffusion_pytorch_model.safetensors" in line and len(line) <= 300
        assert not out.exists() and not sampled
    assert build_cli.main(["--source", "shapes", "--n", "2", "--model", str(other), "--out",
                           str(tmp_path / "bp"), "--no-progress"]) == EXIT_USAGE


def test_resume_to_a_missing_path_is_2(tmp_path):
    assert _train(tmp_path, "--resume", str(tmp_path / "no-such-checkpoint")) == EXIT_USAGE
    assert not (tmp_path / "run").exists()


def test_rejects_pointing_at_a_directory_is_2(tmp_path):
    from data_builders.config import WORLD_ANNOTATIONS
    split = tmp_path / "s.json"
    split.write_bytes(WORLD_ANNOTATIONS.read_bytes())
    (tmp_path / "rej").mkdir()
    assert validate_main()([str(split), "--rejects", str(tmp_path / "rej")]) == EXIT_USAGE
    assert list((tmp_path / "rej").iterdir()) == [] and split.read_bytes() == WORLD_ANNOTATIONS.read_bytes()


def test_a_huge_label_gives_one_short_line(tmp_path, capsys):
    from data_builders.config import WORLD_ANNOTATIONS
    recs = json.loads(WORLD_ANNOTATIONS.read_text())[:3]
    recs[0]["items"][0]["label"] = "x" * 100_000
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(recs))
    assert build_cli.main(["--source", "laion-sg", "--annotations", str(ann), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert len(line) <= 300 and "(100000 chars)" in line


def test_one_line_caps_every_message():
    from sgalign.errors import one_line, run_main

    def boom():
        raise UserError("field x: " + "y" * 10_000 + "\nsecond line")
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert run_main(boom) == EXIT_USAGE
    assert buf.getvalue().count("\n") == 1 and len(buf.getvalue().strip()) <= 300
    assert len(one_line("a" * 1000)) == 300 and one_line("a\nb") == "a; b"


def test_next_lines_are_shell_quoted(tmp_path):
    import shlex
    from data_builders.cli import next_command as build_next
    from sgalign.jobs.train_cli import next_command as train_next
    odd = tmp_path / "my data; rm -rf ~ 'x'"
    assert shlex.split(build_next("shapes", odd))[-2:] == ["--set", f"data.path={odd}"]
    assert shlex.split(build_next("world-pickapic", odd))[-1] == str(odd)
    assert shlex.split(train_next("compositional", odd))[-1] == str(odd / "final")


def test_library_progress_bars_are_off_without_a_terminal(tiny, capfd):
    from sgalign.evaluation.sampling import load_evaluated_model
    load_evaluated_model(tiny, "compositional")
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "it/s]" not in err


# ---- the validator ----------------------------------------------------------------------------------------------
def _record(img_id="1", **item):
    return {"img_id": img_id, "name": "n.jpg", "caption_ori": "c", "score": "0.5", "url": "u",
            "items": [{"item_id": 0, "label": "cube", "attributes": ["red"], "global_item_id": 0, **item}],
            "relations": []}


BAD_RECORDS = {
    "score underscore": ('{"score": "1_0"}', "score"),
    "score padded": ('{"score": " 1.0 "}', "score"),
    "score hex": ('{"score": "0x1p3"}', "score"),
    "score nan text": ('{"score": "nan"}', "score"),
    "NUL in label": ('{"label": "cu\\u0000be"}', "items.0.label"),
    "zero-width space in label": ('{"label": "cu\\u200bbe"}', "items.0.label"),
    "line separator in attribute": ('{"attributes": ["re\\u2028d"]}', "items.0.attributes"),
    "bidi mark in label": ('{"label": "\\u202ecube"}', "items.0.label"),
    "duplicate key in item": ('{"label": "cube", "label": "ball"}', "items.0.label"),
}


def _split_text(bad: str) -> str:
    """Two valid records and one bad one in between, written as raw JSON text (duplicate keys survive)."""
    patch = bad.strip("{}")
    good = json.dumps(_record("1"))
    rec = _record("2")
    target = "record" if patch.startswith('"score"') else "item"
    if target == "record":
        del rec["score"]
        text = json.dumps(rec)[:-1] + ", " + patch + "}"
    else:
        for k in ("label", "attributes"):
            if f'"{k}"' in patch:
                del rec["items"][0][k]
        it = json.dumps(rec["items"][0])[:-1] + ", " + patch + "}"
        rec["items"] = ["ITEM"]
        text = json.dumps(rec).replace('"ITEM"', it)
    return f"[{good}, {text}, {json.dumps(_record('3'))}]"


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_validator_rejects_naming_the_field_and_build_pairs_agrees(tmp_path, case):
    from data_builders.laion_sg import plan_annotations
    from sgalign.scene_graph import load_split
    bad, field = BAD_RECORDS[case]
    split = tmp_path / "s.json"
    split.write_text(_split_text(bad))
    loaded = load_split(split)
    assert [r.img_id for r in loaded.records] == ["1", "3"]
    assert [(r.index, r.field) for r in loaded.rejects] == [(1, field)]
    assert validate_main()([str(split)]) == 1
    plan = plan_annotations(split)
    assert [r.img_id for r in plan.records] == ["1", "3"] and [r["index"] for r in plan.rejects] == [1]


def test_duplicate_top_level_key_and_nan_constants(tmp_path):
    from sgalign.scene_graph import SplitFileError, load_split
    split = tmp_path / "s.json"
    split.write_text('[{"img_id": "1", "img_id": "2"}]')
    assert [(r.field, r.index) for r in load_split(split).rejects] == [("img_id", 0)]
    split.write_text('[{"img_id": NaN}]')  # not JSON: the file is refused
    with pytest.raises(SplitFileError):
        load_split(split)


def test_rejects_file_is_strict_json_lines(tmp_path):
    from sgalign.scene_graph import load_split
    from sgalign.scene_graph.io import Reject, write_rejects
    split = tmp_path / "s.json"
    split.write_text(_split_text(BAD_RECORDS["score padded"][0]))
    out = tmp_path / "r.jsonl"
    load_split(split, rejects_path=out)
    write_rejects([Reject(0, None, "score", "x", (), {"score": math.nan, "v": [math.inf]})], tmp_path / "n.jsonl")
    for f in (out, tmp_path / "n.jsonl"):
        for line in f.read_text().splitlines():
            json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_empty_split_gets_the_same_verdict_everywhere(tmp_path):
    split = tmp_path / "empty.json"
    split.write_text("[]")
    assert validate_main()([str(split)]) == EXIT_USAGE
    assert build_cli.main(["--source", "laion-sg", "--annotations", str(split), "--out", str(tmp_path / "o")]) == 2
    assert split.read_text() == "[]"
