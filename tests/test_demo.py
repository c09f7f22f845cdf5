import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_smoke_runs_end_to_end():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 valid, 0 rejected" in proc.stdout
    assert "LAION-SG token graph: 20 token nodes, 20 edges" in proc.stdout
    assert "object-level graph: 5 nodes, 3 edges" in proc.stdout
