"""Kubeflow container components, one per stage, and the images that run them."""

from components.images import STAGE_IMAGES, Images
from components.stages import (
    challenge_component,
    convert_component,
    download_component,
    evaluate_component,
    not_published_component,
    prepare_component,
    training_job_component,
    upload_component,
)

__all__ = [
    "STAGE_IMAGES",
    "Images",
    "challenge_component",
    "convert_component",
    "download_component",
    "evaluate_component",
    "not_published_component",
    "prepare_component",
    "training_job_component",
    "upload_component",
]
