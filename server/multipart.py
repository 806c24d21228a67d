"""`multipart/form-data` bodies parsed synchronously, in a decode thread (server/limits.py).

Starlette's `request.form()` parses on the event loop: a 32 MB upload of many small parts kept
the loop busy for the whole parse. Here the body is already read and bounded (max_body_bytes,
body_timeout_s); the parse runs in the decode pool with python-multipart's push parser (the
library Starlette uses) and limits on the number of files, fields, part headers and field sizes,
so its cost is linear in the bounded body and never blocks other requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from server.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024  # a plain (non-file) field: flags such as per_step
# the parser logs every malformed body at WARNING before raising: a client's error, answered
# 400, must not let clients write the server's log
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


@dataclass
class Part:
    name: str
    filename: str | None = None  # None: a plain field
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class _Collector:
    """python-multipart callbacks -> a list of Parts, counting files and fields as they come."""

    def __init__(self, max_files: int, max_fields: int):
        self.max_files, self.max_fields = max_files, max_fields
        self.parts: list[Part] = []
        self.files = self.fields = 0
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._part: Part | None = None

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise _bad('a part has no Content-Disposition name')
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            self.files += 1
            if self.files > self.max_files:
                raise ApiError(413, "too_large", f"more than {self.max_files} files")
            ctype = self._headers.get(b"content-type")
            self._part = Part(name, options[b"filename"].decode("utf-8", "replace"),
                              ctype.decode("latin-1") if ctype else None)
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise _bad(f"more than {self.max_fields} form fields")
            self._part = Part(name)
        self.parts.append(self._part)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if not part.is_file and len(part.data) + (end - start) > MAX_FIELD_BYTES:
            raise _bad(f"form field {part.name[:50]!r} is over {MAX_FIELD_BYTES} bytes")
        part.data += data[start:end]

    def on_part_end(self) -> None:
        self._part = None


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", f"unreadable multipart body: {message}")


def parse(body: bytes, content_type: str, *, max_files: int, max_fields: int = 100) -> list[Part]:
    """Every part of a multipart body, in order. 400 `bad_request` for a malformed body or too
    many fields, 413 `too_large` for too many files. CPU-bound: call it in the decode pool."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("no boundary in the Content-Type")
    c = _Collector(max_files, max_fields)
    callbacks = {k: getattr(c, k) for k in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished")}
    try:
        parser = MultipartParser(boundary, callbacks, max_header_count=16)
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except (FormParserError, ValueError) as exc:
        raise _bad(type(exc).__name__) from None
    if parser.state != MultipartState.END:
        raise _bad("the body ends before its closing boundary")
    return c.parts
