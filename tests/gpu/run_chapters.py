"""Execute chapters' code cells in order, as plain Python, on a machine with a GPU (no Jupyter there).

Used for the GPU checks of issues 13 and 15 (the course never runs on a GPU in CI):

    python tests/gpu/run_chapters.py --out gpu_run.json notebooks/05_peft_trl_tour.ipynb ...

Each chapter runs in its own process, in a scratch folder, with a time limit; cell magics the
chapters use are honoured (%%writefile writes its file; other % and ! lines are skipped).
Writes one row per chapter: seconds, status, the failing cell and the error's last lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = r"""
import json, sys, traceback
cells = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__", "display": lambda *a, **k: None}
import matplotlib
matplotlib.use("Agg")
for number, source in cells:
    if source.startswith("%%writefile"):
        header, _, body = source.partition("\n")
        path = header.split()[-1]
        open(path, "w").write(body + "\n")
        continue
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        exec(compile("\n".join(lines), f"cell {number}", "exec"), namespace)
    except SystemExit:
        pass
    except BaseException:
        print(f"FAILED_CELL {number}", flush=True)
        traceback.print_exc()
        sys.exit(1)
print("ALL_CELLS_RAN", flush=True)
"""


def code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def run_chapter(path: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        cells_file = Path(scratch) / "cells.json"
        cells_file.write_text(json.dumps(code_cells(path)))
        runner = Path(scratch) / "runner.py"
        runner.write_text(RUNNER)
        start = time.perf_counter()
        try:
            result = subprocess.run(
                [sys.executable, str(runner), str(cells_file)],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=os.environ | {"MPLBACKEND": "Agg"},
            )
            output, code = result.stdout + result.stderr, result.returncode
        except subprocess.TimeoutExpired as expired:
            output, code = f"{expired.stdout or ''}{expired.stderr or ''}\nTIMEOUT", -1
        seconds = round(time.perf_counter() - start, 1)
    failed_cell = next(
        (line.split()[1] for line in output.splitlines() if line.startswith("FAILED_CELL")), None
    )
    status = "ok" if code == 0 and "ALL_CELLS_RAN" in output else ("timeout" if code == -1 else "failed")
    return {
        "chapter": path.stem,
        "seconds": seconds,
        "status": status,
        "failed_cell": failed_cell,
        "tail": "" if status == "ok" else output[-2500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--out", default="gpu_run.json")
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    rows = []
    for notebook in args.notebooks:
        rows.append(run_chapter(Path(notebook).resolve(), args.timeout))
        row = rows[-1]
        print(
            f"{row['chapter']:40} {row['status']:8} {row['seconds']:7.1f} s  cell {row['failed_cell']}",
            flush=True,
        )
        if row["tail"]:
            print(row["tail"][-1500:], flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
