"""`invoke serve`: a websocket policy server that speaks openpi's protocol, so openpi's clients (openpi-client's
WebsocketClientPolicy, the LIBERO and DROID example loops) talk to a Triforce policy unchanged.

Protocol (openpi's serving/websocket_policy_server.py and openpi_client/websocket_client_policy.py):
- binary frames, msgpack with numpy arrays as {b"__ndarray__": True, b"data", b"dtype", b"shape"} maps and numpy
  scalars as {b"__npgeneric__": True, b"data", b"dtype"} (openpi_client.msgpack_numpy, not the msgpack-numpy package);
- on connect the server sends one frame of metadata; then each observation frame gets one reply frame:
  {"actions": float32 [horizon, action_dims], "policy_timing": {"infer_ms"}, "server_timing": {"infer_ms",
  "queue_ms", "prev_total_ms" (from the second request)}};
- an error is a text frame (openpi's client raises on any str reply). A bad observation gets "error: <message>" and
  the connection stays open for the next one; an unexpected failure gets the traceback and the connection is closed
  with 1011, as openpi does. The server itself keeps serving in both cases.
- GET /healthz answers 200 "OK".
One inference runs at a time (a single worker thread owns the model); other requests queue in arrival order. A request
whose client left while it waited is dropped before it reaches the GPU. SIGTERM/SIGINT close every connection with
1001, let the running inference finish, and return.
"""

from __future__ import annotations

import asyncio
import http
import logging
import signal
import socket
import statistics
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgpack
import numpy as np

from .errors import TriforceError

log = logging.getLogger("triforce.server")


# ── openpi's msgpack-numpy frames ───────────────────────────────────────────────────────────────────────────────────
def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "VOc":
        raise TypeError(f"cannot send numpy dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes):
    """A frame from a client; anything that is not openpi's msgpack-numpy is a TriforceError."""
    if not isinstance(data, (bytes, bytearray)):
        raise TriforceError("received a text frame: send the observation as a msgpack binary frame (openpi-client)")
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except Exception as err:  # msgpack and numpy raise many types for corrupt frames
        raise TriforceError(f"frame is not openpi msgpack-numpy ({type(err).__name__}: {err})") from None


# ── the server ──────────────────────────────────────────────────────────────────────────────────────────────────────
@dataclass
class ServeStats:
    connections: int = 0
    requests: int = 0
    errors: int = 0
    dropped: int = 0          # requests whose client left before their turn
    infer_ms: list = field(default_factory=list)


class PolicyServer:
    """Serves one Policy through a Preprocessor. `run()` until `stop()` (or a signal via `serve`)."""

    def __init__(self, policy, pre, host: str, port: int, metadata: dict):
        self.policy, self.pre = policy, pre
        self.host, self.port = host, port
        self.metadata = metadata
        self.stats = ServeStats()
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triforce-infer")  # one request at a time
        self._stop: asyncio.Event | None = None

    async def run(self, on_ready=None) -> ServeStats:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        try:
            server = await serve(self._handler, self.host, self.port, compression=None, max_size=None,
                                 process_request=_health_check)
        except OSError as err:
            raise TriforceError(f"cannot listen on {self.host}:{self.port} ({err.strerror}): pick another --port "
                                f"or stop what uses it") from None
        self.port = server.sockets[0].getsockname()[1]
        if on_ready:
            on_ready(self)
        await self._stop.wait()
        server.close(close_connections=True)  # 1001 going away to every client
        await server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._gpu.shutdown, True)
        return self.stats

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        self.stats.connections += 1
        peer = ws.remote_address
        log.info("connection from %s opened", peer)
        prev_total_ms = None
        try:
            await ws.send(pack(self.metadata))
            while True:
                frame = await ws.recv()
                start = time.perf_counter()
                try:
                    reply = await self._answer(ws, frame, start)
                except TriforceError as err:
                    self.stats.errors += 1
                    log.info("bad request from %s: %s", peer, err)
                    await ws.send(f"error: {err}")
                    continue
                if reply is None:  # the client left while queued
                    return
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(pack(reply))
                prev_total_ms = (time.perf_counter() - start) * 1000
        except ConnectionClosed:
            log.info("connection from %s closed", peer)
        except Exception:  # a bug, not bad input: tell the client like openpi, close this connection, keep serving
            self.stats.errors += 1
            log.exception("request from %s failed", peer)
            try:
                await ws.send(traceback.format_exc())
                await ws.close(code=CloseCode.INTERNAL_ERROR, reason="internal server error; traceback in previous frame")
            except ConnectionClosed:
                pass

    async def _answer(self, ws, frame, start: float) -> dict | None:
        loop = asyncio.get_running_loop()
        obs = unpack(frame)
        observation = await loop.run_in_executor(None, self.pre.observation, obs)  # preprocessing overlaps the GPU
        queued = time.perf_counter()
        result = await loop.run_in_executor(self._gpu, self._infer, ws, observation, queued)
        if result is None:
            self.stats.dropped += 1
            return None
        raw, queue_ms, model_ms = result
        actions = self.pre.actions(raw)
        self.stats.requests += 1
        self.stats.infer_ms.append(model_ms)
        total_ms = (time.perf_counter() - start) * 1000
        return {"actions": actions, "policy_timing": {"infer_ms": model_ms},
                "server_timing": {"infer_ms": total_ms - queue_ms, "queue_ms": queue_ms}}

    def _infer(self, ws, observation, queued: float):
        """Runs on the single inference thread."""
        from websockets.protocol import State

        started = time.perf_counter()
        if ws.state is not State.OPEN:
            return None
        raw = self.policy.infer(observation)
        return raw, (started - queued) * 1000, (time.perf_counter() - started) * 1000


