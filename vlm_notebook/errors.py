"""The errors vlm-notebook raises: each says what went wrong and what to do about it."""


class VLMError(Exception):
    """Base class of every error raised by vlm-notebook."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message is what the user can act on."""
        return [f"{type(self).__name__}: {self}"]


class UnknownModelError(VLMError, KeyError):
    """A model name that is neither a known short name, a Hub id of a supported family, nor a directory."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(VLMError):
    """A checkpoint that cannot be loaded: missing files, corrupt weights, or another model family."""


class CheckpointNotAvailableError(CheckpointError):
    """A Hub checkpoint that is not in the local cache while the Hub cannot be reached."""


class ImageError(VLMError, ValueError):
    """An image that cannot be read, is corrupt, or is too large."""


class RequestError(VLMError, ValueError):
    """A question or an option that cannot be used: empty question, bad max_new_tokens, unknown option."""


class DeviceError(RequestError):
    """A device this machine does not have, or a model that will not fit in the device's free memory."""


class RemoteError(VLMError):
    """A model server that cannot be reached, answers with an error, breaks off or sends what is not the API."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code  # the server's HTTP status, when it answered with one


class RemoteUnavailableError(RemoteError):
    """The server cannot answer now: busy (429), failing (5xx), unreachable, or the connection dropped.

    Trying again later may work (``caption_batch`` does, a few times); ``retry_after`` is the wait
    in seconds the server asked for in its Retry-After header, if it did.
    """

    def __init__(self, message: str, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message, status_code)
        self.retry_after = retry_after


class RemoteTimeoutError(RemoteError, TimeoutError):
    """A model server that sent no first token, or nothing more, within the time allowed."""
