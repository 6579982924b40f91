"""What differs between Cellpose 3.x and 4.x (Cellpose-SAM), in one place.

- 3.x: a 2-channel network (``nchan=2``); built-in models ``cyto3``, ``nuclei``, ...;
  ``pretrained_model=False`` builds an untrained network, so a model can be trained from
  scratch; restoration models (``cellpose.denoise``).
- 4.x: the Cellpose-SAM transformer; no ``channels``/``nchan`` arguments (it reads up to three
  channels as given), one built-in model, ``cpsam``; training fine-tunes it; no restoration.

Callers ask :func:`cellpose_api` for the installed version's adapter and never compare
version numbers themselves.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from gpubio.errors import UnusableInput

# Cellpose 3's crops span 224 / 30 object diameters (its 224 px crops of 30 px cells)
CELLPOSE3_CROP_DIAMETERS = 224 / 30


class ModelError(UnusableInput):
    """A model cannot be found or loaded, or the installed cellpose cannot be driven; the
    message says what to do."""


def installed_major(cellpose: ModuleType) -> int:
    """3 or 4 (and later): the API generation of an imported cellpose package."""
    text = str(getattr(cellpose, "version", "") or getattr(cellpose, "__version__", ""))
    try:
        major = int(text.split(".")[0])
    except ValueError:
        raise ModelError(f"cannot tell the cellpose version from {text!r}; install cellpose 3.x or 4.x") from None
    if major < 3:
        raise ModelError(f"cellpose {text} is too old: install cellpose 3.x or 4.x")
    return major


def _gpu(device: Any) -> bool:
    return getattr(device, "type", str(device)) != "cpu"


class Cellpose3:
    major = 3
    label = "3.x"
    generalist = "cyto3"  # the general-purpose built-in model
    restoration = True
    trains_from_scratch = True
    # each version's own training defaults
    training_defaults = {"learning_rate": 0.005, "weight_decay": 1e-5, "crop_size": 224}
    # GPU memory (GB): the network's weights, and the activations of one 224 px patch in
    # inference / one 224 px crop in training (gradients included) (gpubio.imaging.resources)
    inference_vram_gb = {"weights": 0.1, "per_patch": 0.15}
    training_vram_gb = {"weights": 0.3, "per_crop": 0.5}
    # weight files of the built-in models in the model folder (cellpose.models.model_path)
    weight_files = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0"}

    def builtin_models(self, cellpose: ModuleType) -> tuple[str, ...]:
        return tuple(dict.fromkeys(getattr(cellpose.models, "MODEL_NAMES", ())))

    def weight_file(self, name: str) -> str:
        return self.weight_files.get(name, name)

    def other_versions_models(self) -> tuple[str, ...]:
        """Built-in names that belong to the other version (to say which version they need)."""
        return Cellpose4.builtin

    def load(self, cellpose: ModuleType, choice: Any, device: Any):
        CellposeModel = cellpose.models.CellposeModel
        if choice.builtin:
            return CellposeModel(gpu=_gpu(device), device=device, model_type=choice.name, nchan=2)
        return CellposeModel(gpu=_gpu(device), device=device, pretrained_model=str(choice.path), nchan=2)

    def segment(self, model: Any, image: np.ndarray, eval_args: dict) -> np.ndarray:
        """Labels of one (Y, X, 2) network input."""
        return model.eval(image, channels=[1, 2], channel_axis=-1, normalize=False, **eval_args)[0]

    def training_model(self, cellpose: ModuleType, base_model: Any, device: Any, object_diameter: float):
        CellposeModel = cellpose.models.CellposeModel
        if base_model is None:  # from scratch, the network sized for objects of this diameter
            return CellposeModel(
                gpu=_gpu(device), device=device, pretrained_model=False, nchan=2, diam_mean=object_diameter
            )
        return self.load(cellpose, base_model, device)

    def training_input(self, x: np.ndarray) -> np.ndarray:
        return x

    def training_arguments(self) -> dict:
        return {"channels": None}

    def network_diameter(self, model: Any) -> float | None:
        return float(model.net.diam_mean.item())

    def default_crop_size(self, network_diameter: float | None = None) -> int:
        """As many object diameters as Cellpose 3's own 224 px crops of 30 px cells (128 px for
        17 px objects), in steps of 16."""
        if not network_diameter:
            return self.training_defaults["crop_size"]
        return max(64, 16 * round(CELLPOSE3_CROP_DIAMETERS * network_diameter / 16))


class Cellpose4(Cellpose3):
    major = 4
    label = "4.x (Cellpose-SAM)"
    generalist = "cpsam"
    builtin = ("cpsam",)
    restoration = False
    trains_from_scratch = False
    # Cellpose-SAM is fine-tuned gently, on 256 px crops
    training_defaults = {"learning_rate": 5e-5, "weight_decay": 0.1, "crop_size": 256}
    inference_vram_gb = {"weights": 1.2, "per_patch": 0.6}
    training_vram_gb = {"weights": 3.6, "per_crop": 2.0}

    def builtin_models(self, cellpose: ModuleType) -> tuple[str, ...]:
        return self.builtin

    def weight_file(self, name: str) -> str:
        return name

    def other_versions_models(self) -> tuple[str, ...]:
        return (*Cellpose3.weight_files, "cyto3")

    def load(self, cellpose: ModuleType, choice: Any, device: Any):
        return cellpose.models.CellposeModel(gpu=_gpu(device), device=device, pretrained_model=str(choice.path))

    def segment(self, model: Any, image: np.ndarray, eval_args: dict) -> np.ndarray:
        # Cellpose-SAM reads up to 3 channels as given: pad to 3, no `channels` argument
        image = np.concatenate([image, np.zeros(image.shape[:2] + (1,), image.dtype)], axis=-1)
        return model.eval(image, channel_axis=-1, normalize=False, **eval_args)[0]

    def training_model(self, cellpose: ModuleType, base_model: Any, device: Any, object_diameter: float):
        from gpubio.imaging.cellpose_models import model_dir

        start = base_model.path if base_model else model_dir(cellpose) / "cpsam"
        return cellpose.models.CellposeModel(gpu=_gpu(device), device=device, pretrained_model=str(start))

    def training_input(self, x: np.ndarray) -> np.ndarray:
        """Cellpose-SAM reads three channels: the two selected ones and a zero channel."""
        return np.concatenate([x, np.zeros((1,) + x.shape[1:], x.dtype)])

    def training_arguments(self) -> dict:
        return {}

    def network_diameter(self, model: Any) -> float | None:
        return None

    def default_crop_size(self, network_diameter: float | None = None) -> int:
        return self.training_defaults["crop_size"]


VERSIONS = {3: Cellpose3(), 4: Cellpose4()}


def cellpose_api(cellpose: ModuleType | int) -> Cellpose3:
    """The adapter of an imported cellpose package (or of a major version number)."""
    major = cellpose if isinstance(cellpose, int) else installed_major(cellpose)
    return VERSIONS[min(major, 4)]
