"""A real HTTP file server on 127.0.0.1 that can misbehave on purpose.

It serves byte strings by path, honours `Range: bytes=START-[END]` (206 / 416), records
every request, and can be told to fail the next requests: answer an error status, cut the
connection part-way through the body, trickle the body a byte at a time, or ignore Range and
send the whole file with 200. It can also leave out Content-Length (the body then ends when the
connection closes), as servers that generate a file on the fly do.
"""

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Seen:
    path: str
    range: str | None  # the Range header as sent, None when absent
    status: int


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    fail_statuses: list[int] = field(default_factory=list)  # popped, one per request
    cut_after: list[int] = field(default_factory=list)  # body bytes sent before a cut, popped
    trickle: list[float] = field(default_factory=list)  # seconds between body bytes, popped
    ignore_range: bool = False
    hide_length: bool = False
    seen: list[Seen] = field(default_factory=list)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "FileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        range_header = self.headers.get("Range")
        with self.server._lock:
            fail = behaviour.fail_statuses.pop(0) if behaviour.fail_statuses else None
            cut = behaviour.cut_after.pop(0) if behaviour.cut_after else None
            trickle = behaviour.trickle.pop(0) if behaviour.trickle else None
        data = behaviour.files.get(self.path)
        if fail is not None or data is None:
            status = fail or 404
            behaviour.seen.append(Seen(self.path, range_header, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, start, end = 200, 0, len(data)
        match = _RANGE.fullmatch(range_header or "")
        if match and not behaviour.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, len(data)) if match.group(2) else len(data)
            if start >= len(data):
                behaviour.seen.append(Seen(self.path, range_header, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        behaviour.seen.append(Seen(self.path, range_header, status))
        self.send_response(status)
        if not behaviour.hide_length:
            self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:end]
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # the client sees the body end early
            return
        if trickle is not None:
            self._trickle(body, trickle)
            return
        self.wfile.write(body)

    def _trickle(self, body: bytes, delay: float) -> None:
        """Send one byte every `delay` seconds until done or the client hangs up."""
        try:
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
