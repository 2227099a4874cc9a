"""``rnnlab serve``: the local web app, an adapter over :class:`~rnnlab.viz.explore.Explorer`.

The one module of rnnlab that imports a web framework: Starlette (routing, requests, streaming
responses) served by uvicorn, both from the ``serve`` extra and imported lazily, so the core never
needs them. Routes::

    GET  /                 the page (static/serve.html with its CSS and JavaScript inlined)
    GET  /api/info         the model, the vocabulary size and the server's limits, as JSON
    GET  /api/sample       a sample as server-sent events (text/event-stream), one event per
                           character: {"ch", "p" (a character of the prime), "h" (base64 float16,
                           layers x H), "top" [[token, probability], ...]}; then "done"
    POST /api/report       {"text", "chars", "seed"} -> the report page for that text (text/html)

Every request is bounded (:class:`Limits`): the prime, the sample length, the pasted text and the
request body have maxima, and at most ``max_generations`` samples and ``max_reports`` reports run
at once (more get 429). A bad request gets a 4xx with ``{"error": one line}``; an unexpected
failure a 500 with one line, never a traceback. The model runs in worker threads, so the event
loop keeps serving while it computes. Ctrl-C (or SIGTERM) stops the server: open streams end after
their current character (with a "failed" event saying so), connections get ``GRACE_S`` seconds to
close, then the process exits with status 0.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import RnnlabError

GRACE_S = 2.0
"""Seconds open connections get to finish after Ctrl-C."""


@dataclass
class Limits:
    """What one request may ask for, and how many may run at once."""

    max_prime: int = 1_000          # characters of a priming text
    max_length: int = 2_000         # characters sampled per request
    max_text: int = 20_000          # characters of a pasted text (the report shows at most max_chars of it)
    max_chars: int = 10_000         # characters shown in a report
    max_generations: int = 4        # samples streaming at once
    max_reports: int = 1            # reports computed at once

    def body_bytes(self) -> int:
        """Largest request body: the pasted text in UTF-8 (at most 4 bytes a character) and a little JSON."""
        return 4 * self.max_text + 4096


def _require():
    """Import the web packages, or say in one line how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RnnlabError(f'rnnlab serve needs Starlette and uvicorn ({exc.name} is missing): '
                          'pip install "rnnlab[serve]"') from None


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _param(q, name: str, kind, default, lo=None, hi=None):
    """Query parameter ``name`` as ``kind`` within ``[lo, hi]``, or a 400 naming it."""
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw[:40]!r}") from None
    if kind is float and not math.isfinite(v):
        raise _BadRequest(f"{name} must be a finite number, got {raw[:40]!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _BadRequest(f"{name} must lie in [{lo}, {hi}], got {raw[:40]}")
    return v


def _f16(arrays) -> str:
    """``[(H,) per layer]`` -> base64 of the float16 values, layer after layer."""
    return base64.b64encode(np.concatenate(arrays).astype("<f2").tobytes()).decode("ascii")


def _sse(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode("utf-8")


def create_app(explorer, limits: Limits | None = None, stopping: threading.Event | None = None):
    """The Starlette application over ``explorer`` (an :class:`~rnnlab.viz.explore.Explorer`);
    streams end early once ``stopping`` is set (the server is shutting down)."""
    _require()
    stopping = stopping or threading.Event()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from .report import _static, fill

    limits = limits or Limits()
    busy = {"generations": 0, "reports": 0}
    page = fill(_static("serve.html"), {"CSS": _static("common.css") + _static("serve.css"),
                                        "COMMON_JS": _static("common.js"), "SERVE_JS": _static("serve.js")})
    model = explorer.model

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    def guarded(handler):
        """Bad requests -> 4xx with the message; anything unexpected -> 500 with one line."""

        async def wrapped(request):
            try:
                return await handler(request)
            except _BadRequest as exc:
                return error(str(exc), exc.status)
            except RnnlabError as exc:
                return error(str(exc), 400)
            except Exception as exc:  # a bug: one line to the client and to the terminal
                print(f"rnnlab serve: internal error in {request.url.path} ({type(exc).__name__}: {exc})",
                      file=sys.stderr, flush=True)
                return error(f"internal error ({type(exc).__name__}); see the server's terminal", 500)

        return wrapped

    async def index(request):
        return HTMLResponse(page)

    async def info(request):
        return JSONResponse({"model": explorer.cell, "layers": model.layers, "hidden": model.hidden,
                             "vocab": explorer.vocab.size, "lines": explorer.lines, "limits": asdict(limits),
                             "run": explorer.meta.get("run"), "prime": _default_prime(explorer)})

    async def sample(request):
        q = request.query_params
        prime = q.get("prime", "")
        if len(prime) > limits.max_prime:
            raise _BadRequest(f"the prime has {len(prime):,} characters; the limit is {limits.max_prime:,}", 413)
        length = _param(q, "length", int, 300, 1, limits.max_length)
        temperature = _param(q, "temperature", float, 0.8, 0.0, 10.0)
        top_k = _param(q, "top_k", int, 0, 0, explorer.vocab.size)
        seed = _param(q, "seed", int, None, 0, 2**63 - 1)
        cps = _param(q, "cps", float, 0.0, 0.0, 10_000.0)  # characters per second, 0 = as fast as computed
        if 0 < cps < 1:
            raise _BadRequest(f"cps (characters per second) must be 0 (no pacing) or at least 1, got {cps}")
        if not prime and not explorer.lines:
            raise _BadRequest("the prime is empty: type a few characters for the model to continue")
        explorer.vocab.encode(prime, what="the prime")  # unknown characters: a 400 now, not an event later
        if busy["generations"] >= limits.max_generations:
            raise _BadRequest(f"{limits.max_generations} samples are already being generated; try again when one "
                              "has finished", 429)
        busy["generations"] += 1
        gen = explorer.sample(prime, length=length, temperature=temperature, top_k=top_k,
                              rng=np.random.default_rng(seed))

        def step():
            return next(gen, None)

        async def events():
            n, t0 = 0, time.perf_counter()
            try:
                yield _sse({"layers": model.layers, "hidden": model.hidden, "length": length}, "meta")
                while not stopping.is_set():
                    item = await run_in_threadpool(step)
                    if item is None:
                        break
                    n += not item["prime"]
                    yield _sse({"ch": item["ch"], "p": item["prime"], "h": _f16(item["h"]),
                                "top": [[tok, round(p, 4)] for tok, p in item["top"]]})
                    if cps > 0 and not item["prime"]:
                        await asyncio.sleep(1.0 / cps)
                if stopping.is_set():
                    yield _sse({"error": "the server is shutting down"}, "failed")
                else:
                    yield _sse({"chars": n, "seconds": round(time.perf_counter() - t0, 3)}, "done")
            except RnnlabError as exc:  # e.g. a diverged model's NaN scores
                yield _sse({"error": " ".join(str(exc).split())}, "failed")
            finally:
                busy["generations"] -= 1
                gen.close()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def report(request):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.body_bytes()):
            raise _BadRequest(f"the request body is over {limits.body_bytes():,} bytes; paste at most "
                              f"{limits.max_text:,} characters", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.body_bytes():
                raise _BadRequest(f"the request body is over {limits.body_bytes():,} bytes", 413)
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _BadRequest('the body must be JSON: {"text": "...", "chars": N, "seed": S}') from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise _BadRequest('the body must be a JSON object with a "text" string')
        text = obj["text"]
        if not text.strip():
            raise _BadRequest("the text is empty: paste some text to look at")
        if len(text) > limits.max_text:
            raise _BadRequest(f"the text has {len(text):,} characters; the limit is {limits.max_text:,}", 413)
        chars, seed = obj.get("chars", 4000), obj.get("seed", 0)
        for name, v, hi in (("chars", chars, limits.max_chars), ("seed", seed, 2**31 - 1)):
            if isinstance(v, bool) or not isinstance(v, int) or not (1 if name == "chars" else 0) <= v <= hi:
                raise _BadRequest(f"{name} must be an integer in [{1 if name == 'chars' else 0}, {hi}], got {v!r}")
        if busy["reports"] >= limits.max_reports:
            raise _BadRequest("a report is already being computed; try again in a moment", 429)
        busy["reports"] += 1
        try:
            html, _ = await run_in_threadpool(explorer.report, text, chars=chars, seed=seed, text_file="the pasted text")
        finally:
            busy["reports"] -= 1
        return HTMLResponse(html)

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return error("no such page: try /" if status == 404 else f"{request.method} is not allowed here", status)

    routes = [Route("/", guarded(index)), Route("/api/info", guarded(info)),
              Route("/api/sample", guarded(sample)), Route("/api/report", guarded(report), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _default_prime(explorer) -> str:
    """A prime the model knows (typed into a one-line box, so never a newline)."""
    if explorer.lines:
        return ""
    chars = explorer.vocab.chars
    for p in ("ROMEO:", "def ", "The "):
        if all(c in chars for c in p):
            return p
    return next((c for c in chars if c.isalnum()), chars[-1])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RnnlabError(f"cannot resolve --host {host!r} ({exc.strerror}): use e.g. 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise RnnlabError(f"port {port} on {host} is already in use: choose another with --port "
                              "(0 picks a free one)") from None
        raise RnnlabError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.setblocking(False)
    return sock


class _Stop(Exception):
    """Raised by the SIGTERM handler once uvicorn has shut down."""


def run(explorer, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None, say=print) -> None:
    """Serve until Ctrl-C or SIGTERM; returns after a clean shutdown."""
    _require()
    import uvicorn

    stopping = threading.Event()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C / SIGTERM: open streams end now, not at the grace limit
            stopping.set()
            super().handle_exit(sig, frame)

    app = create_app(explorer, limits, stopping)
    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_S,
                            lifespan="off")
    server = Server(config)
    say(f"rnnlab serve: http://{shown}:{real_port}/ (Ctrl-C stops it)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"note: listening on {host}: other machines that reach it can use the model; there is no login")

    def on_term(signum, frame):  # uvicorn re-raises the signal after its shutdown: end quietly
        raise _Stop()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        sock.close()
    say("rnnlab serve: stopped")
