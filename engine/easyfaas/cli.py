"""The ``easyfaas`` command: run the engine (``up``, ``serve``) and talk to it over its HTTP API.

Client commands use only the stdlib (``urllib``) so they start fast; the engine's heavy imports
happen only in ``serve``. The reverse holds too: every engine process starts here, so what only
client commands need (``urllib.request`` pulls in ``ssl``/``http.client``/``email``, ``zipfile``)
is imported inside those commands — at module level it cost each engine process ~4 MiB PSS.
Every error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import config, funclog
from .config import Config
from .errors import EasyFaaSError

SERVE_COMPONENTS = ("stubs", "funclet", "controller", "httptrigger")
# Modules an engine process would import without ever using them (see ``_refuse_imports``):
# ``ssl`` (asyncio loads it if it can) where only unix sockets are served — sanic needs it —
# and ``ujson``, which sanic would prefer for its own JSON where the engine uses orjson. ``up``
# preloads sanic for the components it forks (supervisor.py).
UNUSED_IMPORTS = {"up": ("ujson",), "stubs": ("ssl",), "funclet": ("ssl",),
                  "controller": ("ujson",), "httptrigger": ("ujson",)}
# The components on the request path run on uvloop: about half the per-request event-loop cost
# of asyncio's own loop for well under 1 MiB (docs/performance.md). sanic imports it anyway.
UVLOOP_COMPONENTS = ("controller", "httptrigger")
HTTP_TIMEOUT_S = 330.0  # above the longest function timeout a user is likely to set


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# ---- arguments -------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration")
    g.add_argument("--config", action="append", metavar="FILE", type=Path,
                   help="read this engine.toml instead of the default files (repeatable)")
    g.add_argument("--code-dir", metavar="DIR", help="override paths.code_dir")
    g.add_argument("--state-dir", metavar="DIR", help="override paths.state_dir")
    g.add_argument("--http-listen", metavar="HOST:PORT",
                   help="override http.listen (the trigger; empty disables it)")
    g.add_argument("--api-listen", metavar="HOST:PORT", help="override api.listen")
    return p


def _client() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--token", help="management token (default: $EASYFAAS_TOKEN, then the "
                                   "token file in the state dir)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common, client = _common(), _client()
    parser = argparse.ArgumentParser(
        prog="easyfaas", description="EasyFaaS: a function-as-a-service engine for edge machines."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", parents=[common], help="run the whole engine (as root) until Ctrl-C")
    serve = sub.add_parser("serve", parents=[common], help="run one component in the foreground")
    serve.add_argument("component", choices=SERVE_COMPONENTS)
    inv = sub.add_parser("invoke", parents=[common, client], help="call a function")
    inv.add_argument("name")
    inv.add_argument("--data", default="{}", metavar="JSON|@FILE",
                     help="the event: JSON text, or @FILE to read it from a file (default {})")
    inv.add_argument("--async", dest="is_async", action="store_true",
                     help="queue the call and print its invocation id")
    inv.add_argument("--qualifier", metavar="Q", help="version to call (default $LATEST)")
    inv.add_argument("--log", action="store_true", help="print the call's log tail to stderr")
    sub.add_parser("ls", parents=[common, client], help="list functions")
    logs = sub.add_parser("logs", parents=[common], help="show a function's log")
    logs.add_argument("name")
    logs.add_argument("-n", type=int, default=100, metavar="N", help="lines to show (default 100)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    deploy = sub.add_parser("deploy", parents=[common, client],
                            help="upload a function directory (zipped) over the API")
    deploy.add_argument("dir", type=Path)
    deploy.add_argument("--name", help="function name (default: the directory's name)")
    sub.add_parser("token", parents=[common], help="print the management token")
    sub.add_parser("status", parents=[common, client], help="engine health and sandbox pools")
    return parser


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys set by command-line flags, shaped like the TOML."""
    out: dict[str, dict[str, Any]] = {}
    if args.code_dir is not None:
        out.setdefault("paths", {})["code_dir"] = str(Path(args.code_dir).absolute())
    if args.state_dir is not None:
        out.setdefault("paths", {})["state_dir"] = str(Path(args.state_dir).absolute())
    if args.http_listen is not None:
        out["http"] = {"listen": args.http_listen}
    if args.api_listen is not None:
        out["api"] = {"listen": args.api_listen}
    return out


