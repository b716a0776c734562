"""The one exception the bitstream layer raises for bad or foreign files."""


class BitstreamError(ValueError):
    """A file is not a valid codec bitstream, is damaged, or belongs to another model.

    Every failure while parsing or decoding bytes is reported as this class (never an
    IndexError, struct.error, MemoryError, ...); the message is one human-readable line.
    """
