"""Errors the pipeline raises on purpose, each with a short machine-readable reason.

The job runner stores ``reason`` in the database (``failed`` with a reason) and shows
``message`` to people; ``instances`` names the offending SOP instances so that a technologist
can find them on the scanner. Nothing in these errors carries patient identity: UIDs only.
"""

from __future__ import annotations

from collections.abc import Iterable


class PipelineError(Exception):
    """A refusal or failure the caller is expected to record, never a crash."""

    def __init__(self, reason: str, message: str, instances: Iterable[str] = ()) -> None:
        self.reason = reason
        self.message = message
        self.instances = tuple(instances)
        super().__init__(self.__str__())

    @property
    def detail(self) -> str:
        """The message and the instances it names, without the ``[reason]`` prefix.

        For callers that store the reason beside the text (the job runner writes
        ``[reason] detail``), so that the reason does not appear twice.
        """
        if not self.instances:
            return self.message
        shown = ", ".join(self.instances[:5])
        more = f" and {len(self.instances) - 5} more" if len(self.instances) > 5 else ""
        return f"{self.message} (instances: {shown}{more})"

    def __str__(self) -> str:
        return f"[{self.reason}] {self.detail}"


class VolumeError(PipelineError):
    """The instances do not make one regular 3D volume (``pipeline.volume`` refuses them)."""


class InputError(PipelineError):
    """The files given are not readable DICOM or not one series (``pipeline.io``)."""


class EnhanceError(PipelineError):
    """The enhancement step cannot run: unknown engine, no usable factor, engine failure."""
