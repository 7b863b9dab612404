"""A request's fields checked against the bundle it asks, and its base64 images decoded: each failure names the field."""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class BadRequest(ValueError):
    """A request the bundle cannot answer. ``location`` is the field's path in the body, as FastAPI's own
    validation errors give it (``("body", "inputs", 2)``), so a client reads both kinds of 422 the same way."""

    def __init__(self, location: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.location = location

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": list(self.location), "msg": str(self), "type": "value_error"}]


def checked_tasks(asked: list[str] | None, tasks: list[str]) -> list[str]:
    """The tasks a request asks for (``None``: all of ``tasks``, the bundle's), each once."""
    if asked is None:
        return list(tasks)
    unknown = [name for name in asked if name not in tasks]
    if unknown:
        raise BadRequest(("body", "tasks"), f"unknown task(s) {unknown}: this server predicts the tasks {list(tasks)}.")
    return list(dict.fromkeys(asked))


def checked_count(inputs: list, max_inputs: int) -> None:
    if len(inputs) > max_inputs:
        raise BadRequest(("body", "inputs"), f"{len(inputs)} inputs: a request holds at most {max_inputs} (the server's max_inputs); split it.")


def decoded_image(data: str, index: int):
    """A base64 string (optionally a ``data:`` URL) -> an RGB ``PIL.Image``, fully decoded."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(DATA_URL.sub("", data, count=1))))
        image.load()
        return image.convert("RGB")
    except (binascii.Error, OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        raise BadRequest(("body", "inputs", index), f"inputs[{index}] is no base64-encoded image that Pillow can read: {error}") from error


def decoded_inputs(inputs: list[str], texts: bool) -> list:
    """What the pipeline predicts: the texts themselves, or the decoded images."""
    return list(inputs) if texts else [decoded_image(data, index) for index, data in enumerate(inputs)]