def config_args(args: argparse.Namespace) -> list[str]:
    """The configuration flags again, for child processes (``up`` → ``serve``)."""
    out: list[str] = []
    for path in args.config or []:
        out += ["--config", str(path.absolute())]
    for flag, value in (("--code-dir", args.code_dir), ("--state-dir", args.state_dir)):
        if value is not None:
            out += [flag, str(Path(value).absolute())]
    for flag, value in (("--http-listen", args.http_listen), ("--api-listen", args.api_listen)):
        if value is not None:
            out += [flag, value]
    return out


def load_config(args: argparse.Namespace) -> Config:
    return config.load(args.config, overrides(args))


# ---- talking to the engine's API -------------------------------------------------------------


class Api:
    """The controller's HTTP API, found via ``<run_dir>/api.addr`` (the bound address of a
    running engine) or else the configured ``api.listen``."""

    def __init__(self, cfg: Config, token: str | None):
        try:
            addr = (cfg.run_dir / "api.addr").read_text().strip()
        except OSError:
            addr = ""
        self.addr = addr or cfg.api.listen
        self.token = token

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; HTTP errors are returned (not raised), an unreachable API is a
        ``CliError``."""
        import urllib.error
        import urllib.request

        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"http://{self.addr}{path}", body, hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()
        except (urllib.error.URLError, OSError) as e:
            raise CliError(
                f"cannot reach the engine API at {self.addr} — is `easyfaas up` running?"
            ) from e

    def json(self, method: str, path: str, body: bytes | None = None) -> Any:
        """A request whose success is JSON; an error status becomes a ``CliError``."""
        status, _, data = self.request(method, path, body)
        if status >= 400:
            raise CliError(api_error(status, data))
        return json.loads(data) if data else None


def api_error(status: int, data: bytes) -> str:
    """One line from an EasyFaaS error body (``{"Code","Message",...}``)."""
    try:
        err = json.loads(data)
        return f"{err['Message']} ({err['Code']}, HTTP {status})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {data.decode(errors='replace').strip()[:200]}"


def find_token(args: argparse.Namespace, cfg: Config) -> str | None:
    if args.token:
        return str(args.token)
    if os.environ.get("EASYFAAS_TOKEN"):
        return os.environ["EASYFAAS_TOKEN"]
    try:
        return cfg.token_file.read_text().strip() or None
    except OSError:
        return None


# ---- commands ----------------------------------------------------------------------------------


def read_data(data: str) -> bytes:
    if not data.startswith("@"):
        return data.encode()
    try:
        return Path(data[1:]).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {data[1:]}: {e.strerror}") from e


def cmd_invoke(args: argparse.Namespace, api: Api) -> int:
    import base64
    import urllib.parse

    query = "?" + urllib.parse.urlencode({"Qualifier": args.qualifier}) if args.qualifier else ""
    headers = {}
    if args.is_async:
        headers["X-easyfaas-Invoke-Type"] = "event"
    if args.log:
        headers["Log-Type"] = "Tail"
    name = urllib.parse.quote(args.name, safe="")
    status, resp_headers, body = api.request(
        "POST", f"/v1/functions/{name}/invocations{query}", read_data(args.data), headers
    )
    if status >= 400:
        raise CliError(api_error(status, body))
    lower = {k.lower(): v for k, v in resp_headers.items()}
    if args.log and lower.get("x-easyfaas-log-result"):
        sys.stderr.write(base64.b64decode(lower["x-easyfaas-log-result"]).decode(errors="replace"))
    sys.stdout.write(body.decode(errors="replace") + "\n")
    return 1 if lower.get("x-easyfaas-function-error") else 0


def _functions(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("Functions"), list):
        raise CliError("unexpected answer from GET /v1/functions")
    return list(payload["Functions"])


def format_table(functions: list[dict[str, Any]]) -> str:
    """``easyfaas ls``: one row per function, from the API's ``{"Configuration", "LastError"}``."""
    rows = [("NAME", "VERSION", "RUNTIME", "MEMORY", "STATE", "ERROR")]
    for fn in functions:
        conf = fn.get("Configuration") or {}
        error = fn.get("LastError") or {}
        rows.append((
            str(conf.get("FunctionName", "")),
            str(conf.get("Version") or "-"),
            str(conf.get("Runtime") or "-"),
            f"{conf['MemorySize']}MB" if conf.get("MemorySize") else "-",
            str(conf.get("State") or ""),
            str(error.get("message", "")),
        ))
    rows[1:] = sorted(rows[1:])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def cmd_ls(args: argparse.Namespace, api: Api) -> int:
    sys.stdout.write(format_table(_functions(api.json("GET", "/v1/functions"))))
    return 0


