"""`moelab`, recording what the command imported and where its time went: one JSON line appended to
$MOELAB_SHIM_LOG per command (tests/labrepo.py install_shim puts it first on PATH). The real
moelab.cli.main runs unchanged; the import machinery is timed, and so are the functions that train
and evaluate one run (every command that trains or evaluates calls them), less the imports they
trigger."""

import importlib._bootstrap as bootstrap
import json
import os
import sys
import time

shim_start, startup_cpu = time.clock_gettime(time.CLOCK_BOOTTIME), time.process_time()
with open("/proc/self/stat") as f:  # field 22: the process's start, in clock ticks after boot
    process_start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
find_and_load = bootstrap._find_and_load
nesting, import_s, import_cpu = 0, 0.0, 0.0
PHASES = {"moelab.train.loop": "train", "moelab.evaluate": "evaluate"}  # module: the function that is the phase
phases = {}  # phase: [wall s, CPU s], imports excluded


def timed_find_and_load(name, import_):
    """Time (wall and CPU) spent importing, counted once for an import that triggers others."""
    global nesting, import_s, import_cpu
    nesting += 1
    start, cpu = time.perf_counter(), time.process_time()
    try:
        module = find_and_load(name, import_)
    finally:
        nesting -= 1
        if not nesting:
            import_s += time.perf_counter() - start
            import_cpu += time.process_time() - cpu
    work = getattr(module, PHASES.get(name, ""), None)
    if work is not None and not hasattr(work, "phase"):  # once: importlib may load a module's name again
        setattr(module, PHASES[name], timed_phase(work, PHASES[name]))
    return module


def timed_phase(work, phase):
    def timed_work(*args, **kwargs):
        start, cpu, imports = time.perf_counter(), time.process_time(), (import_s, import_cpu)
        try:
            return work(*args, **kwargs)
        finally:
            spent = phases.setdefault(phase, [0.0, 0.0])
            spent[0] += time.perf_counter() - start - (import_s - imports[0])
            spent[1] += time.process_time() - cpu - (import_cpu - imports[1])

    timed_work.phase = phase
    return timed_work


bootstrap._find_and_load = timed_find_and_load
from moelab.cli import main  # noqa: E402

if __name__ == "__main__":  # not again in the processes that run seeds side by side (spawn imports this)
    rc = main(sys.argv[1:])
    end = time.clock_gettime(time.CLOCK_BOOTTIME)
    record = {
        "argv": sys.argv[1:],
        "rc": rc,
        "moelab_modules": sorted(m for m in sys.modules if m == "moelab" or m.startswith("moelab.")),
        "packages": sorted({m.split(".")[0] for m in sys.modules}),
        "startup_s": shim_start - process_start,  # interpreter start-up (and the shell DVC runs the command in)
        "import_s": import_s,
        "run_s": end - shim_start - import_s,
        "total_s": end - process_start,
        "startup_cpu_s": startup_cpu,
        "import_cpu_s": import_cpu,
        "run_cpu_s": time.process_time() - startup_cpu - import_cpu,
        "phases": phases,
    }
    with open(os.environ["MOELAB_SHIM_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(rc)
