"""The chat-completions extractor against a local HTTP server on 127.0.0.1 that plays the API.

The server runs in a daemon thread, answers from a per-test script, is shut down by the fixture and, should a
test hang, by a 20 s safety timer. Backoff sleeps are recorded, not slept."""
import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest

from sgalign.evaluation import (ChatCompletionsExtractor, ExtractedGraph, ExtractorConfigError, GraphParserExtractor,
                                SceneGraphExtractor, Vocabulary, build_prompt, evaluate_sg_iou, extract_all, parse_reply,
                                strip_json_fences)
from sgalign.scene_graph import SceneGraph

KEY = "sk-test-SECRET-123"
GOOD = {"scene_graph": [["house", "near", "water"], ["mountain", "behind", "house"]],
        "object_list": ["house", "water", "mountain"], "predicate_list": ["near", "behind"]}


def desert_house() -> SceneGraph:
    objs = ["house", "water", "stone", "mountain", "sand", "cactus", "sun"]  # "sun" is isolated
    triples = [(0, "near", 1), (0, "made_of", 2), (3, "behind", 0), (0, "on", 4), (5, "next_to", 0)]
    return SceneGraph.from_triples([(o, []) for o in objs], triples)


def chat_body(content):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


class FakeAPI:
    """Script entries: ("reply", text) -> 200 chat body; ("status", code, headers) -> error; ("sleep", s) -> stall."""

    def __init__(self):
        self.script, self.requests = [], []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                api.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                action = api.script.pop(0) if api.script else ("status", 500, {})
                if action[0] == "sleep":  # stall past the client's timeout, then give up quietly
                    time.sleep(action[1])
                    return
                if action[0] == "reply":
                    code, headers, payload = 200, {}, json.dumps(chat_body(action[1])).encode()
                else:
                    code, headers, payload = action[1], action[2], b'{"error": {"message": "scripted"}}'
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def api(monkeypatch):
    fake = FakeAPI()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    safety = threading.Timer(20.0, fake.server.shutdown)
    safety.daemon = True
    safety.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TEST_SG_KEY", KEY)
    monkeypatch.setenv("TEST_SG_URL", fake.url)
    try:
        yield fake
    finally:
        safety.cancel()
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=5)


def make(sleeps, **kw):
    kw = {"timeout": 2.0, "max_retries": 2, "api_key_env": "TEST_SG_KEY", "base_url_env": "TEST_SG_URL", **kw}
    return ChatCompletionsExtractor(sleep=sleeps.append, **kw)


IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def test_good_reply_and_request_format(api):
    sleeps = []
    ex = make(sleeps)
    assert isinstance(ex, SceneGraphExtractor)
    api.script = [("reply", json.dumps(GOOD))]
    vocab = Vocabulary.from_scene_graph(desert_house())
    out = ex.extract(IMAGE, vocab)
    assert out.ok and out.attempts == 1 and sleeps == []
    assert out.triples == [("house", "near", "water"), ("mountain", "behind", "house")]
    assert out.object_list == ["house", "water", "mountain"] and out.predicate_list == ["near", "behind"]
    req = api.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["json"]
    assert (body["model"], body["temperature"], body["seed"]) == ("gpt-4o", 0.7, 1234)
    [msg] = body["messages"]
    assert msg["role"] == "user"  # one user message, as test_iou.py
    text, image = msg["content"]
    assert text["text"] == build_prompt(vocab)
    assert "['cactus', 'house', 'mountain', 'sand', 'stone', 'sun', 'water']" in text["text"]  # sorted, + isolated
    assert "['behind', 'made_of', 'near', 'next_to', 'on']" in text["text"]
    for key in ('"scene_graph"', '"object_list"', '"predicate_list"'):
        assert key in text["text"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    # scoring the extraction end to end: 2 of 5 GT triples found, none wrong
    rep = evaluate_sg_iou([desert_house()], [out], n_resamples=10)
    assert rep.mean["sg_iou"] == pytest.approx(2 / 5)


def test_fenced_reply(api):
    api.script = [("reply", "Here is the graph:\n```json\n" + json.dumps(GOOD) + "\n```\nDone.")]
    out = make([]).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.ok and len(out.triples) == 2


def test_malformed_reply_is_reported_not_retried(api):
    api.script = [("reply", "Sure! {'scene_graph': [house near water"), ("reply", json.dumps(GOOD))]
    ex = make([])
    out = ex.extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "parse_error" and out.attempts == 1 and "invalid JSON" in out.error
    assert out.raw_text.startswith("Sure!") and out.triples == []
    assert len(api.requests) == 1 and ex.counts == {"parse_error": 1}


def test_timeout_then_success(api):
    api.script = [("sleep", 1.5), ("reply", json.dumps(GOOD))]
    sleeps = []
    t0 = time.monotonic()
    out = make(sleeps, timeout=0.3).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.ok and out.attempts == 2 and sleeps == [1.0]
    assert time.monotonic() - t0 < 1.4  # gave up on the stalled request at the timeout
    assert len(api.requests) == 2


def test_timeouts_exhaust_the_retry_budget(api):
    api.script = [("sleep", 1.0), ("sleep", 1.0)]
    out = make([], timeout=0.2, max_retries=1).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "request_error" and out.attempts == 2 and "timeout" in out.error


def test_500_then_success_and_backoff(api):
    api.script = [("status", 500, {}), ("status", 503, {}), ("reply", json.dumps(GOOD))]
    sleeps = []
    ex = make(sleeps, max_retries=3)
    out = ex.extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.ok and out.attempts == 3 and sleeps == [1.0, 2.0] and ex.retries == 2


def test_persistent_500_is_bounded(api):
    api.script = [("status", 500, {})] * 5
    sleeps = []
    out = make(sleeps, max_retries=2, max_backoff=1.5).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "request_error" and out.attempts == 3 and "HTTP 500" in out.error
    assert len(api.requests) == 3 and sleeps == [1.0, 1.5]  # capped backoff


def test_429_honours_retry_after(api):
    api.script = [("status", 429, {"Retry-After": "5"}), ("reply", json.dumps(GOOD))]
    sleeps = []
    assert make(sleeps).extract(IMAGE, Vocabulary(("house",), ("near",))).ok
    assert sleeps == [5.0]


def test_empty_content_never_loops_forever(api):
    api.script = [("reply", ""), ("reply", "   "), ("reply", json.dumps(GOOD))]
    assert make([]).extract(IMAGE, Vocabulary(("house",), ("near",))).attempts == 3
    api.script = [("reply", "")] * 10
    ex = make([], max_retries=2)
    out = ex.extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "empty_reply" and out.attempts == 3 and ex.counts == {"empty_reply": 1}


def test_client_errors(api):
    api.script = [("status", 400, {})]
    out = make([]).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "request_error" and out.attempts == 1 and "HTTP 400" in out.error
    api.script = [("status", 401, {})]
    with pytest.raises(ExtractorConfigError, match="TEST_SG_KEY") as err:
        make([]).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert KEY not in str(err.value)


def test_connection_refused_is_retried_then_reported(monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("TEST_SG_KEY", KEY)
    monkeypatch.setenv("TEST_SG_URL", f"http://127.0.0.1:{port}/v1")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    sleeps = []
    out = make(sleeps, max_retries=1).extract(IMAGE, Vocabulary(("house",), ("near",)))
    assert out.status == "request_error" and out.attempts == 2 and "connection error" in out.error


def test_key_and_url_stay_out_of_provenance(api, monkeypatch):
    ex = make([])
    text = repr(ex) + json.dumps(ex.provenance())
    assert KEY not in text and api.url not in text and "127.0.0.1" not in text
    assert ex.provenance()["api_key_from_env"] == "TEST_SG_KEY"
    monkeypatch.delenv("TEST_SG_KEY")
    with pytest.raises(ExtractorConfigError, match="set the environment variable TEST_SG_KEY"):
        make([])
    assert make([], require_api_key=False).provenance()["model"] == "gpt-4o"


def test_vocabulary_modes():
    sg = desert_house()
    assert "sun" not in Vocabulary.from_scene_graph(sg, paper=True).objects  # triples only, as test_iou.py
    assert Vocabulary.from_scene_graph(sg).objects == ("cactus", "house", "mountain", "sand", "stone", "sun", "water")


def test_reply_parser():
    assert strip_json_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_json_fences('```\n[1]\n```') == "[1]"
    assert strip_json_fences('  {"a": 1} ') == '{"a": 1}'
    prose = parse_reply("Sure! Here it is: " + json.dumps(GOOD) + " Hope this helps.")
    assert prose.ok and len(prose.triples) == 2
    assert parse_reply("Sure! {'scene_graph': [1]} oops").status == "parse_error"  # Python repr is not JSON
    out = parse_reply(json.dumps({"scene_graph": [["a", "on", "b"], ["a", "on"], ["a", 1, "b"], ["a", "on", "b"]],
                                  "object_list": ["a", 3, "b"]}))
    assert out.ok and out.triples == [("a", "on", "b")] and out.object_list == ["a", "b"]
    assert out.predicate_list == [] and out.n_dropped == 3  # two bad triples + one non-string object
    assert parse_reply("[1, 2]").status == "parse_error"
    assert parse_reply(json.dumps({"scene_graph": "a on b"})).n_dropped == 1
    again = type(out).from_dict(json.loads(json.dumps(out.to_dict())))
    assert again == out


def test_scene_graph_reference_picks_vocabulary_by_paper_flag(api):
    api.script = [("reply", json.dumps(GOOD)), ("reply", json.dumps(GOOD))]
    make([]).extract(IMAGE, desert_house())
    make([], paper=True).extract(IMAGE, desert_house())
    first, second = (r["json"]["messages"][0]["content"][0]["text"] for r in api.requests)
    assert "'sun'" in first and "'sun'" not in second  # paper: items from the GT triples only
    assert "Python set order" in make([], paper=True).provenance()["vocabulary_order"]


class ScriptedParser:
    """Scripted stand-in for an image parser (test only): returns a fixed graph and counts calls."""

    name = "scripted-parser"

    def __init__(self, graph):
        self.graph, self.calls = graph, 0

    def extract(self, image, reference=None):
        self.calls += 1
        return self.graph


def test_graph_parser_adapter_labels_and_phrases():
    parsed = SceneGraph.from_triples([("circle", ["red", "small"]), ("square", ["blue", "large"]),
                                      ("triangle", ["red", "small"])], [(0, "left of", 1)])
    ref = SceneGraph.from_triples([("circle", ["red", "small"]), ("square", ["blue", "large"])], [(0, "left of", 1)])
    labels = GraphParserExtractor(ScriptedParser(parsed)).extract(IMAGE, ref)
    assert labels.triples == [("circle", "left of", "square")]
    assert labels.object_list == ["circle", "square", "triangle"] and labels.predicate_list == ["left of"]
    phrases = GraphParserExtractor(ScriptedParser(parsed), granularity="phrase").extract(IMAGE, ref)
    assert phrases.triples == [("red small circle", "left of", "blue large square")]
    rep = evaluate_sg_iou([ref], [phrases], granularity="phrase", n_resamples=10)
    assert rep.mean == {"sg_iou": 1.0, "entity_iou": pytest.approx(2 / 3), "relation_iou": 1.0}
    assert rep.to_dict()["granularity"] == "phrase"
    with pytest.raises(TypeError, match="needs the reference SceneGraph"):
        GraphParserExtractor(ScriptedParser(parsed)).extract(IMAGE, Vocabulary(("circle",), ()))


def test_world_oracle_through_the_adapter():
    oracle_mod = pytest.importorskip("sgalign.world.oracle")
    from sgalign.world.render import render
    from sgalign.world.sampler import sample_scene

    scene = sample_scene(np.random.default_rng(0))
    ref = scene.graph()
    ex = GraphParserExtractor(oracle_mod.WorldOracle(), granularity="phrase")
    good = ex.extract(render(scene), ref)
    blank = ex.extract(np.full((64, 64, 3), 255, dtype=np.uint8), ref)
    rep = evaluate_sg_iou([ref, ref], [good, blank], granularity="phrase", n_resamples=10)
    assert rep.per_image[0].to_dict() == {"sg_iou": 1.0 if ref.relations else 0.0, "entity_iou": 1.0,
                                          "relation_iou": 1.0 if ref.relations else 0.0}
    assert rep.per_image[1].entity_iou == 0.0 and rep.per_image[1].sg_iou == 0.0
    assert ex.provenance()["extractor"] == "world-oracle"


def test_extract_all_caches_and_retries_only_transport_failures(tmp_path):
    class Flaky:
        name = "flaky"

        def __init__(self):
            self.calls = []

        def extract(self, image, reference):
            self.calls.append(image)
            if image == "b" and len(self.calls) <= 3:
                return ExtractedGraph(status="request_error", error="HTTP 503")
            if image == "c":
                return ExtractedGraph(status="parse_error", raw_text="nope")
            return ExtractedGraph(triples=[(image, "near", "x")])

        def provenance(self):
            return {}

    refs = [desert_house()] * 3
    cache = tmp_path / "extractions.jsonl"
    ex = Flaky()
    first = extract_all(ex, ["a", "b", "c"], refs, keys=["1", "2", "3"], cache_path=cache)
    assert [g.status for g in first] == ["ok", "request_error", "parse_error"] and ex.calls == ["a", "b", "c"]
    second = extract_all(ex, ["a", "b", "c"], refs, keys=["1", "2", "3"], cache_path=cache)
    assert ex.calls == ["a", "b", "c", "b"]  # only the transport failure is asked again
    assert [g.status for g in second] == ["ok", "ok", "parse_error"] and second[0] == first[0]
    cache.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1: not an extraction cache row"):
        extract_all(ex, ["a"], refs[:1], keys=["1"], cache_path=cache)
    with pytest.raises(ValueError, match="needs one key per image"):
        extract_all(ex, ["a"], refs[:1], cache_path=cache)


def test_encode_image_inputs(tmp_path):
    import base64
    from PIL import Image

    from sgalign.evaluation import encode_image

    path = tmp_path / "x.jpg"
    Image.fromarray(IMAGE).save(path, format="JPEG")
    url = encode_image(path)
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()  # files are sent as they are
    assert encode_image(Image.fromarray(IMAGE), "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="not JPEG, PNG or WebP"):
        encode_image(b"GIF89a....")
    with pytest.raises(FileNotFoundError, match="extractor image not found"):
        encode_image(tmp_path / "missing.png")


def test_cache_key_is_image_bytes_plus_extractor_settings(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    img = np.zeros((8, 8, 3), np.uint8)
    other = img.copy()
    other[0, 0, 0] = 1
    ex = ChatCompletionsExtractor("gpt-4o")
    key = ex.cache_key(img, desert_house())
    assert key == ChatCompletionsExtractor("gpt-4o").cache_key(img.copy(), desert_house())  # content, not identity
    assert KEY not in key
    differing = [ex.cache_key(other, desert_house()),  # one pixel
                 ChatCompletionsExtractor("gpt-4o-mini").cache_key(img, desert_house()),  # model
                 ChatCompletionsExtractor("gpt-4o", paper=True).cache_key(img, desert_house()),  # prompt mode
                 ChatCompletionsExtractor("gpt-4o", temperature=0.0).cache_key(img, desert_house()),
                 ex.cache_key(img, Vocabulary(("house",), ("near",)))]  # vocabulary
    assert len({key, *differing}) == 6