def zip_dir(directory: Path) -> bytes:
    """The bundle: every file under ``directory`` except dot files/dirs and ``__pycache__``."""
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory")
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(root) / name
                zf.write(path, path.relative_to(directory).as_posix())
    return buf.getvalue()


def cmd_deploy(args: argparse.Namespace, api: Api) -> int:
    import base64
    import urllib.parse

    name = args.name or args.dir.absolute().name
    body = json.dumps({"Code": base64.b64encode(zip_dir(args.dir)).decode()}).encode()
    record = api.json("POST", f"/v1/functions/{urllib.parse.quote(name, safe='')}", body)
    print(json.dumps(record, indent=2))
    return 0


def cmd_status(args: argparse.Namespace, api: Api) -> int:
    status, _, body = api.request("GET", "/healthz")
    print(f"engine api http://{api.addr}: {'healthy' if status == 200 else f'HTTP {status}'}")
    if body:
        print(body.decode(errors="replace").strip())
    print(json.dumps(api.json("GET", "/v1/runtimes"), indent=2))
    return 0 if status == 200 else 1


def cmd_token(cfg: Config) -> int:
    try:
        print(cfg.token_file.read_text().strip())
    except FileNotFoundError as e:
        raise CliError(f"no token at {cfg.token_file} — start the engine once "
                       "(`easyfaas up`) to create it") from e
    except OSError as e:
        raise CliError(f"cannot read {cfg.token_file}: {e.strerror}") from e
    return 0


def follow_log(path: Path, poll_s: float = 0.5) -> None:
    """Print what is appended to ``path`` until Ctrl-C, across rotations."""
    offset = path.stat().st_size if path.exists() else 0
    inode = path.stat().st_ino if path.exists() else None
    while True:
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino != inode or st.st_size < offset):
            inode, offset = st.st_ino, 0  # rotated or truncated: start the new file at its top
        if st is not None and st.st_size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        time.sleep(poll_s)


def cmd_logs(args: argparse.Namespace, cfg: Config) -> int:
    sys.stdout.write(funclog.tail(cfg.state_dir, args.name, args.n))
    sys.stdout.flush()
    if args.follow:
        try:
            follow_log(funclog.log_path(cfg.state_dir, args.name))
        except KeyboardInterrupt:
            pass
    return 0


def _die_with_supervisor() -> bool:
    """Under ``easyfaas up``, get SIGTERM when the supervisor dies, even by SIGKILL, so no
    component outlives it. False if it is already gone."""
    import ctypes
    import signal

    from .supervisor import SUPERVISOR_PID_ENV

    parent = os.environ.get(SUPERVISOR_PID_ENV)
    if not parent:
        return True

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == int(parent)


def cmd_serve(component: str, cfg: Config) -> int:
    """Run one component until SIGTERM/SIGINT (what systemd units and ``up`` start)."""
    import asyncio
    import importlib
    import logging
    import signal

    from . import logsetup, notify

    logsetup.setup(component)
    if not _die_with_supervisor():
        return 1
    service = importlib.import_module(f"easyfaas.{component}.service")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Pings come from this loop, so a component whose loop hangs gets restarted by systemd.
        pinger = asyncio.create_task(notify.watchdog())
        try:
            await service.run(cfg, stop)
        finally:
            pinger.cancel()

    loop_factory = None
    if component in UVLOOP_COMPONENTS:
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
    except Exception:
        logging.getLogger(f"easyfaas.{component}").exception("%s failed", component)
        return 1
    return 0


def _refuse_imports(modules: tuple[str, ...]) -> None:
    """Make ``import`` of these modules fail in this process: a ``None`` entry in
    ``sys.modules`` raises ImportError, which their importers handle (no TLS, no uvloop). Each
    costs a process about 0.5–1 MiB PSS it would never use; a later real use fails closed."""
    for name in modules:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def dispatch(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    _refuse_imports(UNUSED_IMPORTS.get(getattr(args, "component", args.command), ()))
    if args.command == "up":
        from . import supervisor

        return supervisor.run(cfg, config_args(args))
    if args.command == "serve":
        return cmd_serve(args.component, cfg)
    if args.command == "token":
        return cmd_token(cfg)
    if args.command == "logs":
        return cmd_logs(args, cfg)
    api = Api(cfg, find_token(args, cfg))
    commands = {"invoke": cmd_invoke, "ls": cmd_ls, "deploy": cmd_deploy, "status": cmd_status}
    return commands[args.command](args, api)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except (CliError, EasyFaaSError) as e:
        print(f"easyfaas: error: {e}", file=sys.stderr)
        return 1
