"""The trained Keras model of a model folder, as the evaluate and export stages run it, and the
loading of ICNet weights that the train stage's --fine-tune-from shares."""

import warnings
from pathlib import Path

import keras

from image_segmentation.contracts import model_folder
from image_segmentation.errors import StageError
from image_segmentation.model import icnet

MAX_ERROR_CHARACTERS = 300


def weights_error(error: Exception) -> str:
    """Why weights did not load, in one short line: Keras follows its reason with the target
    variable's values (dozens of lines of numbers for a classifier kernel)."""
    reason = " ".join(str(error).split("Target variable:")[0].split())
    return reason if len(reason) <= MAX_ERROR_CHARACTERS else f"{reason[:MAX_ERROR_CHARACTERS]}..."


def build_with_weights(
    weights: Path, num_classes: int, image_size: tuple[int, int], alpha: float, refusal: str
) -> keras.Model:
    """ICNet as described, uncompiled, with the layer weights of a .weights.h5 file (an optimizer
    state the file may hold is not loaded). A file that cannot be loaded (truncated, of other
    classes) is a one-line StageError: `refusal`, then why."""
    model = icnet.build_icnet(num_classes, image_size, alpha)
    with warnings.catch_warnings(record=True) as caught:  # on a mismatch Keras warns, then fails
        try:
            model.load_weights(weights)
        except (ValueError, OSError) as error:
            raise StageError(f"{refusal}: {weights_error(error)}") from error
    for warning in caught:  # a load that went through keeps its warnings
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    broken = icnet.non_finite_weights(model)
    if broken:
        raise StageError(
            f"{refusal}: {len(broken)} of {len(model.weights)} weight arrays hold NaN or "
            f"infinity (a training run that diverged), e.g. {broken[0]}"
        )
    return model


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Give each layer of `target` the weights of the layer of the same name in `source`."""
    for layer in target.layers:
        layer.set_weights(source.get_layer(layer.name).get_weights())


def load_model(model_dir: Path, config: dict | None = None) -> tuple[keras.Model, dict]:
    """The training model of a complete model folder with its weights loaded, and its config.

    `config` is the folder's config when the caller has checked the folder already
    (`model_folder.require_complete`), so that one path checks it once.
    """
    config = config or model_folder.require_complete(model_dir)
    weights = model_folder.weights_path(model_dir)
    model = build_with_weights(
        weights,
        config["num_classes"],
        tuple(config["image_size"]),
        config["alpha"],
        f"{weights} cannot be loaded into the model {model_folder.CONFIG_FILE} describes",
    )
    return model, config


def load_inference_model(
    model_dir: Path, image_size: tuple[int, int] | None = None, config: dict | None = None
) -> tuple[keras.Model, dict]:
    """The trained weights in the inference model (S/4 probabilities), and the config.

    ICNet's weights do not depend on the input size, so a model trained on 768x768 crops can
    be run at another multiple of 32 by building that size and copying the weights.
    """
    model, config = load_model(model_dir, config)
    if image_size is not None and tuple(image_size) != tuple(config["image_size"]):
        resized = icnet.build_icnet(config["num_classes"], tuple(image_size), config["alpha"])
        copy_weights(model, resized)
        model = resized
    return icnet.inference_model(model), config