def _health_check(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


# ── `invoke serve` ──────────────────────────────────────────────────────────────────────────────────────────────────
def _port(value) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise TriforceError(f"--port {value!r} is not a number: pass a TCP port (0 picks a free one)") from None
    if not 0 <= port <= 65535:
        raise TriforceError(f"--port {port} is out of range: pass 0..65535")
    return port


def _check_bindable(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address cannot be served."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise TriforceError(f"--host {host!r} does not resolve ({err.strerror}): pass an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as err:
            raise TriforceError(f"cannot listen on {host}:{port} ({err.strerror}): pick another --port") from None


def _say(message: str) -> None:
    print(message, flush=True)


def build_server(checkpoint: str, config: str, plan: str, device: str | None, host: str, port,
                 tokenizer: str | None = None, norm_stats: str | None = None, say=_say) -> PolicyServer:
    """Check everything cheap first (I/O spec, address, tokenizer, norm stats file), then load the policy."""
    from .runtime.checkpoint import SYNTHETIC_PREFIX
    from .runtime.config import load_config
    from .runtime.policy import Policy
    from .runtime.preprocess import Preprocessor, load_io_spec, load_norm_stats, norm_stats_path
    from .runtime.tokenizer import load_tokenizer

    port = _port(port)
    spec = load_io_spec(config)
    cfg = load_config(config)
    _check_bindable(host, port)
    synthetic = str(checkpoint).startswith(SYNTHETIC_PREFIX)
    tok = load_tokenizer(tokenizer, max_len=cfg.max_token_len, vocab_size=cfg.vocab_size, synthetic=synthetic)
    stats = load_norm_stats(norm_stats) if norm_stats else None
    say(f"loading {config} from {checkpoint} (plan {plan}, device {device or 'auto'})")
    policy = Policy.load(checkpoint, config, plan=plan, device=device)
    if stats is None and not policy.synthetic:
        stats = load_norm_stats(norm_stats_path(policy.checkpoint_dir, spec.asset_id))
    pre = Preprocessor(spec, policy.config, tok, stats)
    say(f"loaded in {policy.load_seconds:.1f} s; tokenizer: {pre.describe()['tokenizer'] or 'none (token ids only)'}; "
        f"actions: {'unnormalized with norm stats' if stats else 'normalized (synthetic weights, no norm stats)'}")
    metadata = {**pre.describe(), "server": "triforce", "plan": plan, "device": device or "auto",
                "synthetic": policy.synthetic, "checkpoint": str(checkpoint)}
    return PolicyServer(policy, pre, host, port, metadata)


def serve(checkpoint: str, config: str, plan: str, device: str | None, host: str, port, tokenizer: str | None = None,
          norm_stats: str | None = None, say=_say) -> ServeStats:
    """Run `invoke serve` until SIGTERM or SIGINT; returns what was served."""
    if not logging.getLogger().handlers:  # one line per connection and per refused request
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)
    server = build_server(checkpoint, config, plan, device, host, port, tokenizer, norm_stats, say)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        return await server.run(
            on_ready=lambda s: say(f"serving {config} (plan {plan}) on ws://{s.host}:{s.port} — Ctrl-C or SIGTERM stops"))

    return asyncio.run(main())


# ── client side ─────────────────────────────────────────────────────────────────────────────────────────────────────
class PolicyClient:
    """A minimal openpi-protocol client (what openpi-client's WebsocketClientPolicy does), with timeouts, and server
    errors as TriforceError. Used by measure_round_trip and scripts/libero_eval.py."""

    def __init__(self, host: str, port: int, timeout_s: float = 120.0):
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        self.where, self.timeout_s = f"ws://{host}:{port}", timeout_s
        try:
            self._ws = connect(self.where, compression=None, max_size=None, open_timeout=timeout_s).__enter__()
            self.metadata = unpack(self._ws.recv(timeout=timeout_s))
        except (OSError, WebSocketException, TimeoutError) as err:
            raise TriforceError(f"no policy server at {self.where} ({err}): start one with `invoke serve`") from None

    def infer(self, obs: dict) -> dict:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(pack(obs))
            reply = self._ws.recv(timeout=self.timeout_s)
        except ConnectionClosed as err:
            raise TriforceError(f"policy server at {self.where} closed the connection ({err}): is it still running?") from None
        except TimeoutError:
            raise TriforceError(f"policy server at {self.where} did not answer in {self.timeout_s:.0f} s") from None
        if isinstance(reply, str):
            raise TriforceError(f"policy server at {self.where} refused the observation: {reply.strip().splitlines()[-1]}")
        return unpack(reply)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure_round_trip(host: str, port: int, n: int, make_obs, warmup: int = 2, timeout_s: float = 120.0) -> dict:
    """Median client round trip (pack, send, wait, unpack) vs the server's own time for `n` requests of `make_obs()`,
    after `warmup` unmeasured ones. The difference is what the wire and (de)serialization cost."""
    if n < 1:
        raise TriforceError(f"n={n}: measure at least one request")
    round_trip, server_infer, model_infer = [], [], []
    with PolicyClient(host, port, timeout_s) as client:
        for i in range(warmup + n):
            obs = make_obs()
            start = time.perf_counter()
            reply = client.infer(obs)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= warmup:
                round_trip.append(elapsed)
                server_infer.append(reply["server_timing"]["infer_ms"])
                model_infer.append(reply["policy_timing"]["infer_ms"])
    return {"n": n, "round_trip_ms": statistics.median(round_trip), "server_infer_ms": statistics.median(server_infer),
            "policy_infer_ms": statistics.median(model_infer),
            "overhead_ms": statistics.median(r - s for r, s in zip(round_trip, server_infer))}
