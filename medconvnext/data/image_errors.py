"""What a scan that cannot be used raises, and ITK's reason in one line: below every module that reads scans
(:mod:`~medconvnext.data.io`, :mod:`~medconvnext.data.dicom`, :mod:`~medconvnext.data.detached`), so none of them
imports another for its errors."""

from __future__ import annotations

import re
from pathlib import Path

from medconvnext.data.capture import MedconvnextWarning
from medconvnext.errors import UserError

__all__ = ["GeometryError", "GeometryWarning", "ImageError", "itk_reason"]


class ImageError(UserError):
    """A scan that cannot be used: ``problem`` is the reason, the message ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class GeometryError(ImageError):
    """A scan whose geometry cannot be decided (sform/qform conflict, an irregular DICOM series)."""


class GeometryWarning(MedconvnextWarning):
    """A scan whose geometry was decided by a documented rule where another reading was possible."""



# "itk::ERROR: NrrdImageIO(0x55a9...): ", "sitk::ERROR: ", "ITK ERROR: GDCMImageIO(0x...): ", "[nrrd] _nrrdRead: "
_ITK_PREFIX = re.compile(r"^((s?itk::|ITK )(ERROR|WARNING):\s*)?(\w+\(0x[0-9a-f]+\):\s*)?(\[\w+\]\s*)?")


def itk_reason(exc: BaseException) -> str:
    """The root cause in a SimpleITK exception: its last meaningful line, without ITK's source location
    ('Exception thrown in SimpleITK ...: /path/itkNrrdImageIO.cxx:410:'), object addresses and prefixes."""
    lines = [_ITK_PREFIX.sub("", line.strip()).strip() for line in str(exc).splitlines()[1:]]
    lines = [line for line in lines if line]
    return lines[-1][:200] if lines else str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
