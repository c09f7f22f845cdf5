"""One exit-code scheme (issue 16 item 7): 2 = bad input or config, 1 = failure during the work, 3 = diverged;
user errors are one line on stderr naming the file / field / component, tracebacks only with --debug."""
import importlib.util
import shutil
from pathlib import Path

import pytest

from data_builders import cli as build_cli
from sgalign.errors import run_main
from sgalign.pipelines.tiny import make_tiny
from sgalign.scene_graph import SplitFileError
from sgalign.jobs import train_cli
from helpers import evaluate_main

REPO = Path(__file__).resolve().parent.parent


def validate_main():
    spec = importlib.util.spec_from_file_location("validate_script", REPO / "scripts" / "validate_sg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def one_line(err: str) -> bool:
    """Our error is a single line (libraries may have written other lines before it; a ``next:`` command may follow
    it)."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("next: ")]
    return err.count("error:") == 1 and "Traceback" not in err and lines[-1].count("error:") == 1


def test_unreadable_annotations_are_2_in_every_command(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert validate_main()([str(bad)]) == 2
    assert one_line(capsys.readouterr().err)
    assert build_cli.main(["--source", "laion-sg", "--annotations", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and str(bad) in err
    with pytest.raises(SplitFileError):  # --debug: the exception itself, with its traceback
        build_cli.main(["--source", "laion-sg", "--annotations", str(bad), "--out", str(tmp_path / "o"), "--debug"])


def test_unwritable_out_is_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert build_cli.main(["--source", "laion-sg", "--n", "2", "--out", str(blocker / "sub")]) == 2
    assert one_line(capsys.readouterr().err)

    def read_only():  # as a read-only folder does for a non-root user (tests may run as root)
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "build.json"))
    assert run_main(read_only) == 2
    assert "cannot write" in capsys.readouterr().err


def test_failure_during_work_is_1_and_debug_shows_it():
    def boom():
        raise RuntimeError("disk on fire")
    assert run_main(boom) == 1
    with pytest.raises(RuntimeError):
        run_main(boom, debug=True)


def test_empty_graphs_file_is_2(tmp_path, capsys):
    model = make_tiny("sd15-sg", tmp_path / "m")
    (tmp_path / "empty.json").write_text("[]")
    rc = evaluate_main()(["--task", "compositional", "--model", str(model), "--out", str(tmp_path / "e"),
                          "--set", "inputs.source=file", "--set", f"inputs.path={tmp_path / 'empty.json'}",
                          "--set", "inputs.n=null"])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and "empty.json" in err


def test_missing_vae_names_vae_in_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = make_tiny("sd15-sg", tmp_path / "m")
    shutil.rmtree(model / "vae")
    runs = [lambda: build_cli.main(["--source", "shapes", "--n", "2", "--model", str(model), "--out", "bp"]),
            lambda: train_cli.main(["--task", "compositional", "--set", f"model.path={model}",
                                    "--set", "data.path=synthetic", "--set", "trainer.output_dir=tr"]),
            lambda: evaluate_main()(["--task", "compositional", "--model", str(model), "--out", "ev"])]
    for run in runs:
        assert run() == 2
        err = capsys.readouterr().err
        assert one_line(err) and "vae/config.json" in err


def test_diverged_training_is_3(tmp_path, capsys):
    # lr 1e10 on the synthetic placeholder: the loss goes non-finite within a few steps
    rc = train_cli.main(["--task", "compositional", "--set", "data.path=synthetic", "--set", "data.resolution=64",
                         "--set", f"trainer.output_dir={tmp_path / 'r'}", "--set", "optimizer.lr=1e10",
                         "--set", "optimizer.warmup_steps=0", "--set", "trainer.max_steps=6",
                         "--set", "checkpointing.every=0", "--set", "logging.tqdm=false"])
    err = capsys.readouterr().err
    assert rc == 3 and one_line(err) and "non-finite" in err
