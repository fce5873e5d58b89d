"""amdsmi's first contact, isolated: import, version check and init in a throwaway process.

``amdsmi_init`` has no timeout and blocks for good on a wedged GPU; a Python thread stuck in
it cannot be killed, and a second init in the same process would wait behind it. So before
the daemon loads amdsmi itself, a child process (``python -m gpuprobe.probes.amd.preflight``)
imports it, compares versions, inits, counts the GPUs and shuts down, and prints one JSON
line. The daemon waits ``amd.init_timeout`` for it; a child that does not answer is killed
and abandoned (never waited on without a timeout, as one stuck in the kernel cannot die), and
the backend retries with backoff. Only after a clean preflight does the daemon init in
process. The child also keeps the import's stdout noise and any crash of a mismatched
binding away from the daemon.

Under simulation the library is an in-process face, so the same steps run on a thread that
is abandoned the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TypedDict

from gpuprobe.daemon.core.childenv import child_environment
from gpuprobe.probes.amd.library import Unavailable, import_amdsmi, versions


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str | None = None
    absent: bool = False  # no AMD software on this host: normal, not a fault
    devices: int = 0
    binding: str | None = None
    rocm: str | None = None
    library: str | None = None


class _VersionFields(TypedDict):
    """The version fields of an Outcome, passed as keywords."""

    binding: str | None
    rocm: str | None
    library: str | None


def check(lib: Any) -> Outcome:
    """Versions, init, enumeration and shutdown on ``lib`` (the module or the face)."""
    v = versions(lib)
    fields: _VersionFields = {"binding": v.binding, "rocm": v.rocm, "library": v.library}
    try:
        lib.amdsmi_init(lib.AmdSmiInitFlags.INIT_AMD_GPUS)
    except Exception as e:
        return Outcome(False, f"amdsmi_init failed: {describe(e)}", **fields)
    try:
        count = len(lib.amdsmi_get_processor_handles())
    except Exception as e:
        return Outcome(False, f"amdsmi_get_processor_handles failed: {describe(e)}", **fields)
    finally:
        try:
            lib.amdsmi_shut_down()
        except Exception:
            pass
    return Outcome(True, devices=count, **fields)


def describe(e: BaseException) -> str:
    info = getattr(e, "get_error_info", None)
    if callable(info):
        try:
            return str(info(detailed=False))
        except Exception:
            pass
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _child_main() -> int:
    try:
        outcome = check(import_amdsmi())
    except Unavailable as e:
        outcome = Outcome(False, e.reason, absent=e.absent)
    # The library may print too; the daemon reads the last line.
    sys.stdout.write("\n" + json.dumps(outcome.__dict__) + "\n")
    sys.stdout.flush()
    return 0


class Preflight:
    """One preflight under way; ``result()`` is None until it finishes or times out."""

    def __init__(self, timeout: float, lib: Any = None) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        target = self._run_child if lib is None else self._run_face
        self._thread = threading.Thread(target=target, args=(lib,), name="amdsmi-preflight",
                                        daemon=True)
        self._thread.start()

    def result(self, wait: float = 0.0) -> Outcome | None:
        if self._done.wait(max(0.0, wait)):
            return self._outcome
        if time.monotonic() - self.started > self.timeout + 1.0:  # the face's thread hangs
            return Outcome(False, self._timeout_reason())
        return None

    def _timeout_reason(self) -> str:
        return (f"amdsmi_init did not return within {self.timeout:g}s (a wedged GPU or "
                f"driver?); abandoned, retrying with backoff")

    def _finish(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self._done.set()

    def _run_face(self, lib: Any) -> None:
        try:
            self._finish(check(lib))
        except Exception as e:  # anything else from the face is a failed preflight
            self._finish(Outcome(False, f"amdsmi preflight failed: {describe(e)}"))

    def _run_child(self, _: Any) -> None:
        env = child_environment(os.environ)  # the same interpreter, so the same gpuprobe
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "gpuprobe.probes.amd.preflight"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, start_new_session=True)
        except OSError as e:
            self._finish(Outcome(False, f"cannot start the amdsmi preflight: {e}"))
            return
        try:
            out, err = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            try:  # one stuck in the kernel (D state) cannot die: do not wait for it forever
                child.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:
                _ABANDONED.append(child)
            self._finish(Outcome(False, self._timeout_reason()))
            return
        self._finish(_parse(out, err, child.returncode))


# Children killed but not yet reaped; polled (reaped) at each new preflight.
_ABANDONED: list[subprocess.Popen] = []


def reap() -> int:
    """Reap abandoned children that have died since; returns how many are still stuck."""
    _ABANDONED[:] = [c for c in _ABANDONED if c.poll() is None]
    return len(_ABANDONED)


def _parse(out: bytes, err: bytes, returncode: int) -> Outcome:
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
                return Outcome(**{k: data.get(k) for k in Outcome.__dataclass_fields__
                                  if k in data})
            except (ValueError, TypeError):
                break
    last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    how = f"signal {-returncode}" if returncode < 0 else f"status {returncode}"
    return Outcome(False, f"the amdsmi preflight died ({how}): {last[:200]}")


if __name__ == "__main__":
    sys.exit(_child_main())
