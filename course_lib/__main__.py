"""Command line: ``doctor``, ``assets build``, ``hub build``, ``llamafactory build|status``, ``bench``, ``peft-sweep`` and ``assignments build|grade``
(``python -m course_lib --help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _doctor(_: argparse.Namespace) -> int:
    from .env import doctor

    healthy, lines = doctor()
    print("\n".join(lines))
    print("healthy" if healthy else "NOT healthy: see the lines marked MISSING")
    return 0 if healthy else 1


def _assets_build(_: argparse.Namespace) -> int:
    from . import assets
    from .assets.cache import read_manifest

    for name, build in assets.BUILDERS.items():
        start = time.perf_counter()
        folder = build()
        manifest = read_manifest(folder)
        summary = {k: v for k, v in manifest.items() if k not in ("recipe", "files", "name")}
        print(f"{name}: ready in {time.perf_counter() - start:.1f} s  {json.dumps(summary)}")
    from .distributed import build_deepspeed_ops

    # DeepSpeed compiles its CPU communication op on first use (minutes): chapter 14 must not pay it.
    print(f"deepspeed comm op: ready in {build_deepspeed_ops():.1f} s")
    from .llamafactory import BuildFailed, build_environment, in_ci

    # Chapter 8's LLaMA-Factory section needs its own environment (minutes to build, once).
    # Outside CI, without a registry, the chapter skips that section and says how to build it, so
    # a failed build is reported and the other assets stay usable; in CI (CI=true) the section
    # must run, so a failed build fails this command.
    start = time.perf_counter()
    try:
        build_environment()
        print(f"llamafactory environment: ready in {time.perf_counter() - start:.1f} s")
    except BuildFailed as error:
        if in_ci():
            print(f"llamafactory environment: build FAILED (CI=true): {error}", file=sys.stderr)
            return 1
        print(f"llamafactory environment: NOT built (chapter 8 skips its section): {error}")
    return 0


def _llamafactory(args: argparse.Namespace) -> int:
    from .llamafactory import BuildFailed, build_environment, cli_path, environment_status

    if args.llamafactory_command == "status":
        status = environment_status(strict=False)
        print(status["reason"])
        return 0 if status["ready"] else 1
    try:
        folder = build_environment()
    except BuildFailed as error:
        print(error, file=sys.stderr)
        return 1
    print(f"llamafactory-cli: {cli_path(folder)}")
    return 0


def _hub_build(args: argparse.Namespace) -> int:
    from . import synthetic_hub

    start = time.perf_counter()
    folder = synthetic_hub.build(full_depth=args.full_depth, narrow=args.narrow)
    print(f"synthetic hub ready in {time.perf_counter() - start:.1f} s: {folder}")
    for row in synthetic_hub.shapes_table(args.full_depth, args.narrow):
        print(
            f"  {row['repo']:50} {row['class']:32} vocab {row['vocab']:6} width {row['hidden']:4} "
            f"layers {row['layers']}"
        )
    print("activate it (before starting Python or Jupyter):")
    for key, value in synthetic_hub.environment(folder).items():
        print(f"  export {key}={value}")
    return 0


def _peft_sweep(args: argparse.Namespace) -> int:
    from .peft_methods import run_sweep, write_sweep

    command = f"python -m course_lib peft-sweep --steps {args.steps}" + (
        f" --methods {' '.join(args.methods)}" if args.methods else ""
    )
    results = run_sweep(steps=args.steps, names=args.methods, command=f"{command} --output {args.output}")
    path = write_sweep(results, args.output)
    done = [r for r in results["rows"] if "error" not in r]
    print(f"{len(done)}/{len(results['rows'])} methods ran; results in {path}")
    for row in results["rows"]:
        print(
            f"  {row['method']:20} "
            + (
                f"held-out loss {row['held_out_loss']:.3f}  {row['train_s']:6.1f} s"
                if "error" not in row
                else row["error"]
            )
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    from .env import quiet_progress_bars

    quiet_progress_bars()
    suites = (
        bench.CPU_SUITES
        if args.suite == ["cpu"]
        else (bench.ALL_SUITES if args.suite == ["all"] else tuple(args.suite))
    )
    command = (
        f"python -m course_lib bench --suite {' '.join(args.suite)}"
        f"{' --quick' if args.quick else ''} --output {args.output}"
    )
    document = bench.run(suites, quick=args.quick, command=command)
    print("\n".join(bench.summary_lines(document)))
    print(f"{len(document['rows'])} rows written to {bench.save(document, args.output)}")
    return 0


def _assignments(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assignments import AssignmentError, build, grade

    try:
        if args.assignments_command == "build":
            plans = build(
                Path(args.out),
                args.chapters or None,
                instructor=args.instructor,
                repo=args.repo,
                branch=args.branch,
            )
            for plan in plans:
                parts = [
                    f"{e['label']} {e['points']} pt" + (" (public check only)" if e["fallback"] else "")
                    for e in plan["exercises"]
                ]
                print(f"{plan['notebook']}: " + ", ".join(parts))
            print(
                f"{len(plans)} chapters: student notebooks in {Path(args.out) / 'student'} "
                f"(zipped: student.zip), solutions/, autograder/ (hidden tests: keep them to yourself)"
            )
            return 0
        path = grade(
            args.chapter,
            Path(args.submissions),
            Path(args.out),
            jobs=args.jobs,
            cell_timeout=args.cell_timeout,
            test_timeout=args.test_timeout,
            time_limit=args.time_limit,
            instructor=args.instructor,
            assignments=Path(args.assignments) if args.assignments else None,
        )
    except AssignmentError as error:
        print(error, file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"), end="")
    print(f"grades in {path}; feedback per submission in {path.parent / 'feedback'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (each subcommand's ``run`` is its default)."""
    parser = argparse.ArgumentParser(prog="python -m course_lib")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "doctor", help="profile, versions, device and asset cache; exit 1 when something needed is missing"
    ).set_defaults(run=_doctor)
    assets_parser = commands.add_parser("assets", help="manage the offline assets")
    assets_commands = assets_parser.add_subparsers(dest="assets_command", required=True)
    assets_commands.add_parser("build", help="build or verify every cached asset").set_defaults(
        run=_assets_build
    )
    hub_parser = commands.add_parser("hub", help="the synthetic Hub that runs the hub profile offline")
    hub_commands = hub_parser.add_subparsers(dest="hub_command", required=True)
    hub_build = hub_commands.add_parser(
        "build", help="build (or verify) the synthetic Hub under the course cache; print how to activate it"
    )
    hub_build.add_argument(
        "--full-depth",
        action="store_true",
        help="the real number of layers (slow; to measure real-shape times)",
    )
    hub_build.add_argument(
        "--narrow",
        action="store_true",
        help="narrower widths too (vocabulary, classes, tokens and templates kept): the CI hub run",
    )
    hub_build.set_defaults(run=_hub_build)
    llamafactory_parser = commands.add_parser(
        "llamafactory", help="LLaMA-Factory's own virtual environment in the course cache (chapter 8)"
    )
    llamafactory_commands = llamafactory_parser.add_subparsers(dest="llamafactory_command", required=True)
    llamafactory_commands.add_parser(
        "build", help="build (or verify) it: pip install llamafactory with the course's torch"
    ).set_defaults(run=_llamafactory)
    llamafactory_commands.add_parser(
        "status", help="say whether it is built; exit 1 when it is not"
    ).set_defaults(run=_llamafactory)
    sweep = commands.add_parser(
        "peft-sweep",
        help="train every PEFT method with one budget on the "
        "course LM and write the JSON the book renders (ch. 12)",
    )
    sweep.add_argument("--steps", type=int, default=60, help="optimizer steps per method (default 60)")
    sweep.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    sweep.add_argument(
        "--output", default="course_lib/results/peft_sweep.json", help="where to write the JSON"
    )
    sweep.set_defaults(run=_peft_sweep)
    bench_parser = commands.add_parser(
        "bench",
        help="benchmark generation, training, memory and quantization; write JSON (appendix A2)",
        description="Every row is stamped with device, library versions and date. CPU suites run on the "
        "CPU; the gpu suite runs where CUDA exists and is skipped with a note elsewhere.",
    )
    bench_parser.add_argument(
        "--suite",
        nargs="+",
        default=["cpu"],
        metavar="SUITE",
        choices=["cpu", "all", "bandwidth", "generation", "training", "memory", "quantization", "gpu"],
        help="suites to run: bandwidth generation training memory quantization gpu, "
        "or cpu (the five CPU suites, default) or all",
    )
    bench_parser.add_argument(
        "--quick",
        action="store_true",
        help="the small settings the book uses at build time (about a minute on 2 cores)",
    )
    bench_parser.add_argument(
        "--output",
        default="bench_results.json",
        help="where to write the JSON results (default: bench_results.json)",
    )
    bench_parser.set_defaults(run=_bench)
    assignments = commands.add_parser(
        "assignments",
        help="student notebooks, hidden tests and grading (otter-grader); see the Instructors page",
    )
    assignments_commands = assignments.add_subparsers(dest="assignments_command", required=True)
    build_parser = assignments_commands.add_parser(
        "build", help="write every chapter's student notebook, solutions notebook and autograder to OUT"
    )
    build_parser.add_argument("out", help="output folder")
    build_parser.add_argument("--chapters", nargs="*", help="only these chapters (e.g. 02 06)")
    build_parser.add_argument(
        "--instructor", default=None, help="folder with tests/chNN.py (default: ./instructor)"
    )
    build_parser.add_argument(
        "--repo",
        default="hf-llm-course/course",
        help="your fork on GitHub, owner/name: the student notebooks' Colab links and install point there",
    )
    build_parser.add_argument(
        "--branch",
        default="assignments",
        help="the branch of --repo you push student/ to (default: assignments)",
    )
    build_parser.set_defaults(run=_assignments)
    grade_parser = assignments_commands.add_parser(
        "grade", help="grade a folder of submitted notebooks; write OUT/grades.csv and OUT/feedback/"
    )
    grade_parser.add_argument("chapter", help="the chapter, e.g. 06")
    grade_parser.add_argument("submissions", help="folder of submitted .ipynb files")
    grade_parser.add_argument("out", help="output folder")
    grade_parser.add_argument(
        "--assignments",
        default=None,
        help="a folder `assignments build` wrote (default: build this chapter afresh)",
    )
    grade_parser.add_argument(
        "--instructor", default=None, help="folder with tests/chNN.py (default: ./instructor)"
    )
    grade_parser.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    grade_parser.add_argument(
        "--cell-timeout",
        type=int,
        default=60,
        help="seconds per answer cell (default 60) and, unless --test-timeout, per hidden test",
    )
    grade_parser.add_argument(
        "--test-timeout",
        type=int,
        default=None,
        help="seconds per hidden test (default: --cell-timeout)",
    )
    grade_parser.add_argument(
        "--time-limit",
        type=int,
        default=600,
        help="seconds for the lesson cells of each exercise's run (default 600)",
    )
    grade_parser.set_defaults(run=_assignments)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
