"""The world job with gold / shuffled pairs rows (``method@gold``, ``method@shuffled``) at the micro budget on a tiny
RANDOM-INIT base (plumbing only): variants built once from pairs/, each row trained on its own dataset."""
import json

import pytest

from sgalign.jobs.specs import split_method_id, train_config
from sgalign.jobs.world_job import BUDGETS, run_world_job
from sgalign.pipelines.tiny import make_tiny


def test_job_with_gold_and_shuffled_rows(tmp_path, capsys):
    base = make_tiny("sd15-sg", tmp_path / "tiny-base", seed=0)
    out = tmp_path / "job"
    methods = ["diffusion-dpo", "diffusion-dpo@gold", "sft@shuffled"]
    paths = run_world_job(out, budget="micro", methods=methods, base_model=base)
    table = json.loads(paths["json"].read_text())
    rows = {r["method"]: r for r in table["tables"]["label/normalized"]["rows"]}
    assert list(rows) == methods and table["missing"] == []
    assert [rows[m]["pairs"] for m in methods] == ["reward", "gold", "shuffled"]
    assert [rows[m]["trainer_method"] for m in methods] == ["diffusion-dpo", "diffusion-dpo", "sft"]
    for variant, mid in (("gold", "diffusion-dpo@gold"), ("shuffled", "sft@shuffled")):
        build = json.loads((out / f"pairs-{variant}" / "build.json").read_text())
        src_id = json.loads((out / "pairs" / "index.json").read_text())["dataset_id"]
        assert build["variant"] == variant and build["source_dataset_id"] == src_id
        cfg = json.loads((out / "train" / mid / "summary.json").read_text())
        assert cfg["steps"] == BUDGETS["micro"].train_steps
        resolved = (out / "train" / mid / "resolved_config.yaml")
        assert str(out / f"pairs-{variant}") in resolved.read_text()
    md = paths["markdown"].read_text()
    assert "[diffusion-dpo@gold](eval/diffusion-dpo@gold/report.html)" in md and "a ceiling" in md
    # a rerun skips the variant stages
    capsys.readouterr()
    run_world_job(out, budget="micro", methods=methods, base_model=base)
    log = capsys.readouterr().out
    assert "[pairs-gold] done" in log and "[pairs-shuffled] done" in log


def test_variant_ids(tmp_path):
    assert split_method_id("smpo@gold") == ("smpo", "gold") and split_method_id("inpo") == ("inpo", None)
    with pytest.raises(ValueError, match="unknown method 'smpo@best'"):
        split_method_id("smpo@best")
    cfg = train_config("inversion-dpo@shuffled", tmp_path, tmp_path, tmp_path, BUDGETS["micro"], 0)
    assert cfg.method.name == "inversion-dpo" and cfg.method.options["inversion-dpo"]["faithful"] is False
    with pytest.raises(ValueError, match="compositional task only"):
        run_world_job(tmp_path / "t", budget="micro", methods=["smpo@gold"], task="t2i", base_model=tmp_path)
