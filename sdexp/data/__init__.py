"""Data sets as uint8 tensors (``dataset`` config group) and the loaders that feed them to training.

:mod:`~sdexp.data.splits` builds the splits and their loaders; :mod:`~sdexp.data.sources` reads the
on-disk formats, :mod:`~sdexp.data.cache` keeps them decoded, :mod:`~sdexp.data.loader` and
:mod:`~sdexp.data.torch_loader` are the fast and the reference input paths.
"""

from sdexp.data.loader import DeviceLoader
from sdexp.data.sources import DatasetError
from sdexp.data.splits import DatasetName, ImageSplits, Loader, LoaderKind, Split, build_data, build_loaders
from sdexp.data.torch_loader import TorchLoader

__all__ = [
    "DatasetError",
    "DatasetName",
    "DeviceLoader",
    "ImageSplits",
    "Loader",
    "LoaderKind",
    "Split",
    "TorchLoader",
    "build_data",
    "build_loaders",
]
