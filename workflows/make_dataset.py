"""Write a synthetic dataset: the embedded default (data/default), or a named preset of any size in another folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as ``python workflows/make_dataset.py``, Python puts workflows/ (not the repository root) on sys.path; put the
# root first so that ``data`` is this project's package even when it is not pip-installed, and import ``workflows``,
# which takes workflows/ itself off sys.path (see its docstring).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import workflows  # noqa: E402, F401
from data import DEFAULT_DATASET_DIR  # noqa: E402
from data.format import PatchFormatError  # noqa: E402
from data.messages import one_line  # noqa: E402
from data.synthetic import DEFAULT_PRESET, PRESETS  # noqa: E402
from data.writing import check_dataset_replaceable, write_dataset  # noqa: E402

EXIT_BAD_INPUT = 2

DESCRIPTION = f"""\
Generate synthetic land-cover patches (data/synthetic.py) and write them as a dataset folder.

Without --output, writes the embedded default dataset (default sizes and seed) to
{DEFAULT_DATASET_DIR.relative_to(_ROOT)}, refusing to replace it unless --overwrite. With --output FOLDER,
--preset picks the dataset ({", ".join(PRESETS)}; the small-patch proxy has 5 bands of 5x5 pixels and
6 classes), --train/--val/--test the number of patches per split (balanced across classes; default: the
preset's) and --seed the generator's seed (default: the preset's), for example
  python workflows/make_dataset.py --output /tmp/big --train 50000 --val 2000 --test 2000
  python workflows/make_dataset.py --preset small-patch --output /tmp/proxy
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unset sizes and seed are filled in from the preset."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="dataset folder to write (default: the embedded dataset)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET, help="dataset (%(default)s)")
    default = PRESETS[DEFAULT_PRESET]
    for split, count in default.counts.items():
        parser.add_argument(f"--{split}", type=int, metavar="N", help=f"{split} patches (default preset: {count})")
    parser.add_argument("--seed", type=int, help=f"generator seed (default preset: {default.seed})")
    parser.add_argument("--overwrite", action="store_true", help="replace the folder if it is a dataset folder")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for split, count in preset.counts.items():
        if getattr(args, split) is None:
            setattr(args, split, count)
    if args.seed is None:
        args.seed = preset.seed
    if args.output is None and (
        args.preset != DEFAULT_PRESET or counts_of(args) != default.counts or args.seed != default.seed
    ):
        parser.error(
            "other presets, sizes or seeds need --output: data/default must stay the documented default dataset"
        )
    if any(n < 1 for n in counts_of(args).values()):
        parser.error(f"every split needs at least one patch, got {counts_of(args)}")
    return args


def counts_of(args: argparse.Namespace) -> dict[str, int]:
    """Patches per split that the parsed flags ask for."""
    return {split: getattr(args, split) for split in PRESETS[args.preset].counts}


def main(argv: list[str] | None = None) -> int:
    """Generate and write the dataset, print what was written, and return the exit status."""
    args = parse_args(argv)
    output = DEFAULT_DATASET_DIR if args.output is None else args.output
    start = time.perf_counter()
    try:
        check_dataset_replaceable(output, overwrite=args.overwrite)  # before generating what may be gigabytes
        dataset = PRESETS[args.preset].generate(counts_of(args), args.seed)
        write_dataset(output, dataset, overwrite=args.overwrite)
    except (PatchFormatError, OSError) as err:
        print(f"error: {one_line(err, limit=None)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    size = sum(p.stat().st_size for p in output.glob("*.parquet"))
    seconds = time.perf_counter() - start
    print(f"wrote {output} ({size / 1e6:.1f} MB, preset {args.preset}, seed {args.seed}, {seconds:.1f} s)")
    print("\n".join(dataset.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
