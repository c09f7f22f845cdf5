"""Evaluate a model folder (optionally vs a baseline) under a fixed protocol; write results.json and a report.

    python scripts/evaluate.py --task compositional --model RUN/final --baseline BASE_DIR --out runs/eval
    python scripts/evaluate.py --task t2i --model DIR [--baseline DIR] [--config configs/evaluate/world_t2i.yaml] \
        [--set sampling.steps=25 --set inputs.n=128] --out DIR

Protocol: ``sgalign.evaluation.protocol.EvalProtocol`` (defaults <- --config YAML <- --set key=value; --task wins).
Outputs in --out: results.json (metrics, protocol, provenance), images/*.npz, report.md, report.html (self-contained).
"""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=("compositional", "t2i"))
    ap.add_argument("--model", required=True, help="model folder (model_index.json)")
    ap.add_argument("--baseline", default=None, help="baseline model folder, evaluated on the same inputs and seeds")
    ap.add_argument("--config", default=None, help="protocol YAML (e.g. configs/evaluate/world_compositional.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol override, e.g. --set sampling.steps=25 (repeatable)")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)

    from sgalign.config import ConfigError
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.report import write_report
    from sgalign.evaluation.run import evaluate

    try:
        protocol = load_protocol(args.config, args.overrides, task=args.task)
    except ConfigError as e:
        ap.error(str(e))
    command = "python scripts/evaluate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    results = evaluate(args.model, args.out, protocol, baseline=args.baseline, command=command)
    paths = write_report(args.out, results)
    for f in results["provenance"]["fallbacks"]:
        print(f"FALLBACK: {f}")
    print(f"results: {args.out}/results.json")
    print(f"report: {paths['html']} (Markdown: {paths['markdown']})")


if __name__ == "__main__":
    main()
