"""Import a NumPy ``.npz`` archive of patches into a dataset folder in the Parquet patch format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as ``python workflows/import_data.py``, Python puts workflows/ (not the repository root) on sys.path; put the
# root first so that ``data`` is this project's package even when it is not pip-installed, and import ``workflows``,
# which takes workflows/ itself off sys.path (see its docstring).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import workflows  # noqa: E402, F401
from data.format import PatchFormatError  # noqa: E402
from data.importer import (  # noqa: E402
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    import_npz_to_folder,
)
from data.messages import one_line  # noqa: E402
from data.splitting import DEFAULT_SPLIT_SEED  # noqa: E402
from data.storage import StorageError  # noqa: E402

EXIT_BAD_INPUT = 2

DESCRIPTION = """\
Import patches from a NumPy .npz archive into OUTPUT_FOLDER (train.parquet, val.parquet, test.parquet).

Keys of the archive (np.savez(path, x=..., y=..., ...)):
  x            N x C x H x W numbers (bands first; H and W at least 3)
  y            N labels: integers or strings
  band_names   optional, C strings (default band_0, band_1, ...)
  class_names  optional, class names in index order; integer labels index into it, string labels must be
               among them (default: the sorted distinct labels, so integer labels 0..k-1 become "0".."k-1")
  x_val, y_val     optional given validation split
  x_test, y_test   optional given test split
Splits the archive does not give are carved from x/y, stratified by class, with --seed. Object arrays are
refused (the archive is loaded without pickle).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT.npz", type=Path, help="the .npz archive to import")
    parser.add_argument("output", metavar="OUTPUT_FOLDER", type=Path, help="the dataset folder to create")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the stratified carving")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help="share of x carved as validation split when the archive has no x_val (default %(default)s)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="share of x carved as test split when the archive has no x_test (default %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_FOLDER if it is a dataset folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Import the archive, print what was written, and return the exit status."""
    args = parse_args(argv)
    try:
        dataset = import_npz_to_folder(
            args.input,
            args.output,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
        )
    except (PatchFormatError, StorageError, OSError) as err:
        print(f"error: {one_line(err, limit=None)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.output}")
    print("\n".join(dataset.summary_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
