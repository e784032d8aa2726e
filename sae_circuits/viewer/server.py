"""The viewer's local HTTP server (standard library only).

Routes (everything else is ``404``, other methods ``405``; the API routes take no query
parameters but ``/api/graph``'s two, each at most once: anything else is ``400``):

=====================================  ===========================================================
``GET /``                              the page (``static/index.html``)
``GET /<file>.js`` / ``.css``          the page's static files (a fixed list, read at start-up)
``GET /api/graph``                     the graph document (``?node_threshold=&edge_threshold=``
                                       re-prunes the full graph, see
                                       :class:`~sae_circuits.viewer.document.GraphSource`); with
                                       a second folder (``compare=``) the difference document of
                                       both at the same thresholds
                                       (:func:`~sae_circuits.viewer.compare.compare_documents`)
``GET /api/annotations``               labels, supernodes, pins
``GET /api/attention``                 the folder's QK attributions (``attention.json``, checked;
                                       ``{"records": []}`` without it, ``409`` when it cannot be
                                       read), see :meth:`GraphSource.attention
                                       <sae_circuits.viewer.document.GraphSource.attention>`
``POST /api/annotations``              a JSON patch (``application/json``, at most
                                       ``max_body_bytes``); answers the merged document
``GET /api/steer``                     whether steering is on (a model was given), why not, and
                                       its limits (:mod:`sae_circuits.viewer.steering`)
``POST /api/steer``                    a steering request (JSON, checked, one at a time, within
                                       a time limit): top logits before / after, continuations
                                       (``409`` without a model, ``429`` while another runs,
                                       ``504`` past the time limit)
``GET /api/features``                  the feature dashboards: whether there are any, why not, the
                                       labels of their index (:mod:`.dashboards`)
``GET /api/feature``                   one feature's dashboard (``?layer=L&feature=F``, both
                                       required): ``404`` without one, ``409`` for a file that
                                       cannot be read (the message says why)
``GET /files/<name>``                  a file of the served folder (e.g. ``graph.json`` to upload
                                       to Neuronpedia)
=====================================  ===========================================================

Safety (see :mod:`sae_circuits.viewer.security`): binds loopback only unless
``allow_remote=True``; on a loopback bind answers only requests whose ``Host`` names a loopback
address; refuses cross-origin writes (``Origin`` must be the page's own); reads files only inside
the served folder (no ``..``, absolute paths, hidden names, or links leading out); validates every
request body (size, JSON, schema) before touching the disk; sends a strict
``Content-Security-Policy`` (no inline script, no third-party origin) with the page.

Example:
    >>> server = make_server("out", port=0)      # an ephemeral port on 127.0.0.1
    >>> print(server.url)
    http://127.0.0.1:54321/
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> ...
    >>> server.shutdown(); server.server_close()
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_circuits.features import FeatureFileError
from sae_circuits.graph import GraphFileError
from sae_circuits.viewer.annotations import (
    DEFAULT_LIMITS,
    AnnotationError,
    AnnotationFileError,
    AnnotationLimits,
    AnnotationStore,
)
from sae_circuits.viewer.compare import compare_documents
from sae_circuits.viewer.dashboards import DashboardSource, NoDashboardError
from sae_circuits.viewer.document import GraphFolderError, GraphSource
from sae_circuits.viewer.security import (
    check_bind_host,
    host_header_ok,
    is_loopback,
    resolve_inside,
)

if TYPE_CHECKING:
    from sae_circuits.viewer.steering import Steerer

__all__ = ["STATIC_DIR", "ViewerServer", "make_server"]

logger = logging.getLogger(__name__)

#: The page's files, shipped as package data.
STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".zip": "application/zip",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DEFAULT_MAX_BODY = 1_000_000
_NO_MODEL = (
    "steering needs a model: serve the folder with --model M --transcoders T "
    "(sae-circuits serve FOLDER --model M --transcoders T)"
)


def _static_files() -> dict[str, Path]:
    """URL path -> file of the page, fixed at start-up (no path from a request reaches the disk)."""
    files = {
        f"/{p.name}": p
        for p in sorted(STATIC_DIR.iterdir())
        if p.is_file() and p.suffix in (".html", ".js", ".css")
    }
    if "/index.html" not in files:
        raise FileNotFoundError(
            f"the viewer's page is missing ({STATIC_DIR / 'index.html'}); reinstall sae-circuits"
        )
    files["/"] = files["/index.html"]
    return files


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server for one graph folder.

    Args:
        folder: The graph folder to serve.
        host: Address to bind (loopback unless ``allow_remote``).
        port: Port; ``0`` picks a free one (see :attr:`url`).
        allow_remote: Allow binding an address other machines can reach.
        max_body_bytes: Largest accepted request body.
        limits: Annotation size limits.
        compare: A second graph folder: the page shows the difference of ``folder`` (``a``) and
            it (``b``).
        steerer: A :class:`~sae_circuits.viewer.steering.Steerer` for the graph's prompt (a
            model and transcoders): enables ``/api/steer``.
        features: The folder of feature dashboards (default: ``folder/features`` when it
            exists).

    Raises:
        RemoteBindError: A non-loopback ``host`` without ``allow_remote``.
        FileNotFoundError: ``folder`` does not exist.
        GraphFolderError: ``folder`` holds no graph.
        OSError: The address cannot be bound (e.g. the port is in use).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        folder: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        limits: AnnotationLimits | None = None,
        compare: str | Path | None = None,
        steerer: Steerer | None = None,
        features: str | Path | None = None,
    ) -> None:
        check_bind_host(host, allow_remote=allow_remote)
        self.dashboards = DashboardSource(
            features if features is not None else Path(folder) / "features",
            explicit=features is not None,
        )
        self.source = GraphSource(folder)
        self.compare = GraphSource(compare) if compare is not None else None
        self.steerer = steerer
        self.folder = self.source.folder
        self.annotations = AnnotationStore(self.folder, limits or DEFAULT_LIMITS)
        self.static = _static_files()
        self.max_body_bytes = max_body_bytes
        self.check_host = is_loopback(host)
        bind = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if ":" in bind:
            self.address_family = socket.AF_INET6
        super().__init__((bind, port), ViewerHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection (a client that went away is no error) and keep serving."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("connection from %s ended: %r", client_address, error)
        else:
            logger.exception("error on the connection from %s", client_address)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        host = str(self.server_address[0])
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def make_server(
    folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    **kwargs: Any,
) -> ViewerServer:
    """A :class:`ViewerServer` for ``folder`` (not yet serving: call ``serve_forever``)."""
    return ViewerServer(folder, host=host, port=port, allow_remote=allow_remote, **kwargs)


#: A threshold in a query string: a plain ASCII decimal number (what the page sends).
#: (``nan`` and ``inf`` pass here, to be refused with the range.)
_NUMBER = re.compile(
    r"[-+]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?|nan|inf|infinity)", re.IGNORECASE
)


def _parse_query(query: str, names: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters (each of ``names`` at most once, with a value), or a 400."""
    if not query:
        return {}
    if not names:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "this address takes no query parameters")
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=10
        )
    except (ValueError, UnicodeDecodeError):
        raise _HTTPError(
            HTTPStatus.BAD_REQUEST,
            f"malformed query string {query[:80]!r}; valid parameters: {', '.join(names)}",
        ) from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in names:
            raise _HTTPError(
                HTTPStatus.BAD_REQUEST,
                f"unknown parameters [{key[:40]!r}]; valid: {', '.join(names)}",
            )
        if key in out:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"{key} is given more than once")
        if not value:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"{key} is empty; give a number in [0, 1]")
        out[key] = value
    return out


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ViewerHandler(BaseHTTPRequestHandler):
    """Request handler of :class:`ViewerServer` (routes in the module docstring)."""

    server: ViewerServer
    server_version = "sae-circuits-viewer"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # (the standard library's default, HTTP/0.9, answers a malformed request line without any
    # status line; no client speaks HTTP/0.9 any more)
    default_request_version = "HTTP/1.0"
    timeout = 30  # seconds a connection may stay silent (slow clients cannot hold threads)

    # -- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        try:
            body = json.dumps(obj, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in a string: send it escaped
            body = json.dumps(obj, allow_nan=False).encode("ascii")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message, "status": int(status)})

    def _dispatch(self, method: str) -> None:
        try:
            if self.server.check_host and not host_header_ok(
                self.headers.get("Host"), self.server.port
            ):
                raise _HTTPError(
                    HTTPStatus.FORBIDDEN,
                    "the Host header does not name this machine; open the viewer at "
                    f"{self.server.url}",
                )
            if not self.path.startswith("/"):
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "the request target must be a path")
            if "#" in self.path:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "the request target holds a fragment (#)")
            path, _, query = self.path.partition("?")
            getattr(self, f"_{method}")(path, query)
        except _HTTPError as e:
            if method == "post":  # the body may be unread: it must not be taken for a request
                self.close_connection = True
            if e.status >= 400:
                logger.info("%s %s -> %d: %s", self.command, self.path, e.status, e.message)
            self._error(e.status, e.message)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away during %s %s", self.command, self.path)
        except Exception as e:  # a bug: answer 500, keep serving, keep the traceback in the log
            logger.exception("error answering %s %s", self.command, self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")

    def do_GET(self) -> None:
        self._dispatch("get")

    def do_HEAD(self) -> None:
        self._dispatch("get")

    def do_POST(self) -> None:
        self._dispatch("post")

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body may follow, unread
        self._error(
            HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported; use GET or POST"
        )

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # -- routes ----------------------------------------------------------------------------

    def _get(self, path: str, query: str) -> None:
        static = self.server.static.get(path)
        if static is not None:  # (a query string on the page's files is ignored, as usual)
            suffix = static.suffix
            extra = {"Content-Security-Policy": _CSP} if suffix == ".html" else None
            self._send(HTTPStatus.OK, static.read_bytes(), _TYPES[suffix], extra)
        elif path == "/api/graph":
            self._graph(_parse_query(query, ("node_threshold", "edge_threshold")))
        elif path == "/api/attention":
            _parse_query(query, ())
            try:
                body = self.server.source.attention_bytes()
            except GraphFolderError as e:  # a broken file: a conflict with the folder's state
                raise _HTTPError(HTTPStatus.CONFLICT, str(e)) from e
            self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")
        elif path == "/api/annotations":
            _parse_query(query, ())
            try:
                self._json(HTTPStatus.OK, self.server.annotations.read())
            except AnnotationFileError as e:
                raise _HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, str(e)) from e
        elif path == "/api/steer":
            _parse_query(query, ())
            steerer = self.server.steerer
            self._json(
                HTTPStatus.OK,
                steerer.describe()
                if steerer is not None
                else {"enabled": False, "reason": _NO_MODEL, "limits": None},
            )
        elif path == "/api/features":
            _parse_query(query, ())
            self._json(HTTPStatus.OK, self.server.dashboards.status())
        elif path == "/api/feature":
            self._feature(_parse_query(query, ("layer", "feature")))
        elif path.startswith("/files/"):
            _parse_query(query, ())
            self._file(path[len("/files/") :])
        else:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such page: {path[:200]}")

    def _graph(self, query: dict[str, str]) -> None:
        values: dict[str, float | None] = {}
        for name in ("node_threshold", "edge_threshold"):
            raw = query.get(name)
            if raw is None:
                values[name] = None
                continue
            if not _NUMBER.fullmatch(raw):
                raise _HTTPError(
                    HTTPStatus.BAD_REQUEST,
                    f"{name} must be a number in [0, 1], got {raw!r:.40}",
                )
            values[name] = float(raw)
        try:
            if self.server.compare is not None:
                a = self.server.source.document(**values)
                b = self.server.compare.document(**values)
                self._json(HTTPStatus.OK, compare_documents(a, b))
                return
            body = self.server.source.document_bytes(**values)
        except (TypeError, ValueError) as e:
            # (a broken file of the folder is a conflict with its state, not a bad request)
            conflict = isinstance(e, (GraphFolderError, GraphFileError))
            status = HTTPStatus.CONFLICT if conflict else 400
            raise _HTTPError(HTTPStatus(status), str(e)) from e
        self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")

    def _feature(self, query: dict[str, str]) -> None:
        ids = {}
        for name in ("layer", "feature"):
            raw = query.get(name)
            if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
                raise _HTTPError(
                    HTTPStatus.BAD_REQUEST, f"give ?layer=L&feature=F as whole numbers ({name})"
                )
            ids[name] = int(raw)
        try:
            record = self.server.dashboards.feature(ids["layer"], ids["feature"])
        except NoDashboardError as e:
            raise _HTTPError(HTTPStatus.NOT_FOUND, str(e)) from e
        except FeatureFileError as e:
            raise _HTTPError(HTTPStatus.CONFLICT, f"bad feature file: {e}") from e
        self._json(HTTPStatus.OK, record)

    def _file(self, encoded: str) -> None:
        try:
            relative = urllib.parse.unquote(encoded, errors="strict")
        except UnicodeDecodeError:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "the file name is not valid UTF-8") from None
        try:
            target = resolve_inside(self.server.folder, relative)
            if target is None:
                raise _HTTPError(
                    HTTPStatus.FORBIDDEN, "only plain files inside the served folder can be read"
                )
            if not target.is_file():
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such file: {relative[:200]}")
            data = target.read_bytes()
        except OSError as e:  # e.g. a name too long for the file system
            raise _HTTPError(
                HTTPStatus.NOT_FOUND, f"no such file: {relative[:200]} ({e.strerror})"
            ) from None
        content_type = _TYPES.get(target.suffix, "application/octet-stream")
        self._send(
            HTTPStatus.OK,
            data,
            content_type,
            {"Content-Disposition": f'attachment; filename="{target.name}"'},
        )

    def _post(self, path: str, query: str) -> None:
        if path not in ("/api/annotations", "/api/steer"):
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path[:200]}")
        _parse_query(query, ())
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "cross-origin writes are not allowed")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HTTPError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "send the patch as Content-Type: application/json",
            )
        body = self._read_body()
        try:
            patch = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            # (ValueError: JSONDecodeError, and integers of more digits than Python converts)
            message = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
            raise _HTTPError(
                HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {message}"
            ) from None
        if path == "/api/steer":
            self._steer(patch)
            return
        try:
            merged = self.server.annotations.update(patch)
        except AnnotationError as e:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from e
        except AnnotationFileError as e:
            raise _HTTPError(HTTPStatus.CONFLICT, str(e)) from e
        self._json(HTTPStatus.OK, merged)

    def _steer(self, request: Any) -> None:
        from sae_circuits.viewer.steering import (
            SteeringBusyError,
            SteeringError,
            SteeringTimeoutError,
        )

        steerer = self.server.steerer
        if steerer is None:
            raise _HTTPError(HTTPStatus.CONFLICT, _NO_MODEL)
        try:
            result = steerer.run(request)
        except SteeringError as e:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from e
        except SteeringBusyError as e:
            raise _HTTPError(HTTPStatus.TOO_MANY_REQUESTS, str(e)) from e
        except SteeringTimeoutError as e:
            raise _HTTPError(HTTPStatus.GATEWAY_TIMEOUT, str(e)) from e
        self._json(HTTPStatus.OK, result)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {raw!r:.40}")
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as a request
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes; at most {self.server.max_body_bytes}",
            )
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "the request body is shorter than announced")
        return body
