"""The inference bundle: one sealed, self-describing directory that never needs unpickling.

- ``cmi.bundle.reader`` verifies and loads a bundle (the Kaggle path), file by file through
  ``cmi.bundle.files`` (listed, checksummed, never a pickle), the Torch members through
  ``cmi.bundle.torch_part``;
- ``cmi.bundle.builder`` writes one from the training stages' outputs (``build_bundle``);
- ``cmi.bundle.seal`` is the manifest's seal (a digest over the manifest, which lists every
  file's sha256).

Importing ``cmi.bundle`` gives the reader's names only: the builder is imported by those who
build (``from cmi.bundle.builder import build_bundle``), never by inference.
"""

from cmi.bundle.files import ALLOWED_SUFFIXES, MANIFEST_NAME, PICKLE_SUFFIXES, BundleError
from cmi.bundle.reader import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PARTS,
    Bundle,
    LgbmPart,
    OrientationPart,
    PostprocessSettings,
    library_versions,
    load_bundle,
    read_manifest,
)
from cmi.bundle.seal import SealError, manifest_digest
from cmi.bundle.torch_part import TORCH_KINDS, TorchMember, TorchPart

__all__ = [
    "ALLOWED_SUFFIXES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PARTS",
    "PICKLE_SUFFIXES",
    "TORCH_KINDS",
    "Bundle",
    "BundleError",
    "LgbmPart",
    "OrientationPart",
    "PostprocessSettings",
    "SealError",
    "TorchMember",
    "TorchPart",
    "library_versions",
    "load_bundle",
    "manifest_digest",
    "read_manifest",
]
