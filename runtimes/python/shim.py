"""knative-lambda Python shim: serves a Lambda-style handler as a CloudEvents HTTP service.

See runtimes/README.md for the contract. Standard library only.
"""
import base64
import concurrent.futures
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1024 * 1024
# Read from the environment once the function is known: at start, or when a warm process is
# claimed (see claim below).
PORT = ROOT = HANDLER = FUNCTION_NAME = TIMEOUT = None


def configure():
    global PORT, ROOT, HANDLER, FUNCTION_NAME, TIMEOUT
    PORT = int(os.environ.get("PORT", "8080"))
    ROOT = os.environ.get("KLAMBDA_FUNCTION_ROOT", os.getcwd())
    HANDLER = os.environ.get("KLAMBDA_HANDLER", "app.handler")
    FUNCTION_NAME = os.environ.get("KLAMBDA_FUNCTION_NAME", "function")
    TIMEOUT = float(os.environ.get("KLAMBDA_TIMEOUT_SECONDS", "30"))


def claim():
    """The local runner's warm pool (KLAMBDA_POOL=1): this process started before any function
    was chosen, Python and this shim's modules loaded, and waits for one JSON line on stdin
    naming the function: {"env": {...}, "cwd": "...", "uid": n|null}. It takes that environment
    and directory, drops to the function's user and group (it was started as root for this
    only), and serves as if it had been started for that function."""
    import ctypes  # loaded while waiting, not after the claim

    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)  # the runner is gone before it chose a function
    claimed = json.loads(line)
    parent = os.getppid()
    os.environ.clear()
    os.environ.update(claimed["env"])
    time.tzset()
    os.chdir(claimed["cwd"])
    uid = claimed.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        # A change of user clears the parent-death signal and makes the process undumpable;
        # both as a process started as that user has them (PR_SET_PDEATHSIG, PR_SET_DUMPABLE).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        libc.prctl(4, 1, 0, 0, 0)
        if os.getppid() != parent:
            sys.exit(0)  # the runner died before the signal was set again


def encode_header(value):
    """CloudEvents binary mode: percent-encode space, '"', '%' and bytes outside U+0021-U+007E."""
    return "".join(
        chr(b) if 0x20 < b < 0x7F and b not in (0x22, 0x25) else f"%{b:02X}"
        for b in str(value).encode("utf-8")
    )


def load_handler():
    sys.path.insert(0, os.path.join(ROOT, ".deps"))
    sys.path.insert(0, ROOT)
    module_name, _, function_name = HANDLER.rpartition(".")
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise RuntimeError(f"{module_name} has no function named {function_name}")
    return handler


def log_failure(request_id, kind, message, stack=None):
    """One JSON line on stderr per failed invocation, with its request id, so `klambda logs`
    (and a cluster's log pipeline) ties the failure to the event, as Lambda's "ERROR RequestId"."""
    line = {"level": "error", "requestId": request_id, "kind": kind, "message": message}
    if stack:
        line["stack"] = stack[-8:]
    print(json.dumps(line), file=sys.stderr, flush=True)


class Context:
    def __init__(self, attributes, deadline):
        self.aws_request_id = attributes["id"]
        self.function_name = FUNCTION_NAME
        self.cloudevent = attributes
        self._deadline = deadline

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# A Python thread cannot be stopped, so a handler that ran past its timeout keeps its worker.
# As Lambda does with a timed-out environment, the shim then recycles itself: it takes no new
# call (503, which the broker retries), answers the ones in flight, and exits; the runner starts
# a fresh process. Without this, 16 timed-out calls would leave no worker and every later call
# would time out while /health said all was well.
RECYCLE_EXIT = 75
state = {"active": 0, "stuck": 0}
state_lock = threading.Lock()


