"""The pre-fork master, after gunicorn's arbiter.

The master binds the sockets, forks N workers that share the listen socket, and then only
supervises: it reaps and respawns workers (with backoff), drains them on SIGTERM/SIGINT, replaces
them on SIGHUP, and serves the admin API on its own uvloop loop.

Signals: the loop's signal handlers only enqueue the signal number; one dispatcher task calls
``handle_<name>``. Lifecycle verbs: ``spawn_worker``, ``spawn_workers``, ``reap_workers``,
``murder_workers``, ``manage_workers``, ``reload``, ``stop``.

Reload order: new generation forked → all of it ready → old generation SIGTERMed (drains, exits).
A new generation that fails to become ready is stopped and the old one keeps serving, so neither
an invalid config nor a worker that cannot boot with a valid one interrupts traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import uvloop

from fluxgate.config import load_config, worker_count
from fluxgate.config.resolve import build_listener_tls, listen_address
from fluxgate.config.schema import Config
from fluxgate.errors import ConfigError
from fluxgate.master.admin import AdminServer, ReloadResult, build_router, resolve_admin_token
from fluxgate.master.certificates import expiry_metrics, log_expiry
from fluxgate.master.fork import fork_worker
from fluxgate.master.services import SERVICES, MasterService
from fluxgate.master.sockets import bind_admin, bind_listen, sock_address
from fluxgate.master.state import lock_state_dir, remove_state_files, write_gateway_json
from fluxgate.metrics import MetricsTable, ProcessMetric, RouteSlots
from fluxgate.tls import ListenerTls
from fluxgate.worker.worker import EXIT_BOOT_ERROR, WorkerSpec

log = logging.getLogger("fluxgate.master")

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)

RESPAWN_MIN_DELAY = 0.1
RESPAWN_MAX_DELAY = 10.0
STABLE_LIFETIME = 30.0  # a worker that lived this long resets the respawn backoff
MAX_BOOT_FAILURES = 5  # consecutive EXIT_BOOT_ERROR exits before the master gives up
READY_TIMEOUT = 30.0  # a reload's new generation must be ready within this
KILL_GRACE = 1.0  # added to drain_timeout before SIGKILL; also the whole budget of SIGQUIT
TICK = 0.5  # housekeeping period: reap (should a SIGCHLD be lost), murder, respawn

EXIT_OK = 0
EXIT_STARTUP_ERROR = 1
EXIT_WORKER_BOOT_FAILED = 3  # as gunicorn's halt on WORKER_BOOT_ERROR

METRICS_FILE = "metrics.bin"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already dead, not yet reaped


def _workers(n: int) -> str:
    """The count as the log lines say it: "1 worker", "2 workers"."""
    return f"{n} worker{'' if n == 1 else 's'}"


def respawn_delay(failures: int) -> float:
    """Backoff before respawning after ``failures`` consecutive worker deaths (>= 1)."""
    return min(RESPAWN_MIN_DELAY * 2 ** max(failures - 1, 0), RESPAWN_MAX_DELAY)


@dataclass(eq=False)
class Generation:
    """One set of workers that share a config (a reload starts the next one)."""

    number: int
    config: Config
    listen_socket: socket.socket
    route_slots: tuple[int, ...]
    size: int
    # The listener's TLS context, certificates read when the generation was built: workers
    # respawned later in the generation present the same ones.
    tls: ListenerTls | None = None
    failure: str | None = None  # why a worker of this generation died before it was ready


@dataclass(eq=False)
class WorkerProcess:
    """The master's view of one forked worker."""

    pid: int
    worker_id: int
    generation: Generation
    ready_fd: int  # read end of the ready pipe; -1 once closed
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    kill_at: float | None = None  # set once asked to stop: SIGKILL after this (monotonic)
    killed: bool = False


