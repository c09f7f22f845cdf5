"""``python -m sgalign.world``: sample --render, then parse the renders back, in a temporary folder."""
import json
import subprocess
import sys
from collections import Counter

from PIL import Image

from sgalign.scene_graph import SceneGraph, load_split
from sgalign.world import WorldScene, render
from sgalign.world.cli import main


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sgalign.world", *args], cwd=cwd, capture_output=True, text=True)


def test_sample_render_parse_round_trip(tmp_path):
    r = _run("sample", "--split", "test", "--n", "25", "--out", "test.json", "--render", "imgs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote 25 test records to test.json" in r.stdout
    truth = load_split(tmp_path / "test.json")
    assert len(truth.records) == 25 and not truth.rejects
    images = [str(tmp_path / "imgs" / rec.name) for rec in truth.records]
    r = _run("parse", *images, "--out", "parsed.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    parsed = load_split(tmp_path / "parsed.json")
    assert not parsed.rejects
    assert [p.img_id for p in parsed.records] == [t.img_id for t in truth.records]  # stem of <img_id>.png
    for t, p in zip(truth.records, parsed.records):
        gt, got = SceneGraph.from_record(t), SceneGraph.from_record(p)
        assert p.name == t.name and 0.9 < float(p.score) <= 1.0
        assert Counter(gt.phrase(i) for i in gt.items) == Counter(got.phrase(i) for i in got.items)
        assert set(gt.triples()) <= set(got.triples())  # every sampled relation is read back as true
    # layouts.json rebuilds the exact renders
    meta = json.loads((tmp_path / "imgs" / "layouts.json").read_text())
    rec = truth.records[3]
    scene = WorldScene.from_record(rec, [it["box"] for it in meta["layouts"][rec.img_id]])
    assert list(render(scene).getdata()) == list(Image.open(tmp_path / "imgs" / rec.name).convert("RGB").getdata())


def _exit_message(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return str(exc)
    raise AssertionError(f"{argv} did not fail")


def test_cli_errors_name_the_problem(tmp_path):
    assert "missing.png: no such image file" in _exit_message(["parse", str(tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_text("not an image")
    assert "bad.png: not a readable image" in _exit_message(["parse", str(tmp_path / "bad.png")])
    msg = _exit_message(["sample", "--split", "test", "--n", "3", "--out", str(tmp_path / "x.json"),
                         "--holdout", "red:hexagon"])
    assert "red:hexagon" in msg and "colour:shape" in msg


def test_cli_in_process_holdout_and_canonical(tmp_path, capsys):
    main(["sample", "--split", "test", "--n", "10", "--out", str(tmp_path / "n.json"), "--holdout", "red:circle",
          "--novel-only", "--render", str(tmp_path / "r")])
    recs = load_split(tmp_path / "n.json").records
    assert all(any(i.label == "circle" and i.attributes[0] == "red" for i in rec.items) for rec in recs)
    capsys.readouterr()
    main(["parse", str(tmp_path / "r" / recs[0].name), "--canonical"])
    out = json.loads(capsys.readouterr().out)
    assert {r["relation"] for r in out[0]["relations"]} <= {"left of", "above", "bigger than"}
