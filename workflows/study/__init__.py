"""``s4seg study``: does a method earn its labels? Methods x label budgets x split seeds on one
data set, each training run an ordinary run in a folder of its own, evaluated on the report part
of the validation split (``s4seg.holdout``); a gated method's tau is chosen on the calibration
part, never on the images it is reported on.

The unit of work (a *cell*) is one training run: a segmenter (baseline or s4GAN) or an MLMT
classifier, for one budget and one seed. Gated rows (a segmenter with a classifier) are computed
from finished cells when the study is reported. A cell with ``result.json`` is done and skipped;
a cell without continues from its ``last.pt``. ``--cell i/N`` runs cell i of the N, so that N
processes or cluster jobs can share a study; ``--jobs`` runs cells side by side here.

Writes, in the study folder: ``study.json`` (every cell and gated row, with its split, config
digest, versions, pre-training, iterations, wall time and figures), ``study.md`` (mean +- sd and a
95% interval per method and budget, the paired difference to the baseline on the same splits),
``study.png`` (mIoU against labeled images, one line per method with its band) and
``curves.png`` (what explains it: D's scores and the self-trained share for s4GAN, the teacher's
mAP for MLMT, against iteration).
"""

from .runner import StudyRequest, run_study
from .spec import METHODS, Cell, StudySpec, load_spec, resolve_spec
from .stats import summarise, verdict

__all__ = [
    "METHODS",
    "Cell",
    "StudyRequest",
    "StudySpec",
    "load_spec",
    "resolve_spec",
    "run_study",
    "summarise",
    "verdict",
]
