"""Write a synthetic dataset: the embedded default (data/default) or one of any size in another folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as ``python workflows/make_dataset.py``, Python puts workflows/ (not the repository root) on sys.path; put the
# root first so that ``data`` is this project's package even when it is not pip-installed.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.format import PatchFormatError, check_dataset_replaceable, write_dataset  # noqa: E402
from data.messages import one_line  # noqa: E402
from data.synthetic import DEFAULT_COUNTS, DEFAULT_SEED, generate  # noqa: E402

EXIT_BAD_INPUT = 2

DESCRIPTION = f"""\
Generate synthetic land-cover patches (data/synthetic.py) and write them as a dataset folder.

Without --output, writes the embedded default dataset (default sizes and seed) to
{DEFAULT_DATASET_DIR.relative_to(_ROOT)}, refusing to replace it unless --overwrite. With --output FOLDER,
--train/--val/--test give the number of patches per split (balanced across classes) and --seed the
generator's seed, for example
  python workflows/make_dataset.py --output /tmp/big --train 50000 --val 2000 --test 2000
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="dataset folder to write (default: the embedded dataset)")
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(f"--{split}", type=int, default=count, metavar="N", help=f"{split} patches (%(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace the folder if it is a dataset folder")
    args = parser.parse_args(argv)
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    if args.output is None and (counts != DEFAULT_COUNTS or args.seed != DEFAULT_SEED):
        parser.error("other sizes or seeds need --output: data/default must stay the documented default dataset")
    if any(n < 1 for n in counts.values()):
        parser.error(f"every split needs at least one patch, got {counts}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate and write the dataset, print what was written, and return the exit status."""
    args = parse_args(argv)
    output = DEFAULT_DATASET_DIR if args.output is None else args.output
    counts = {split: getattr(args, split) for split in DEFAULT_COUNTS}
    start = time.perf_counter()
    try:
        check_dataset_replaceable(output, overwrite=args.overwrite)  # before generating what may be gigabytes
        dataset = generate(counts, seed=args.seed)
        write_dataset(output, dataset, overwrite=args.overwrite)
    except (PatchFormatError, OSError) as err:
        print(f"error: {one_line(err, limit=None)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    size = sum(p.stat().st_size for p in output.glob("*.parquet"))
    print(f"wrote {output} ({size / 1e6:.1f} MB, seed {args.seed}, {time.perf_counter() - start:.1f} s)")
    print("\n".join(dataset.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