class Arbiter:
    """The master process: one per gateway. ``run()`` returns the process exit code."""

    def __init__(
        self, config: Config, config_path: str | None, *, workers_override: int | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.workers_override = workers_override
        self.workers: dict[int, WorkerProcess] = {}
        self.current: Generation | None = None
        self.restarts = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.admin: AdminServer | None = None
        self.metrics: MetricsTable | None = None
        self.route_slots: RouteSlots | None = None
        self._state_dir = config.state_dir
        self._admin_sock: socket.socket | None = None
        self._listen_sockets: list[socket.socket] = []  # the master's copies, every generation
        self._lock_fd = -1
        self._generations = 0
        self._pending: Generation | None = None
        self._failures = 0  # consecutive unexpected deaths, for the backoff
        self._boot_failures = 0  # consecutive EXIT_BOOT_ERROR exits of never-ready workers
        self._next_spawn_at = 0.0
        self._respawn_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._stop_task: asyncio.Task[object] | None = None
        self._exit_code: int | None = None
        # Event, Queue and Lock bind to the running loop on first use (3.10+).
        self._changed = asyncio.Event()  # set on any worker state change
        self._signals: asyncio.Queue[int] = asyncio.Queue(maxsize=64)
        self._reload_lock = asyncio.Lock()
        self._done: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.services: list[MasterService] = []

    @property
    def state_dir(self) -> str:
        """Where keys.db, shared tables and counters live (fixed for the master's lifetime)."""
        return self._state_dir

    # ---- main -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run the master until it stops; returns the exit code."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._serve())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def _serve(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        try:
            await self._start()
        except (ConfigError, OSError) as exc:
            log.error("cannot start: %s", exc)
            if self.workers:  # a fork failed midway: do not leave the others orphaned
                await self.stop(graceful=False)
            await self._cleanup()
            return EXIT_STARTUP_ERROR
        try:
            return await self._done
        finally:
            await self._cleanup()

    async def _start(self) -> None:
        cfg = self.config
        os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
        self._lock_fd = lock_state_dir(self._state_dir)
        tls = build_listener_tls(cfg)
        listen_sock = bind_listen(listen_address(cfg))
        self._listen_sockets.append(listen_sock)
        self._admin_sock = bind_admin(cfg.admin.listen)
        self.metrics = MetricsTable.create(os.path.join(self._state_dir, METRICS_FILE))
        self.route_slots = RouteSlots(self.metrics)
        token, token_file = resolve_admin_token(cfg.admin.token, self._state_dir)
        log.info("admin token in %s", token_file or "the config (admin.token)")
        router = build_router(self)
        self.services = [factory(self) for factory in SERVICES]
        for service in self.services:
            service.admin_routes(router)
            await service.start(cfg)
        self.admin = AdminServer(router, token)
        await self.admin.start(self._admin_sock)
        for sig in HANDLED_SIGNALS:
            if sig == signal.SIGCHLD:
                # uvloop reserves SIGCHLD for its subprocesses (the master starts none); a plain
                # handler still wakes the loop through uvloop's wakeup fd, and only hands the
                # number over, thread-safe style, as it may run between any two bytecodes.
                signal.signal(sig, self._on_sigchld)
            else:
                self.loop.add_signal_handler(sig, self._enqueue_signal, sig)
        self._spawn_task(self._dispatch_signals())
        self._spawn_task(self._housekeeping())

        size = worker_count(cfg, self.workers_override)
        slots = self.route_slots.assign([r.route for r in cfg.routes])
        self.current = self._new_generation(cfg, listen_sock, slots, size, tls)
        self._write_state()
        self.spawn_workers(self.current)
        log.info("master %s: listening on %s:%s%s, admin on %s:%s, %s", os.getpid(),
                 *sock_address(listen_sock), " (TLS)" if tls else "",
                 *sock_address(self._admin_sock), _workers(size))
        log_expiry(tls)

    async def _cleanup(self) -> None:
        if self.loop is not None:
            for sig in HANDLED_SIGNALS:
                if sig == signal.SIGCHLD:
                    signal.signal(sig, signal.SIG_DFL)
                else:
                    self.loop.remove_signal_handler(sig)
        for task in list(self._tasks):
            task.cancel()
        if self._respawn_timer is not None:
            self._respawn_timer.cancel()
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("service %s failed to stop", service.name)
        if self.admin is not None:
            await self.admin.close()
        elif self._admin_sock is not None:
            self._admin_sock.close()
        for sock in self._listen_sockets:
            sock.close()
        self._listen_sockets.clear()
        for w in list(self.workers.values()):
            self._close_ready_pipe(w)
        if self.metrics is not None:
            self.metrics.close()
        if self._lock_fd >= 0:  # only the lock holder owns the state files
            remove_state_files(self._state_dir, METRICS_FILE)
            os.close(self._lock_fd)  # releases the flock; the lock file itself stays
            self._lock_fd = -1

    def _spawn_task(self, coro: Coroutine[object, object, object]) -> asyncio.Task[object]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _write_state(self) -> None:
        gen = self.current
        write_gateway_json(self._state_dir, listen=sock_address(gen.listen_socket),
                           admin=sock_address(self._admin_sock), workers=gen.size,
                           generation=gen.number)

    # ---- signals ----------------------------------------------------------------------------

    def _on_sigchld(self, signum: int, frame: object) -> None:
        self.loop.call_soon_threadsafe(self._enqueue_signal, signum)

    def _enqueue_signal(self, sig: int) -> None:
        # NO LOGGING, just queue the signal. A full queue drops it: the queue already holds
        # signals to act on, and the housekeeping tick reaps children regardless.
        try:
            self._signals.put_nowait(sig)
        except asyncio.QueueFull:
            pass

    async def _dispatch_signals(self) -> None:
        while True:
            sig = await self._signals.get()
            name = signal.Signals(sig).name[3:].lower()
            handler: Callable[[], None] = getattr(self, f"handle_{name}")
            try:
                handler()
            except Exception:
                log.exception("handling SIG%s failed", name.upper())

    def handle_chld(self) -> None:
        """A child exited: reap it and respawn what is missing."""
        self.reap_workers()
        self.manage_workers()

    def handle_hup(self) -> None:
        """Reload the config and replace the workers."""
        log.info("SIGHUP: reloading %s", self.config_path)
        self._spawn_task(self.reload())

    def handle_term(self) -> None:
        """Graceful stop: drain the workers."""
        self._begin_stop(graceful=True)

    def handle_int(self) -> None:
        """Graceful stop, like SIGTERM (Ctrl-C also reaches the workers, which drain)."""
        self._begin_stop(graceful=True)

    def handle_quit(self) -> None:
        """Fast stop: workers exit at once."""
        self._begin_stop(graceful=False)

    def _begin_stop(self, graceful: bool) -> None:
        if self._stop_task is None:
            self._stop_task = self._spawn_task(self.stop(graceful))
        elif not graceful:
            # A SIGQUIT during a graceful stop cuts the drain short.
            deadline = time.monotonic() + KILL_GRACE
            for w in list(self.workers.values()):
                self._stop_worker(w, signal.SIGQUIT, deadline)

    # ---- workers ----------------------------------------------------------------------------

    def _new_generation(
        self, config: Config, sock: socket.socket, slots: tuple[int, ...], size: int,
        tls: ListenerTls | None = None,
    ) -> Generation:
        self._generations += 1
        return Generation(self._generations, config, sock, slots, size, tls)

    def spawn_workers(self, gen: Generation) -> None:
        """Fork every worker of ``gen`` that is not running."""
        running = {w.worker_id for w in self.workers.values()
                   if w.generation is gen and w.kill_at is None}
        for worker_id in range(gen.size):
            if worker_id not in running:
                self.spawn_worker(gen, worker_id)

    def spawn_worker(self, gen: Generation, worker_id: int) -> WorkerProcess:
        """Fork one worker of ``gen``; the child runs ``run_worker`` and never returns here."""
        ready_r, ready_w = os.pipe()
        spec = WorkerSpec(
            worker_id=worker_id,
            config=gen.config,
            listen_socket=gen.listen_socket,
            ssl_context=gen.tls.context if gen.tls is not None else None,
            metrics=self.metrics,
            route_slots=gen.route_slots,
            ready_fd=ready_w,
        )
        # Computed before fork so the child does as little as possible before run_worker.
        master_fds = self._master_only_fds(gen.listen_socket) + [ready_r]
        try:
            pid = fork_worker(spec, master_fds, HANDLED_SIGNALS)
        except OSError:  # EAGAIN/ENOMEM: no child, so no pipe either
            os.close(ready_r)
            os.close(ready_w)
            raise
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        w = WorkerProcess(pid, worker_id, gen, ready_r)
        self.workers[pid] = w
        self.loop.add_reader(ready_r, self._on_ready_pipe, w)
        log.info("worker %s booting (pid %s, generation %s)", worker_id, pid, gen.number)
        return w

    def _master_only_fds(self, keep: socket.socket) -> list[int]:
        fds = [self._lock_fd]
        fds += [s.fileno() for s in self._listen_sockets if s is not keep]
        fds += self.admin.master_only_fds() if self.admin else []
        for service in self.services:
            only = getattr(service, "master_only_fds", None)
            fds += only() if only is not None else []
        fds += [w.ready_fd for w in self.workers.values()]
        return [fd for fd in fds if fd >= 0]

    def _on_ready_pipe(self, w: WorkerProcess) -> None:
        try:
            data = os.read(w.ready_fd, 64)
        except BlockingIOError:
            return
        if b"1" in data and not w.ready:
            w.ready = True
            self._boot_failures = 0
            log.info("worker %s ready (pid %s)", w.worker_id, w.pid)
            self._changed.set()
        if not data:  # EOF: the worker closed it (ready or dead)
            self._close_ready_pipe(w)

    def _close_ready_pipe(self, w: WorkerProcess) -> None:
        if w.ready_fd >= 0:
            self.loop.remove_reader(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = -1

    def _stop_worker(self, w: WorkerProcess, sig: int, deadline: float) -> None:
        _kill(w.pid, sig)
        w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)

    def reap_workers(self) -> None:
        """Collect exited workers (our own pids only: never another child of this process)."""
        for pid, w in list(self.workers.items()):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, 0
            if wpid == 0:
                continue
            del self.workers[pid]
            self._on_worker_exit(w, os.waitstatus_to_exitcode(status))

    def _on_worker_exit(self, w: WorkerProcess, code: int) -> None:
        self._close_ready_pipe(w)
        self._changed.set()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        gen = w.generation
        if w.kill_at is not None:
            log.info("worker %s (pid %s, generation %s) stopped: %s",
                     w.worker_id, w.pid, gen.number, how)
            return
        if gen is self._pending:
            gen.failure = f"worker {w.worker_id} (pid {w.pid}) exited during boot: {how}"
            log.error("new worker %s (pid %s) exited during reload: %s", w.worker_id, w.pid, how)
            return
        log.warning("worker %s (pid %s, generation %s) died: %s",
                    w.worker_id, w.pid, gen.number, how)
        if gen is not self.current or self._stopping:
            return
        self.restarts += 1
        now = time.monotonic()
        if now - w.started_at > STABLE_LIFETIME:
            self._failures = 0
        self._failures += 1
        self._next_spawn_at = now + respawn_delay(self._failures)
        if code == EXIT_BOOT_ERROR and not w.ready:
            self._boot_failures += 1
            if self._boot_failures >= MAX_BOOT_FAILURES:
                log.error(
                    "workers failed to boot %s times in a row (last: worker %s, %s); "
                    "giving up instead of respawning forever - check the log above for why",
                    self._boot_failures, w.worker_id, how,
                )
                self._exit_code = EXIT_WORKER_BOOT_FAILED
                self._begin_stop(graceful=True)

    def murder_workers(self) -> None:
        """SIGKILL workers that were asked to stop and did not exit in time."""
        now = time.monotonic()
        for w in self.workers.values():
            if w.kill_at is not None and now >= w.kill_at and not w.killed:
                log.warning("worker %s (pid %s) did not exit in time: SIGKILL", w.worker_id, w.pid)
                w.killed = True
                _kill(w.pid, signal.SIGKILL)

    def manage_workers(self) -> None:
        """Keep the current generation at its size, respecting the respawn backoff."""
        if self._stopping or self.current is None:
            return
        alive = sum(1 for w in self.workers.values()
                    if w.generation is self.current and w.kill_at is None)
        if alive >= self.current.size:
            return
        delay = self._next_spawn_at - time.monotonic()
        if delay <= 0:
            try:
                self.spawn_workers(self.current)
                return
            except OSError as exc:
                self._failures += 1
                delay = respawn_delay(self._failures)
                self._next_spawn_at = time.monotonic() + delay
                log.error("cannot fork a worker: %s (retrying in %.1fs)", exc, delay)
        if self._respawn_timer is None:
            self._respawn_timer = self.loop.call_later(delay, self._respawn_due)

    def _respawn_due(self) -> None:
        self._respawn_timer = None
        self.manage_workers()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.reap_workers()
            self.murder_workers()
            self.manage_workers()

    async def _wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Wait (reaping and murdering meanwhile) until ``condition()`` or the deadline."""
        while True:
            self._changed.clear()
            self.reap_workers()
            self.murder_workers()
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, TICK))
            except TimeoutError:
                pass

    # ---- reload -----------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-read the config and replace the workers (SIGHUP, POST /admin/reload).

        One reload at a time; a second request waits and then reloads again, so the file as
        it is after the last request is the one that ends up serving.
        """
        async with self._reload_lock:
            return await self._reload()

    def _result(self, gen: Generation, error: str | None = None,
                cause: BaseException | None = None) -> ReloadResult:
        return ReloadResult(error is None, gen.number, gen.size, len(gen.config.routes), error,
                            cause)

    async def _reload(self) -> ReloadResult:
        old = self.current
        if self._stopping:
            return self._result(old, "the gateway is stopping")
        if self.config_path is None:
            return self._result(old, "no config file to reload")
        try:
            config = load_config(self.config_path)
            size = worker_count(config, self.workers_override)
            tls = build_listener_tls(config)  # certificates re-read: renewed files go live
            for service in self.services:
                await service.reload(config)
            slots = self.route_slots.assign([r.route for r in config.routes])
        except (ConfigError, OSError) as exc:
            log.error("reload rejected, the running config stays in force: %s", exc)
            return self._result(old, str(exc), exc)
        # Both are bound or locked once per master; changing them live would strand files or
        # drop the operator's admin connection mid-reload.
        if config.state_dir != old.config.state_dir:
            log.warning("state_dir changed: it takes effect on the next restart")
        if config.admin.listen != old.config.admin.listen:
            log.warning("admin.listen changed: it takes effect on the next restart")
        sock = old.listen_socket
        address = listen_address(config)
        if address != listen_address(old.config):
            try:
                sock = bind_listen(address)
            except (ConfigError, OSError) as exc:
                self.route_slots.retire_others([r.route for r in old.config.routes])
                log.error("reload rejected: %s", exc)  # the message names the address
                return self._result(old, str(exc))
            self._listen_sockets.append(sock)
        gen = self._new_generation(config, sock, slots, size, tls)
        self._pending = gen
        try:
            self.spawn_workers(gen)
            ready = await self._wait_until(
                lambda: gen.failure is not None or self._stopping or self._ready_count(gen) >= size,
                time.monotonic() + READY_TIMEOUT,
            )
        except OSError as exc:
            gen.failure, ready = f"cannot fork a worker: {exc}", False
        finally:
            self._pending = None
        if not ready or gen.failure or self._stopping:
            why = gen.failure or ("the gateway is stopping" if self._stopping else
                                  f"new workers not ready within {READY_TIMEOUT:.0f}s")
            log.error("reload failed, generation %s keeps serving: %s", old.number, why)
            self._retire_generation(gen)
            self.route_slots.retire_others([r.route for r in old.config.routes])
            return self._result(old, why)
        self.current, self.config = gen, config
        self._failures = 0
        self.route_slots.retire_others([r.route for r in config.routes])
        for w in list(self.workers.values()):
            if w.generation is not gen:
                self._retire_worker(w)
        if sock is not old.listen_socket:
            self._forget_socket(old.listen_socket)
        self._update_admin_token(config)
        self._write_state()
        n = len(config.routes)
        log.info("reloaded: generation %s, %s, %s route%s",
                 gen.number, _workers(size), n, "" if n == 1 else "s")
        log_expiry(tls)
        return self._result(gen)

    def _retire_worker(self, w: WorkerProcess) -> None:
        # SIGTERM: the worker stops accepting, drains within its own config's drain_timeout.
        if w.kill_at is None:
            deadline = time.monotonic() + w.generation.config.limits.drain_timeout + KILL_GRACE
            self._stop_worker(w, signal.SIGTERM, deadline)

    def _retire_generation(self, gen: Generation) -> None:
        for w in list(self.workers.values()):
            if w.generation is gen:
                self._retire_worker(w)
        if self.current is None or gen.listen_socket is not self.current.listen_socket:
            self._forget_socket(gen.listen_socket)

    def _forget_socket(self, sock: socket.socket) -> None:
        # Only the master's copy: workers that still hold it keep it open until they exit.
        if sock in self._listen_sockets:
            self._listen_sockets.remove(sock)
        sock.close()

    def _update_admin_token(self, config: Config) -> None:
        try:
            token, _ = resolve_admin_token(config.admin.token, self._state_dir)
        except OSError as exc:
            log.error("admin token unchanged: %s", exc)
            return
        self.admin.set_token(token)

    # ---- stop -------------------------------------------------------------------------------

    async def stop(self, graceful: bool = True) -> None:
        """Stop every worker and finish: SIGTERM and wait up to drain_timeout (+1 s) when
        graceful, SIGQUIT and wait 1 s otherwise; SIGKILL whoever is left."""
        self._stopping = True
        if self._exit_code is None:
            self._exit_code = EXIT_OK
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        budget = (self.config.limits.drain_timeout + KILL_GRACE) if graceful else KILL_GRACE
        deadline = time.monotonic() + budget
        log.info("%s stop: %s, up to %.1fs",
                 "graceful" if graceful else "fast", _workers(len(self.workers)), budget)
        # The master's copies go first, so the kernel stops queueing connections on a socket
        # once the last worker stops accepting.
        for sock in self._listen_sockets:
            sock.close()
        self._listen_sockets.clear()
        for w in list(self.workers.values()):
            self._stop_worker(w, sig, deadline)
        # Murder happens at each worker's kill_at; the extra second is for reaping the killed.
        await self._wait_until(lambda: not self.workers, deadline + KILL_GRACE)
        for w in self.workers.values():  # not even reaped after SIGKILL: should not happen
            log.error("worker %s (pid %s) still running at exit", w.worker_id, w.pid)
        log.info("master %s exiting (%s)", os.getpid(), self._exit_code)
        if not self._done.done():
            self._done.set_result(self._exit_code)

    # ---- AdminBackend ----------------------------------------------------------------------

    def _ready_count(self, gen: Generation) -> int:
        return sum(1 for w in self.workers.values()
                   if w.generation is gen and w.ready and w.kill_at is None)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when every worker of the current generation is ready (and not stopping)."""
        gen = self.current
        if gen is None:
            return False, {"workers": 0, "ready": 0}
        n = self._ready_count(gen)
        ready = not self._stopping and n >= gen.size
        return ready, {"generation": gen.number, "workers": gen.size, "ready": n}

    def metrics_text(self) -> str:
        """Request metrics from shared memory plus the master's worker gauges."""
        ready = self._ready_count(self.current) if self.current else 0
        return self.metrics.render(self.route_slots.labels(), [
            ProcessMetric("fluxgate_workers", "gauge",
                          "Worker processes alive, old ones still draining included.",
                          len(self.workers)),
            ProcessMetric("fluxgate_workers_ready", "gauge",
                          "Ready workers of the current generation.", ready),
            ProcessMetric("fluxgate_worker_restarts_total", "counter",
                          "Workers respawned after dying unexpectedly.", self.restarts),
            *(m for service in self.services for m in service.metrics()),
            *(expiry_metrics(listen_address(self.current.config), self.current.tls)
              if self.current else ()),
        ])
