"""Where `train` puts the model: a local file, an S3 object (``--out s3://bucket/key.tar.gz``) and/or a registry
version (``--registry ROOT``).

A model bound for S3 is packed into a temporary folder (``$TMPDIR``: the pod's emptyDir), verified as the server
loads it, then uploaded by `artifact.store.publish` (or `operations.push`, create-only under its version); nothing
is left behind. The destination is parsed before training starts, so a malformed one fails at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact.s3 import StoreError
from ..artifact.store import ModelSource, publish
from ..data.reading import Progress
from .root import Root, open_root


@dataclass(frozen=True)
class Destination:
    """The model's file (``out``, None = a temporary one) and where it is uploaded after training."""

    out: Path | None
    s3: ModelSource | None
    root: Root | None

    @classmethod
    def parse(cls, out: str | None, registry: str | None) -> Destination:
        """From the CLI's ``--out`` and ``--registry``; StoreError ``invalid`` if neither or malformed."""
        if not out and not registry:
            raise StoreError("invalid", "train needs --out (a path or s3://bucket/key.tar.gz), --registry ROOT, "
                                        "or both")
        try:
            root = open_root(registry) if registry else None
            source = ModelSource.parse(out) if out else None
        except ValueError as exc:
            raise StoreError("invalid", str(exc)) from None
        if source is not None and not source.is_s3:
            return cls(source.path, None, root)
        return cls(None, source, root)

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        """The path to train into: ``--out`` itself, or a file in a temporary folder removed afterwards."""
        if self.out is not None:
            yield self.out
            return
        with tempfile.TemporaryDirectory(prefix="retail-train-") as tmp:
            yield Path(tmp) / "model.tar.gz"

    def deliver(self, path: Path, *, progress: Progress | None = None) -> dict[str, Any]:
        """Upload the trained archive where it was asked for; what was written, for the command's JSON."""
        from .operations import RegistryError, push

        done: dict[str, Any] = {}
        if self.s3 is not None:
            published = publish(path, self.s3.bucket, self.s3.key)  # verified first, as `publish` does
            done.update(uri=published["uri"], etag=published["etag"])
            if progress:
                progress(f"uploaded {path.name} to {published['uri']}")
        if self.root is not None:
            try:
                record = push(self.root, path)
            except RegistryError as exc:
                raise StoreError("conflict", str(exc)) from None
            done.update(registry=self.root.uri, version=record["version"])
            if progress:
                progress(f"pushed version {record['version']} to {self.root.uri} (promote it with "
                         f"`retail-prediction registry promote {record['version']} --root {self.root.uri}`)")
        return done
