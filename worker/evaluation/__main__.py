"""vlmnode-eval SET.jsonl [--json REPORT] [--tag TAG] [--limit N]

The LLM is the node's (LLM_BACKEND, LLM_BASE_URL or OLLAMA_HOST, LLM_MODEL,
LLM_NUM_CTX: the README's Configuration). Progress goes to stderr, the table
to stdout. Exit status: 0 a run scored, 1 the LLM could not be reached or
used, 2 a bad set or argument."""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from server import config, logs
from server.errors import NodeError
from server.peers import role_pool
from worker.evaluation import cases as cases_module
from worker.evaluation.report import case_line, document, table
from worker.evaluation.run import evaluate

PROGRAM = "vlmnode-eval"


async def run(args: argparse.Namespace) -> int:
    try:
        cases = cases_module.read(args.set)
    except (cases_module.BadCase, OSError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    if args.tag:
        cases = [c for c in cases if args.tag in c.tags]
    cases = cases[: args.limit] if args.limit else cases
    if not cases:
        print(f"{PROGRAM}: no case of {args.set} is tagged {args.tag!r}", file=sys.stderr)
        return 2
    settings = config.load(PROGRAM)
    # The node's warnings (a bad answer asked again) between the progress lines; its info only when asked for.
    logs.setup(settings.log_level if "LOG_LEVEL" in os.environ else "WARNING")
    role = settings.role("LLM")
    engine = role_pool(settings, role)
    try:
        await engine.check_models()
        outcomes = await evaluate(cases, engine, role.model,
                                  lambda n, o: print(case_line(n, len(cases), o), file=sys.stderr, flush=True))
    except NodeError as exc:
        print(f"{PROGRAM}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await engine.aclose()
    print(table(outcomes))
    if args.json:
        about = {"set": str(args.set), "backend": role.backend, "servers": list(role.urls), "model": role.model,
                 "num_ctx": role.num_ctx}
        args.json.write_text(json.dumps(document(outcomes, about), indent=2) + "\n")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Scores task_timing_v1's decision over a labelled set.")
    parser.add_argument("set", type=Path, help="JSON Lines, one case a line (eval/README.md)")
    parser.add_argument("--json", type=Path, help="write the scores and every case's answer here")
    parser.add_argument("--tag", help="only the cases with this tag")
    parser.add_argument("--limit", type=int, default=0, help="only the first N cases")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
