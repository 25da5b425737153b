"""The systems the engine is compared with, each serving the same handlers (bench/handlers)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from bench import measure, procs
from bench.measure import Plan, Target
from bench.stats import Figures, timed_ms

HERE = Path(__file__).parent
SERVERS = HERE / "servers"
ENV = {"PYTHONPATH": str(HERE / "handlers"), "PYTHONDONTWRITEBYTECODE": "1"}
# The interpreter the engine's sandboxes run, so "interpreter start" is the same binary.
PYTHON3 = "/usr/bin/python3"
INTERPRETER = {"interpreter.python3_c_pass_ms": [PYTHON3, "-c", "pass"],
               "interpreter.python3_I_S_c_pass_ms": [PYTHON3, "-I", "-S", "-c", "pass"]}


def _ff_argv(port: int, target: str) -> list[str]:
    cli = shutil.which("functions-framework", path=str(Path(sys.executable).parent))
    if cli is None:
        raise FileNotFoundError("functions-framework is not installed in this venv "
                                "(pip install -e '.[bench]')")
    return [cli, "--source", str(SERVERS / "ff_main.py"), "--target", target,
            "--host", "127.0.0.1", "--port", str(port)]


def _targets(system: str, port: int) -> list[Target]:
    return [Target(system, h, f"http://127.0.0.1:{port}/{h}") for h in measure.HANDLERS]


@contextmanager
def _one_server(system: str, script: str, extra: tuple[str, ...], figs: Figures, plan: Plan,
                log: str) -> Iterator[list[Target]]:
    """A server of ``bench/servers`` serving every handler on one port."""
    port = procs.free_port()
    argv = procs.pinned([sys.executable, str(SERVERS / script), str(port), *extra],
                        plan.server_cpus)
    with procs.started(argv, ENV, log):
        yield _targets(system, port)


sanic = functools.partial(_one_server, "sanic", "sanic_app.py", ())
floor = functools.partial(_one_server, "floor", "floor_app.py", ())
fork = functools.partial(_one_server, "fork", "fork_app.py", (PYTHON3,))


@contextmanager
def functions_framework(figs: Figures, plan: Plan, log: str) -> Iterator[list[Target]]:
    """One functions-framework server per handler: it serves a single target."""
    with ExitStack() as stack:
        targets = []
        for handler in measure.HANDLERS:
            try:
                port = procs.free_port()
                argv = procs.pinned(_ff_argv(port, handler), plan.server_cpus)
            except FileNotFoundError as e:
                figs.fail(measure.http_keys("functions_framework", handler), e)
                continue
            stack.enter_context(procs.started(argv, ENV, log))
            targets.append(Target("functions_framework", handler, f"http://127.0.0.1:{port}/"))
        yield targets


# Each serves both handlers until its block ends; bench/run.py measures them all interleaved.
SYSTEMS: dict[str, Callable[[Figures, Plan, str], AbstractContextManager[list[Target]]]] = {
    "floor": floor, "sanic": sanic, "fork": fork, "functions_framework": functions_framework}


def interpreter(figs: Figures, plan: Plan) -> None:
    """Interpreter start: each run is the median of ``interpreter_runs`` starts."""
    for key, argv in INTERPRETER.items():
        try:
            runs = []
            for _ in range(max(plan.runs, 3)):
                start = functools.partial(subprocess.run, argv, check=True)
                starts = sorted(timed_ms(start) for _ in range(plan.interpreter_runs))
                runs.append(starts[len(starts) // 2])
            figs.add(key, runs, "ms")
        except (OSError, subprocess.CalledProcessError) as e:
            figs.fail([key], e)
