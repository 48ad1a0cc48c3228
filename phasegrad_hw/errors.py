"""Every error the library raises on purpose: configuration problems and the device-side
failures of the substrate contract."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file or payload that does not validate (one line per problem)."""


class SubstrateError(Exception):
    """Base class of every device-side failure."""


class LimitError(SubstrateError, ValueError):
    """A value outside the device model's range; nothing was sent."""


class LockLostError(SubstrateError):
    """The oscillators are not phase-locked (phases slip between reads)."""


class DeviceTimeoutError(SubstrateError, TimeoutError):
    """The device did not answer within its timeout."""


class ProtocolError(SubstrateError):
    """A reply that breaks the protocol (bad checksum, wrong sequence number, garbage)."""


class DeviceError(SubstrateError):
    """The device reported an error or is in a state it cannot leave by itself."""
