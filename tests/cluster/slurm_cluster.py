"""A real one-node SLURM cluster with accounting, from Debian's packages, in a temp directory:
munged (its own key and socket), MariaDB (its own data directory, socket and port), slurmdbd,
slurmctld and slurmd (their own ports, spool and state), this host the node. Every command the
tests run finds it through SLURM_CONF in `Cluster.env`; tests/cluster/setup.sh installs the
packages. The node declares two GPUs (GRES) backed by stand-in device files: SLURM schedules
and grants them, and sets CUDA_VISIBLE_DEVICES, but tritonserver runs on the CPU."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from virnucpro_triton.processes import free_port

SBIN = "/usr/sbin"
NAME = "virnucprotest"
GPUS = 2
KILL_WAIT = 10  # seconds from scancel's SIGTERM to SIGKILL
# Where a command finds the configuration of the cluster its node belongs to when SLURM_CONF is
# unset (configless SLURM's place): the executor plugin's job step runs `srun` with every SLURM_*
# variable removed, SLURM_CONF too.
CONFIGLESS = Path("/run/slurm/conf")


class ClusterError(AssertionError):
    """A daemon that did not come up; the message names it and its log."""


def poll(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)
    return value


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return kib // 1024 * 8 // 10  # slurmd drains a node that has less than it declares


class Cluster:
    def __init__(self) -> None:
        # munged wants its socket's directory searchable by all; pytest's tmp dirs are not.
        self.root = Path(tempfile.mkdtemp(prefix="virnucpro-slurm-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.conf = self.etc / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.conf),
            "PATH": f"{os.environ['PATH']}:{SBIN}",
        }
        self.daemons: dict[str, subprocess.Popen] = {}
        self._linked = False

    # --- the daemons -----------------------------------------------------------------------

    def _start(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "wb")
        with log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )  # fmt: skip
        self.daemons[name] = process
        return process

    def _alive(self, name: str) -> bool:
        if self.daemons[name].poll() is not None:
            log = (self.root / "log" / f"{name}.out").read_text(errors="replace")
            raise ClusterError(f"{name} exited: {log[-2000:]}")
        return True

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120)
        if check and result.returncode:
            raise ClusterError(f"{' '.join(command)}: {result.stderr.strip()}")
        return result

    def start(self) -> Cluster:
        for folder in ("etc", "log", "state", "spool", "munge-key", "munge", "db"):
            (self.root / folder).mkdir()
        (self.root / "munge-key").chmod(0o700)
        if CONFIGLESS.exists() or CONFIGLESS.is_symlink():
            raise ClusterError(f"{CONFIGLESS} exists: another slurmd runs on this machine")
        self._munge()
        self._mariadb()
        self._write_configs()
        self._start("slurmdbd", f"{SBIN}/slurmdbd", "-D")
        poll(lambda: self._alive("slurmdbd") and self._answers(self.dbd_port), 60, "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", NAME)
        self._start("slurmctld", f"{SBIN}/slurmctld", "-D", "-i")
        poll(lambda: self._alive("slurmctld") and self._answers(self.ctld_port), 60, "slurmctld")
        self._start("slurmd", f"{SBIN}/slurmd", "-D")
        poll(lambda: self._alive("slurmd") and self.node_state() == "idle", 60, "an idle node")
        CONFIGLESS.parent.mkdir(parents=True, exist_ok=True)
        CONFIGLESS.symlink_to(self.etc)
        self._linked = True
        return self

    @staticmethod
    def _answers(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _munge(self) -> None:
        self.munge_socket = self.root / "munge" / "munge.socket"
        key = self.root / "munge-key" / "munge.key"
        subprocess.run([f"{SBIN}/mungekey", "--create", f"--keyfile={key}"], check=True)
        self._start(
            "munged", f"{SBIN}/munged", "--foreground", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--pid-file={self.root / 'munge-key' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge-key' / 'munged.seed'}",
        )  # fmt: skip
        poll(lambda: self._alive("munged") and self.munge_socket.exists(), 30, "munged")

    def _mariadb(self) -> None:
        self.db_port = free_port()
        data, db_socket = self.root / "db" / "data", self.root / "db" / "mysql.sock"
        self.run(
            f"{shutil.which('mariadb-install-db', path=self.env['PATH'])}", "--no-defaults",
            f"--datadir={data}", "--user=root", "--auth-root-authentication-method=socket",
            "--skip-test-db",
        )  # fmt: skip
        self._start(
            "mariadbd", f"{SBIN}/mariadbd", "--no-defaults", f"--datadir={data}",
            f"--socket={db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
            "--user=root", f"--pid-file={self.root / 'db' / 'mariadbd.pid'}", "--skip-log-bin",
        )  # fmt: skip
        poll(lambda: self._alive("mariadbd") and self._answers(self.db_port), 60, "mariadbd")
        self.db_password = secrets.token_hex(16)
        self.run(
            "mariadb", "--no-defaults", f"--socket={db_socket}", "-u", "root", "-e",
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';",
        )  # fmt: skip

    def _write_configs(self) -> None:
        self.ctld_port, slurmd_port, self.dbd_port = free_port(), free_port(), free_port()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        log = self.root / "log"
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(
            f"{auth}DbdHost=localhost\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={self.db_port}\nStorageUser=slurm\nStoragePass={self.db_password}\n"
            f"StorageLoc=slurm_acct_db\nPidFile={log}/slurmdbd.pid\nLogFile={log}/slurmdbd.log\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a readable one: it holds the database's password
        devices = []
        for i in range(GPUS):  # stand-ins for /dev/nvidia0..: character devices, as gres wants
            device = self.root / f"gpu{i}"
            os.mknod(device, 0o600 | 0o020000, os.makedev(1, 3))  # S_IFCHR, /dev/null's numbers
            devices.append(str(device))
        (self.etc / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"Name=gpu File={d}\n" for d in devices)
        )
        self.conf.write_text(
            f"ClusterName={NAME}\nSlurmctldHost={self.node}\nSlurmctldPort={self.ctld_port}\n"
            f"SlurmdPort={slurmd_port}\nSlurmUser=root\nSlurmdUser=root\n{auth}"
            "CredType=cred/munge\n"
            f"StateSaveLocation={self.root / 'state'}\nSlurmdSpoolDir={self.root / 'spool'}\n"
            f"SlurmctldPidFile={log}/slurmctld.pid\nSlurmdPidFile={log}/slurmd.pid\n"
            f"SlurmctldLogFile={log}/slurmctld.log\nSlurmdLogFile={log}/slurmd.log\n"
            # Job processes are the descendants of slurmstepd: a cgroup hierarchy need not exist.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=5\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={self.dbd_port}\nAccountingStorageTRES=gres/gpu\n"
            # For slurmdbd connections this names the munge socket.
            f"AccountingStoragePass={self.munge_socket}\n"
            f"KillWait={KILL_WAIT}\nReturnToService=2\nMpiDefault=none\nGresTypes=gpu\n"
            "SchedulerType=sched/backfill\n"
            f"NodeName={self.node} CPUs={os.cpu_count()} RealMemory={_memory_mb()} "
            f"Gres=gpu:{GPUS} State=UNKNOWN\n"
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        )

    def stop(self) -> None:
        """Cancel every job, wait until none is left, then stop the daemons (slurmd first)."""
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
                self.run("scancel", "--user=root")
                poll(lambda: not self.run("squeue", "-h").stdout.strip(), 120, "no jobs")
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            process = self.daemons.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._linked:
            CONFIGLESS.unlink()
            with contextlib.suppress(OSError):  # made by us, unless a package made it first
                CONFIGLESS.parent.rmdir()

    def processes(self) -> set[int]:
        """Processes of this cluster: its daemons, and whatever runs with its SLURM_CONF (job
        steps, jobs, their servers) or under its directory."""
        marks = (f"SLURM_CONF={self.conf}\0".encode(), str(self.root).encode())
        found = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                environ = (proc / "environ").read_bytes()
                cmdline = (proc / "cmdline").read_bytes()
                if marks[0] in environ or marks[1] in cmdline:
                    if "zombie" not in (proc / "status").read_text():
                        found.add(int(proc.name))
        return found

    # --- what the tests ask ----------------------------------------------------------------

    def node_state(self) -> str:
        result = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False)
        return result.stdout.strip()

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            ["sbatch", "--parsable", *args],
            capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=120,
        )  # fmt: skip
        if result.returncode:
            raise ClusterError(f"sbatch {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def queued(self, job: str) -> bool:
        """Whether the job is still pending, running or completing."""
        return bool(self.run("squeue", "-h", "-j", job, check=False).stdout.strip())

    def accounted(self, job: str, fields: str = "State") -> str:
        """sacct's record of the job allocation (e.g. "COMPLETED", "CANCELLED by 0")."""
        result = self.run("sacct", "-n", "-X", "-P", "-j", job, "-o", fields)
        return result.stdout.strip()

    def running(self, comment: str = "") -> list[str]:
        """Ids of the running jobs whose comment contains `comment`."""
        result = self.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k")
        return [j for j, _, c in (x.partition("|") for x in result.stdout.split()) if comment in c]

    def scancel(self, job: str) -> None:
        self.run("scancel", job)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
