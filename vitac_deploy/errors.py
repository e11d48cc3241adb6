"""Errors that the CLI turns into one line on stderr and an exit code."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class VitacError(Exception):
    """A user or input error: bad path, bad config, checkpoint mismatch. Exit code 2."""

    exit_code = 2


class ValidationError(VitacError):
    """An artifact does not reproduce its reference within the stated tolerance. Exit code 1."""

    exit_code = 1


class BackendUnavailable(VitacError):
    """A requested backend (onnxruntime, torch, tensorrt) or device is not installed/present."""

    exit_code = 2
