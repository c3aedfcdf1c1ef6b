"""How fast the `gitops` command starts: `--help` and `validate` of a small folder, against
the interpreter's own start.

    python bench/cli_start.py [--runs 20] [--folder manifests-example]

Runs, as a user does (a new process each time, stdout and stderr discarded), `gitops --help`,
`gitops validate FOLDER` (by default the repository's manifests-example: two files, five
objects) and, as the fair baseline, `python -c pass` with the same interpreter and the same
site setup: no command can start faster than that. The three alternate, `--runs` times
each, so a busy machine slows them alike. Each child finds the bytecode compiled, as an
installed gitops does (it runs with a bytecode cache in a temporary folder, even where
PYTHONDONTWRITEBYTECODE is set, and one untimed run fills it). Prints the best and the
median of each, each command's time over the interpreter's, and ends with one JSON line of
the figures. (Issue 15: `gitops --help` and `gitops validate` took 0.5 s, nearly all
imports; the goal is `--help` well under 0.15 s.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gitops_command() -> list[str]:
    """The `gitops` console script beside this interpreter, else the module it runs."""
    script = Path(sys.executable).with_name("gitops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gitops.cli"]


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return took


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--runs", type=int, default=20)
    options.add_argument("--folder", default="manifests-example", help="the folder to validate")
    args = options.parse_args()
    gitops = gitops_command()
    commands = {
        "python_pass": [sys.executable, "-c", "pass"],
        "help": [*gitops, "--help"],
        "validate": [*gitops, "validate", args.folder],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="gitops-pyc-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for command in commands.values():
            timed(command, env)  # compiles what the command imports into the cache
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command, env))
    figures: dict[str, float | int | str] = {"runs": args.runs, "folder": args.folder}
    for name, runs in times.items():
        figures[f"{name}_best_s"] = round(min(runs), 4)
        figures[f"{name}_median_s"] = round(statistics.median(runs), 4)
    base = min(times["python_pass"])
    figures["help_ratio"] = round(min(times["help"]) / base, 2)
    figures["validate_ratio"] = round(min(times["validate"]) / base, 2)
    python = sys.version.split()[0]
    print(f"Python {python}, best of {args.runs} runs (a new process each time, bytecode cached)")
    for name, label in (
        ("python_pass", "python -c pass"),
        ("help", "gitops --help"),
        ("validate", f"gitops validate {args.folder}"),
    ):
        best, median = figures[f"{name}_best_s"], figures[f"{name}_median_s"]
        ratio = f"{figures[f'{name}_ratio']}x the interpreter" if f"{name}_ratio" in figures else "baseline"
        print(f"  {label:<36} best {best:.3f} s, median {median:.3f} s  ({ratio})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