def make_server(handler):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    class Shim(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def problem(self, status, title, detail, **extra):
            body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/problem+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != "/health":
                return self.problem(404, "Not found", self.path)
            with state_lock:
                stuck = state["stuck"]
            if stuck:
                return self.problem(503, "Recycling", f"{stuck} handler call(s) ran past the timeout")
            body = b'{"status":"alive"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def read_event(self, body):
            content_type = self.headers.get("content-type", "")
            if content_type.startswith("application/cloudevents-batch"):
                raise ValueError("batch mode is not supported")
            if content_type.startswith("application/cloudevents"):
                attributes = json.loads(body)
                data = attributes.pop("data", None)
                encoded = attributes.pop("data_base64", None)
                return attributes, (base64.b64decode(encoded) if encoded is not None else data)
            attributes = {
                name[3:].lower(): urllib.parse.unquote(value)
                for name, value in self.headers.items()
                if name.lower().startswith("ce-")
            }
            data = None
            if body:
                data = json.loads(body) if (not content_type or "json" in content_type) else body.decode()
            return attributes, data

        def do_POST(self):
            with state_lock:
                if state["stuck"]:
                    recycling = True
                else:
                    recycling = False
                    state["active"] += 1
            if recycling:
                return self.problem(503, "Recycling", "a handler call ran past the timeout; the function restarts")
            try:
                self.invoke()
            finally:
                with state_lock:
                    state["active"] -= 1
                    done = state["stuck"] and not state["active"]
                if done:
                    self.wfile.flush()
                    print(json.dumps({"message": "recycling: a handler call ran past the timeout", "stuck": state["stuck"]}), flush=True)
                    os._exit(RECYCLE_EXIT)

        def invoke(self):
            # The subscriber URI may say what becomes of the reply (a Knative Trigger cannot):
            # ?replyType=T types it T; ?reply=none drops it (an asynchronous invocation's result).
            target = urllib.parse.urlsplit(self.path)
            if target.path != "/":
                return self.problem(405, "Method not allowed", "POST / with a CloudEvent")
            query = urllib.parse.parse_qs(target.query)
            reply_type = (query.get("replyType") or [None])[0]
            drop_reply = (query.get("reply") or [None])[0] == "none"
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                return self.problem(413, "Payload too large", f"limit {MAX_BODY} bytes")
            try:
                attributes, data = self.read_event(self.rfile.read(length))
            except Exception as error:  # noqa: BLE001 - any decoding failure is the client's
                return self.problem(400, "Invalid CloudEvent", str(error))
            for required in ("id", "source", "type", "specversion"):
                if not attributes.get(required):
                    return self.problem(400, "Invalid CloudEvent", f"missing {required}")
            context = Context(attributes, time.monotonic() + TIMEOUT)
            future = pool.submit(handler, data, context)
            try:
                result = future.result(timeout=TIMEOUT)
            except concurrent.futures.TimeoutError:
                with state_lock:
                    state["stuck"] += 1
                log_failure(attributes["id"], "timeout", f"handler ran past {TIMEOUT} s")
                return self.problem(504, "Handler timeout", f"handler ran past {TIMEOUT} s")
            except Exception as error:  # noqa: BLE001 - the handler's error is the answer
                stack = traceback.format_exception(type(error), error, error.__traceback__)
                log_failure(attributes["id"], "error", str(error), [l.rstrip() for l in stack])
                # What Lambda's error document needs: the error's type and its stack.
                return self.problem(
                    500, "Handler error", str(error),
                    errorType=type(error).__name__,
                    stackTrace=[l.rstrip() for l in traceback.format_tb(error.__traceback__)],
                )
            if result is None or drop_reply:
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            body = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("ce-specversion", "1.0")
            self.send_header("ce-id", encode_header(f"{attributes['id']}.response"))
            self.send_header("ce-source", encode_header(f"/functions/{FUNCTION_NAME}"))
            self.send_header("ce-type", encode_header(reply_type or f"{attributes['type']}.response"))
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    # KLAMBDA_BIND: the local runner serves on loopback only; a container listens on every interface.
    return ThreadingHTTPServer((os.environ.get("KLAMBDA_BIND", "0.0.0.0"), PORT), Shim)


def main():
    if os.environ.get("KLAMBDA_POOL") == "1":
        claim()
    configure()
    try:
        handler = load_handler()
    except Exception as error:  # noqa: BLE001 - report and exit non-zero
        print(f"cannot start: {error}", file=sys.stderr)
        sys.exit(1)
    server = make_server(handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"message": "serving", "port": PORT, "handler": HANDLER}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
