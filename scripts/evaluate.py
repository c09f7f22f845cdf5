"""Evaluate a model folder (optionally vs a baseline) under a fixed protocol; write results.json and a report.

    python scripts/evaluate.py --task compositional      # the latest finished run vs its base, world protocol
    python scripts/evaluate.py --task compositional --model RUN/final --baseline BASE_DIR --out runs/eval/x
    python scripts/evaluate.py --task t2i --model DIR [--baseline DIR] [--config configs/evaluate/world_t2i.yaml] \\
        [--set sampling.steps=25 --set inputs.n=128] --out DIR

Defaults (``sgalign.training.runs.evaluation_plan``): --model the latest finished run under runs/train/ (its
final/), --baseline the base model that run was trained from, --config configs/evaluate/world_<task>.yaml,
--out runs/eval/<run folder name>. results.json's provenance.chain links the run id, dataset id and base model hash.
Protocol: ``sgalign.evaluation.protocol.EvalProtocol`` (--config YAML <- --set key=value; --task wins).
Outputs in --out: results.json (metrics, protocol, provenance), images/*.npz, report.md, report.html (self-contained).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=("compositional", "t2i"))
    ap.add_argument("--model", default=None, help="model folder (default: the latest finished run's final/)")
    ap.add_argument("--baseline", default=None, help="baseline model folder, evaluated on the same inputs and seeds "
                                                     "(default: the base model of --model's run)")
    ap.add_argument("--config", default=None, help="protocol YAML (default: configs/evaluate/world_<task>.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol override, e.g. --set sampling.steps=25 (repeatable)")
    ap.add_argument("--out", default=None, help="output folder (default: runs/eval/<run folder name>)")
    ap.add_argument("--overwrite", action="store_true",
                    help="--out holds another evaluation: delete its contents and start clean")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from sgalign.jobs.commands import evaluate_command
    from sgalign.evaluation.run import failure_summary
    from sgalign.training.runs import evaluation_summary

    command = "python scripts/evaluate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    r = evaluate_command(args.task, args.model, args.baseline, args.out, args.config, args.overrides,
                         overwrite=args.overwrite, command=command)
    plan, results, paths = r["plan"], r["results"], r["paths"]
    print(f"{'skipped (already evaluated)' if r['skipped'] else 'evaluated'}: {plan['model']} vs "
          f"{plan['baseline'] or 'no baseline'} ({Path(plan['config']).name}) -> {plan['out']}")
    for f in results["provenance"]["fallbacks"]:
        print(f"FALLBACK: {f}")
    print("; ".join(x for x in (evaluation_summary(results), failure_summary(results)) if x))
    print(f"results: {plan['out']}/results.json")
    print(f"report: {paths['html']} (Markdown: {paths['markdown']})")
    print(f"next: {shlex.join(['python', '-m', 'webbrowser', str(paths['html'])])}")  # the report, in a browser
    return 0


def main(argv: list[str] | None = None) -> int:
    from sgalign.errors import run_main
    args = parse(argv)
    return run_main(lambda: run(args, argv), debug=args.debug, prog="evaluate")


if __name__ == "__main__":
    sys.exit(main())
