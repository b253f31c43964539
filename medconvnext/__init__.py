"""medconvnext: 3D classifiers (ConvNeXt, ConvMixer, ResNeXt) for CT and MRI volumes.

The library is usable without the CLI; heavy imports (torch, monai) happen in submodules.
"""

__version__ = "0.1.0"
