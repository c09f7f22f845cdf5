"""scripts/demo.py: the smoke checks (fast, first) and the world job it runs, at the micro budget on a tiny
RANDOM-INIT base model (make_tiny; plumbing only) so the test stays under a minute."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from sgalign.pipelines.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[1]


def test_demo_smoke_checks():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--smoke-only"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 valid, 0 rejected" in proc.stdout
    assert "LAION-SG token graph: 20 token nodes, 20 edges" in proc.stdout
    assert "object-level graph: 5 nodes, 3 edges" in proc.stdout
    assert "[world-job]" not in proc.stdout


def test_demo_runs_the_world_job_and_prints_the_report(tmp_path, monkeypatch, capsys):
    base = make_tiny("sd15-sg", tmp_path / "tiny-base", seed=0)
    out = tmp_path / "demo"
    # the script in-process (the smoke test above covers a fresh interpreter): saves a second torch import
    monkeypatch.setattr(sys, "argv", ["demo.py", "--budget", "micro", "--out", str(out), "--base-model", str(base)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "scripts" / "demo.py"), run_name="__main__")
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    smoke = next(i for i, x in enumerate(lines) if x.startswith("smoke ok"))
    job = next(i for i, x in enumerate(lines) if x.startswith("[world-job] budget micro"))
    assert smoke < job  # cheap checks first
    for m in ("diffusion-dpo", "inpo"):  # the demo's two methods, trained and evaluated
        assert (out / "train" / m / "final" / "model_index.json").exists()
        assert (out / "eval" / m / "report.html").exists()
    assert lines[-1] == (f"report: {out / 'index.html'} (table: {out / 'results_table.md'}; per-method reports: "
                         f"{out / 'eval'}/*/report.html)")
    assert (out / "index.html").exists() and "inpo" in (out / "results_table.md").read_text()
