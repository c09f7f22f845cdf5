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
    from sgalign.models.tiny import make_tiny
    from sgalign.scene_graph import LaionSGRecord, SceneGraph

    model = make_tiny("sd15-sg", tmp_path / "m")
    sets = ["inputs.n=3", "sampling.seeds=[0]", "sampling.steps=2", "sampling.torch_threads=1",
            "stats.n_resamples=50", "compositional.extractor=chat", "compositional.granularities=[label]",
            "compositional.fid=false", "compositional.chat.require_api_key=false",
            "compositional.chat.base_url_env=SGALIGN_TEST_BASE_URL", "compositional.chat.api_key_env=SGALIGN_NO_KEY"]
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
