"""Chapter 13's quantization rows measured on a machine with a CUDA GPU (the course never has one in
CI), written as the stored results the chapter shows next to its CPU rows:

    python tests/gpu/quantization_rows.py --output course_lib/results/quantization_gpu.json

It needs the course's assets (``python -m course_lib assets build``) and bitsandbytes and torchao
with CUDA. Every method of ``course_lib.quantization.quant_methods`` is measured, the CPU rows too,
so that the GPU rows have a float32 baseline from the same run, model and blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course_lib import quantization


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=f"course_lib/results/{quantization.GPU_RESULTS}")
    parser.add_argument("--blocks", type=int, default=16, help="validation blocks of 128 tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = f"python tests/gpu/quantization_rows.py --blocks {args.blocks} --output {args.output}"
    document = quantization.stored_run(n_blocks=args.blocks, command=command)
    if not any(row["device"] == "cuda" for row in document["quantization"]):
        print("no CUDA GPU here: the GPU rows were skipped, nothing written", file=sys.stderr)
        return 1
    Path(args.output).write_text(json.dumps(document, indent=1) + "\n")
    print(f"{len(document['quantization'])} rows written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
