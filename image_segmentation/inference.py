"""The trained Keras model of a model folder, as the evaluate and export stages run it."""

from pathlib import Path

import keras

from image_segmentation import icnet, model_folder
from image_segmentation.errors import StageError


def load_model(model_dir: Path) -> tuple[keras.Model, dict]:
    """The training model of a complete model folder with its weights loaded, and its config."""
    config = model_folder.require_complete(model_dir)
    model = icnet.build_icnet(config["num_classes"], tuple(config["image_size"]), config["alpha"])
    weights = model_folder.weights_path(model_dir)
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as error:
        raise StageError(
            f"{weights} does not fit the model {model_folder.CONFIG_FILE} describes: "
            f"{str(error).splitlines()[0]}"
        ) from error
    return model, config


def load_inference_model(
    model_dir: Path, image_size: tuple[int, int] | None = None
) -> tuple[keras.Model, dict]:
    """The trained weights in the inference model (S/4 probabilities), and the config.

    ICNet's weights do not depend on the input size, so a model trained on 768x768 crops can
    be run at another multiple of 32 by building that size and copying the weights.
    """
    model, config = load_model(model_dir)
    if image_size is not None and tuple(image_size) != tuple(config["image_size"]):
        resized = icnet.build_icnet(config["num_classes"], tuple(image_size), config["alpha"])
        resized.set_weights(model.get_weights())
        model = resized
    return icnet.inference_model(model), config
