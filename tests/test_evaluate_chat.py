"""The compositional evaluation with the chat-completions extractor against a local server playing the API."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REPLY_OK = '```json\n{"scene_graph": [], "object_list": ["circle"], "predicate_list": []}\n```'


class _Handler(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        text = "this is not JSON" if len(type(self).calls) == 2 else REPLY_OK  # the 2nd reply is malformed
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(monkeypatch):
    _Handler.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("SGALIGN_TEST_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    yield _Handler.calls
    srv.shutdown()
    srv.server_close()


def test_chat_extractor_scores_counts_failures_and_caches(server, tmp_path):
    from sgalign.evaluation import jaccard
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.run import evaluate
    from sgalign.pipelines.tiny import make_tiny
    from sgalign.scene_graph import LaionSGRecord, SceneGraph

    model = make_tiny("sd15-sg", tmp_path / "m")
    sets = ["inputs.n=3", "sampling.seeds=[0]", "sampling.steps=2", "sampling.torch_threads=1",
            "stats.n_resamples=50", "compositional.extractor=chat", "compositional.granularities=[label]",
            "compositional.fid=false", "compositional.chat.require_api_key=false",
            "compositional.chat.base_url_env=SGALIGN_TEST_BASE_URL", "compositional.chat.api_key_env=SGALIGN_NO_KEY",
            "compositional.max_failure_rate=0.5"]  # the scripted server fails 1 of 3 on purpose
    r = evaluate(model, tmp_path / "out", load_protocol(None, sets, task="compositional"))
    rep = r["metrics"]["iou"]["model"]["label/normalized"]
    assert len(server) == 3 and rep["n_failed"] == 1 and rep["status_counts"] == {"ok": 2, "parse_error": 1}
    gts = [SceneGraph.from_record(LaionSGRecord.model_validate(g)) for g in r["inputs"]["graphs"]]
    expected = [0.0 if i == 1 else jaccard({it.label for it in g.items}, {"circle"}) for i, g in enumerate(gts)]
    assert [p["entity_iou"] for p in rep["per_image"]] == pytest.approx(expected)
    prompt = server[0]["messages"][0]["content"][0]["text"]
    assert "item list" in prompt and server[0]["model"] == "gpt-4o"
    assert r["provenance"]["extractor"]["label"]["extractor"] == "chat-completions"
    assert r["provenance"]["extractor_calls"]["model/label"] == {"status_counts": {"ok": 2, "parse_error": 1},
                                                                 "retries": 0}
    assert r["metrics"]["fid"] == {"skipped": "compositional.fid is false"}
    # a re-run reads the extraction cache: no new requests (parse errors are cached, never re-asked)
    r2 = evaluate(model, tmp_path / "out", load_protocol(None, sets, task="compositional"))
    assert len(server) == 3 and r2["provenance"]["extractor_calls"]["model/label"]["status_counts"] == {}
    assert r2["metrics"]["iou"]["model"]["label/normalized"]["per_image"] == rep["per_image"]

    # another model into the same --out: its images differ, so it must ask for its own extractions
    other = make_tiny("sd15-sg", tmp_path / "m2", seed=1)
    r3 = evaluate(other, tmp_path / "out", load_protocol(None, sets, task="compositional"))
    assert len(server) == 6 and r3["provenance"]["extractor_calls"]["model/label"]["status_counts"] == {"ok": 3}
    rows = [json.loads(x) for x in (tmp_path / "out" / "extractions_model_label.jsonl").read_text().splitlines()]
    # six distinct content keys under the same three readable labels (same graphs and seeds, other pixels)
    assert len({row["key"] for row in rows}) == 6
    assert {row["label"] for row in rows} == {f"{i}/seed0" for i in r["inputs"]["ids"]}


def _sets(base_url_env):
    return ["inputs.n=3", "sampling.seeds=[0]", "sampling.steps=2", "sampling.torch_threads=1", "stats.n_resamples=20",
            "compositional.extractor=chat", "compositional.granularities=[label]", "compositional.fid=false",
            "compositional.chat.require_api_key=false", f"compositional.chat.base_url_env={base_url_env}",
            "compositional.chat.api_key_env=SGALIGN_NO_KEY", "compositional.chat.max_retries=0",
            "compositional.chat.timeout=5", "report.grid_graphs=1"]


def test_unreachable_endpoint_fails_the_run_without_a_headline_number(tmp_path, monkeypatch):
    import socket

    from sgalign.evaluation.extractors import TooManyExtractionFailures
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.run import evaluate
    from sgalign.pipelines.tiny import make_tiny

    with socket.socket() as sock:  # a port nothing listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SGALIGN_DEAD_URL", f"http://127.0.0.1:{port}/v1")
    model = make_tiny("sd15-sg", tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}')  # an earlier run's headline must not survive
    with pytest.raises(TooManyExtractionFailures) as e:
        evaluate(model, out, load_protocol(None, _sets("SGALIGN_DEAD_URL"), task="compositional"))
    assert (e.value.failed, e.value.limit, e.value.statuses) == (1, 0, {"request_error": 1})  # stops at once
    assert not (out / "results.json").exists() and not (out / "images").exists()
    failure = json.loads((out / "failure.json").read_text())
    assert failure["status_counts"] == {"request_error": 1} and failure["allowed"] == 0
    # the command: non-zero exit, one line saying why
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import evaluate as cli

    fresh = tmp_path / "out2"
    args = ["--task", "compositional", "--model", str(model), "--out", str(fresh)]
    for kv in _sets("SGALIGN_DEAD_URL"):
        args += ["--set", kv]
    assert cli.main(args) != 0
    assert (fresh / "failure.json").is_file() and not (fresh / "results.json").exists()


def test_reused_out_folder_keeps_no_stale_files(server, tmp_path):
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.report import write_report
    from sgalign.evaluation.run import evaluate
    from sgalign.pipelines.tiny import make_tiny

    out = tmp_path / "out"
    for stale in ("images/baseline.npz", "report_files/grid_099.png", "report.md", "failure.json"):
        (out / stale).parent.mkdir(parents=True, exist_ok=True)
        (out / stale).write_text("old run")
    (out / "notes.txt").write_text("mine")  # not the run's: left alone
    model = make_tiny("sd15-sg", tmp_path / "m")
    sets = [*_sets("SGALIGN_TEST_BASE_URL"), "compositional.max_failure_rate=0.5"]
    r = evaluate(model, out, load_protocol(None, sets, task="compositional"))
    write_report(out, r)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["model.npz", "reference.npz"]
    assert sorted(p.name for p in (out / "report_files").iterdir()) == ["grid_000.png", "iou_label_normalized.png"]
    assert (out / "notes.txt").read_text() == "mine" and not (out / "failure.json").exists()
    assert "old run" not in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]  # the staging folder is gone
