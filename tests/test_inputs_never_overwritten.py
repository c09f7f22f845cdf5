"""No command writes over its input (issue 16 item 5): an output path that resolves to an input is refused with
exit 2 and the input is left byte-identical."""
import subprocess
import sys
from pathlib import Path

from data_builders import cli as build_cli
from data_builders.config import WORLD_ANNOTATIONS
from sgalign.jobs import train_cli
from helpers import evaluate_main

REPO = Path(__file__).resolve().parent.parent


def test_validate_sg_refuses_rejects_onto_the_split(tmp_path):
    split = tmp_path / "S.json"
    split.write_bytes(WORLD_ANNOTATIONS.read_bytes())
    before = split.read_bytes()
    for target in (str(split), str(tmp_path / "." / "S.json")):
        p = subprocess.run([sys.executable, str(REPO / "scripts" / "validate_sg.py"), str(split), "--rejects", target],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr
    assert split.read_bytes() == before


def test_build_pairs_refuses_out_onto_its_input(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_bytes(WORLD_ANNOTATIONS.read_bytes())
    assert build_cli.main(["--source", "laion-sg", "--annotations", str(ann), "--out", str(ann)]) == 2
    assert build_cli.main(["--source", "pickapic", "--input", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert ann.read_bytes() == WORLD_ANNOTATIONS.read_bytes()


def test_train_refuses_output_dir_holding_its_data(tmp_path):
    data = tmp_path / "run" / "pairs"
    data.mkdir(parents=True)
    (data / "build.json").write_text("{}")
    (data / "index.json").write_text('{"rows": 1}')
    assert train_cli.main(["--task", "compositional", "--set", f"data.path={data}",
                           "--set", f"trainer.output_dir={tmp_path / 'run'}"]) == 2
    assert (data / "index.json").read_text() == '{"rows": 1}'


def test_evaluate_refuses_out_onto_the_model(tmp_path):
    model = tmp_path / "model"  # refused before it is read, so a stand-in folder is enough
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionSGPipeline"}')
    assert evaluate_main()(["--task", "compositional", "--model", str(model), "--out", str(model)]) == 2
    assert sorted(p.name for p in model.iterdir()) == ["model_index.json"]
