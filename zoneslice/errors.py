"""One root for every error zoneslice raises; the class decides the exit status.

As in dnspython, the docstring of each class is its default message.
"""

from __future__ import annotations


class ZonesliceError(Exception):
    """zoneslice failed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (self.__doc__,)))


class ZoneFileError(ZonesliceError):
    """The master file is malformed."""

    def __init__(self, filename: str, line: int | None, reason: str) -> None:
        self.filename = filename
        self.line = line
        self.reason = reason
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.filename, self.line, self.reason))


class SliceError(ZonesliceError):
    """The slice plan or a slice database is not usable."""


class StoreError(ZonesliceError):
    """A slice database could not be read or written."""


class ManifestError(ZonesliceError):
    """The manifest is missing or malformed."""


class UpdateRefused(ZonesliceError):
    """The update was refused."""

    def __init__(self, rcode: int, reason: str = "") -> None:
        self.rcode = rcode
        super().__init__(reason or f"update refused with rcode {rcode}")


class XdpError(ZonesliceError):
    """The XDP program could not be built, attached or driven."""


class TraceError(ZonesliceError):
    """The capture could not be read."""


class LayoutError(ZonesliceError):
    """The server layout is impossible or malformed."""


class DeployError(ZonesliceError):
    """Provisioning failed."""


class TestbedError(DeployError):
    """The local testbed could not be built, inspected or removed."""


class ServeError(ZonesliceError):
    """The engine could not start or serve."""


class ToolMissing(ZonesliceError):
    """An external program zoneslice drives is not installed."""


class CaptureFormatError(TraceError):
    """The file is not a pcap or pcapng capture."""


class JournalError(StoreError):
    """The journal of a slice database is unreadable or inconsistent."""


class KeyFileError(ZonesliceError):
    """The TSIG key file is missing or malformed."""
