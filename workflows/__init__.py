"""The workflow: entry scripts at the top of this folder, the library's stages in its subpackages.

The scripts (``train.py``, ``tune.py`` the main job, ``predict.py``, ``make_dataset.py``, ``import_data.py``) parse
flags into a typed config and make one library call. The stages import only downwards: ``training`` (one Ray Train
run), ``serving`` (the bundle, evaluation, baselines, batch prediction), ``tuning`` (PBT) and ``jobs`` (the
end-to-end jobs as library calls, and the flags the scripts share).

``python workflows/tune.py`` puts this folder first on ``sys.path``, which would make ``workflows/training`` importable
a second time as a top-level ``training`` (two module objects, two sets of globals) and let it shadow any other
package of that name, also on Ray workers, which inherit the driver's ``sys.path``. Every script imports this package
before any stage, so the folder is taken off ``sys.path`` here, once.
"""

import sys
from pathlib import Path

_SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _SCRIPTS_DIR]
