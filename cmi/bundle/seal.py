"""The manifest's seal: a digest over the manifest's own content, which includes every file's
sha256, so one short string names the exact bundle.

The seal holds a sha256 of every top-level key and of every key one level down (e.g.
``torch.pad_len``, ``files.lgbm/fold_0.txt``), and a digest over that table. Verifying
recomputes the table from the content: an edit is reported by the keys it touched, and an
edit to the seal itself by the digest not matching the table. Hashes are over canonical JSON
(sorted keys, no spaces), i.e. over values as JSON holds them, so a manifest written and read
back verifies exactly as built.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SEAL_KEY = "seal"
ALGORITHM = "sha256/canonical-json/v1"
_PREFIX = "sha256:"


class SealError(ValueError):
    """The manifest has no valid seal, or its content no longer matches it."""


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def content_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of each top-level key and of each second-level key of dict sections."""
    hashes: dict[str, str] = {}
    for key, value in manifest.items():
        if key == SEAL_KEY:
            continue
        hashes[key] = _sha256(value)
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                hashes[f"{key}.{sub}"] = _sha256(sub_value)
    return hashes


def _digest_of(hashes: dict[str, str]) -> str:
    return _PREFIX + _sha256(hashes)


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` (JSON-normalized) with its seal; the last step of a build."""
    content = json.loads(canonical_json({k: v for k, v in manifest.items() if k != SEAL_KEY}))
    hashes = content_hashes(content)
    return {
        **content,
        SEAL_KEY: {"algorithm": ALGORITHM, "hashes": hashes, "digest": _digest_of(hashes)},
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The digest a sealed manifest claims (verify it with ``verify_seal``)."""
    seal = manifest.get(SEAL_KEY)
    if not isinstance(seal, dict) or not isinstance(seal.get("digest"), str):
        raise SealError("the manifest is not sealed (no 'seal' with a 'digest')")
    return seal["digest"]


def _most_specific(keys: set[str], among: set[str]) -> list[str]:
    """Drop a section when one of its keys is listed: 'torch.pad_len', not also 'torch'."""
    return sorted(k for k in keys if not any(other.startswith(f"{k}.") for other in among))


def verify_seal(manifest: dict[str, Any]) -> str:
    """The manifest's digest if its content is exactly what was sealed; else SealError naming
    the keys that were edited, added or removed."""
    digest = manifest_digest(manifest)
    seal = manifest[SEAL_KEY]
    if seal.get("algorithm") != ALGORITHM:
        raise SealError(f"unknown seal algorithm {seal.get('algorithm')!r} (expected {ALGORITHM})")
    sealed = seal.get("hashes")
    if not isinstance(sealed, dict):
        raise SealError("the seal has no 'hashes' table")
    found = content_hashes(manifest)
    changed = {k for k in found.keys() & sealed.keys() if found[k] != sealed[k]}
    added, removed = found.keys() - sealed.keys(), sealed.keys() - found.keys()
    touched = changed | added | removed
    problems = [
        f"{what}: {', '.join(names)}"
        for what, keys in (("edited", changed), ("added", added), ("removed", removed))
        if (names := _most_specific(set(keys), touched))
    ]
    if problems:
        raise SealError(
            f"the manifest was changed after the bundle was sealed ({'; '.join(problems)}); "
            "rebuild the bundle instead of editing it"
        )
    if _digest_of(sealed) != digest:
        raise SealError(
            f"the seal itself was edited: its digest {digest} does not match its hashes "
            f"({_digest_of(sealed)})"
        )
    return digest
