"""Starts the ranks of a multi-process PyTorch reference script (torch_ddp.py, torch_pipeline.py)
on loopback, without importing torch in the launching process.

launch(script, argv, world, threads) re-executes `script argv --rank R` once per rank with
OMP/OPENBLAS/MKL_NUM_THREADS = threads, MASTER_ADDR=127.0.0.1, a free MASTER_PORT, RANK and
WORLD_SIZE in the environment (so the thread counts hold before the child imports torch).
Rank 0 writes to our stdout; the other ranks' stdout goes to stderr, so the last stdout line
is rank 0's. When a rank fails, the others are killed and the launcher exits non-zero; the
children also die with the launcher (PR_SET_PDEATHSIG)."""
import os, signal, socket, subprocess, sys, time

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass

def check_thread_env(threads, name):
    """In a child: fail clearly if the thread environment is not what the launcher set."""
    for k in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        if os.environ.get(k) != str(threads):
            sys.exit(f"{name}: {k}={os.environ.get(k)} but --threads {threads}: start the script without --rank")

def launch(script, argv, world, threads, name, timeout=0):
    env = dict(os.environ)
    for k in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        env[k] = str(threads)
    env.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), WORLD_SIZE=str(world))
    env.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    procs = []
    def stop(*_):
        raise SystemExit(f"{name}: interrupted")
    signal.signal(signal.SIGTERM, stop)
    sys.stdout.flush()
    try:
        for r in range(world):
            procs.append(subprocess.Popen([sys.executable, script, *argv, '--rank', str(r)], env=dict(env, RANK=str(r)),
                                          stdout=None if r == 0 else sys.stderr, preexec_fn=_die_with_parent))
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r, c = failed[0]
                sys.exit(f"{name}: rank {r} failed (exit status {c}); stopping the other ranks")
            if all(c == 0 for c in codes):
                return
            if deadline and time.monotonic() > deadline:
                sys.exit(f"{name}: timed out after {timeout} s; stopping the ranks")
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
