"""The writers of ``examples/data/fashion_formats.py`` (real Fashion-MNIST images in the
layouts users bring: Keras .npz, PNG folders, CIFAR's python and binary files), for the
tests: the example users read is the code the tests run."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "examples" / "data" / "fashion_formats.py"
_spec = importlib.util.spec_from_file_location("fashion_formats", _PATH)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

NAMES = _mod.NAMES
fashion = _mod.fashion
rgb32 = _mod.rgb32
write_png_folder = _mod.write_png_folder
write_cifar_python = _mod.write_cifar_python
write_cifar_binary = _mod.write_cifar_binary
