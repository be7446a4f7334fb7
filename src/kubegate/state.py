"""Allocations that survive restarts: a JSON state file, replaced atomically.

A crash or a full disk at any moment leaves either the old file or the new one, never a mix: the new
content goes to a temporary file in the same directory (so the rename cannot cross filesystems), is
flushed and fsynced, renamed over the old file, and the directory is fsynced so the rename itself is
durable. A file that cannot be read or decoded is an error, never silently replaced by an empty state:
that would hand every Service new addresses.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import msgspec

from kubegate.translate.context import Allocations

_ENCODER = msgspec.json.Encoder(order="sorted")
_DECODER = msgspec.json.Decoder(Allocations)


class StateError(Exception):
    """The state file could not be read, decoded or written; the message names the file and the cause."""


def load_allocations(path: Path) -> Allocations:
    """The allocations saved in ``path``; empty when the file does not exist yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Allocations()
    except OSError as error:
        raise StateError(f"cannot read state file {path}: {error.strerror or error}") from None
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as error:
        raise StateError(
            f"state file {path} is corrupt ({error}); fix or remove it (removing it lets every Service "
            "be allocated afresh)"
        ) from None


def save_allocations(path: Path, allocations: Allocations) -> None:
    """Replace ``path`` with ``allocations`` atomically and durably. Raises StateError on failure, leaving
    the previous file as it was."""
    data = _ENCODER.encode(allocations) + b"\n"
    directory = path.parent
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise StateError(f"cannot write state file {path}: {error.strerror or error}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateError(f"cannot write state file {path}: {error.strerror or error}") from None
    _fsync_directory(directory, path)


def _fsync_directory(directory: Path, path: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        raise StateError(
            f"wrote state file {path} but cannot open its directory to sync it: {error}"
        ) from None
    try:
        os.fsync(descriptor)
    except OSError as error:
        raise StateError(f"wrote state file {path} but cannot sync its directory: {error}") from None
    finally:
        os.close(descriptor)
