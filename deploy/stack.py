"""The local stack without Docker: real Kafka (KRaft) and PostgreSQL plus the six services.

    python deploy/stack.py setup      # jars, PostgreSQL binaries, initdb, Kafka storage format
    python deploy/stack.py infra-up   # Kafka + PostgreSQL only (what the tests need)
    python deploy/stack.py up         # infra + topics + the six services, each until ready
    python deploy/stack.py down       # stop everything; no process is left behind
    python deploy/stack.py status | logs | env

Processes run under supervisord (restarted when they crash); logs land in ``var/log/``. Every
wait is on a condition (a metadata request, ``pg_isready``, ``/readyz``), never on a fixed sleep.
Ports and paths can be moved with ``IMAGEGEN_STACK_*`` variables (see ``Stack``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# name -> (python module, HTTP port). The api's port is the public one; the api's job projector
# runs as a program of its own (ADR 0641), with the api's settings (IMAGEGEN_API_*).
SERVICES: dict[str, tuple[str, int]] = {
    "api": ("imagegen_api", 8000),
    "api-projector": ("imagegen_api.projector", 8106),
    "scheduler": ("imagegen_scheduler", 8101),
    "gpu-worker": ("imagegen_gpu_worker", 8102),
    "safety": ("imagegen_safety", 8103),
    "delivery": ("imagegen_delivery", 8104),
    "pool-manager": ("imagegen_pool_manager", 8105),
}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file readable by its owner only: created 0600 (never readable by
    others, not even for a moment) and moved over ``path`` atomically, so a file left 0644 by
    an older version is replaced by a 0600 one. The folder must exist."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> None:
    """A folder only its owner can list or enter (0700), also when it already existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


@dataclass
class Stack:
    var: Path = field(
        default_factory=lambda: Path(os.environ.get("IMAGEGEN_STACK_VAR", ROOT / "var"))
    )
    kafka_port: int = field(default_factory=lambda: _env_int("IMAGEGEN_STACK_KAFKA_PORT", 29092))
    controller_port: int = field(
        default_factory=lambda: _env_int("IMAGEGEN_STACK_CONTROLLER_PORT", 29093)
    )
    pg_port: int = field(default_factory=lambda: _env_int("IMAGEGEN_STACK_PG_PORT", 25432))
    jars: Path = ROOT / "deploy" / ".cache" / "kafka" / "libs"
    # S3Proxy, the S3-compatible server (docs/adr/0410); data under var/s3. Unset: Kafka's port
    # + 308 (29400 beside 29092), so a second stack with its own Kafka port gets its own S3 port.
    s3_port: int = field(default_factory=lambda: _env_int("IMAGEGEN_STACK_S3_PORT", 0))
    s3_jars: Path = ROOT / "deploy" / ".cache" / "s3proxy" / "libs"
    # Added to every service's HTTP port (8000, 8101..8105) so two stacks can run side by side.
    port_offset: int = field(default_factory=lambda: _env_int("IMAGEGEN_STACK_PORT_OFFSET", 0))
    models: Path = field(
        default_factory=lambda: Path(os.environ.get("IMAGEGEN_STACK_MODELS", ROOT / "models"))
    )
    # IMAGEGEN_STACK_WORKERS=N: N gpu-worker processes (a local fleet; see `workers()`).
    workers: int = field(default_factory=lambda: _env_int("IMAGEGEN_STACK_WORKERS", 1))
    # IMAGEGEN_STACK_WORKER_BUDGETS_MB="512,256": each worker's memory budget in MiB, cycled
    # over the workers, to stand for GPU classes; unset: no budget on CPU.
    worker_budgets_mb: tuple[int, ...] = field(
        default_factory=lambda: tuple(
            int(v) for v in os.environ.get("IMAGEGEN_STACK_WORKER_BUDGETS_MB", "").split(",") if v
        )
    )

    def __post_init__(self) -> None:
        if not self.s3_port:
            self.s3_port = self.kafka_port + 308
        if not 1 <= self.workers <= 16:
            raise SystemExit(f"IMAGEGEN_STACK_WORKERS must be 1..16, got {self.workers}")
        if any(b <= 0 for b in self.worker_budgets_mb):
            budgets = ",".join(map(str, self.worker_budgets_mb))
            raise SystemExit(
                f"IMAGEGEN_STACK_WORKER_BUDGETS_MB must be positive MiB, got {budgets}"
            )

    def programs(self) -> list[str]:
        """The supervised service programs: the six services and the api's projector, the
        gpu-worker once per worker (after the scheduler)."""
        names = [n for n in SERVICES if n != "gpu-worker"]
        workers = ["gpu-worker"] + [f"gpu-worker-{i}" for i in range(2, self.workers + 1)]
        at = names.index("scheduler") + 1
        return names[:at] + workers + names[at:]

    @staticmethod
    def worker_index(program: str) -> int:
        """1 for ``gpu-worker``, i for ``gpu-worker-i``."""
        return 1 if program == "gpu-worker" else int(program.rsplit("-", 1)[1])

    # ---- paths -------------------------------------------------------------------------------
    @property
    def run(self) -> Path:
        return self.var / "run"

    @property
    def logs(self) -> Path:
        return self.var / "log"

    @property
    def kafka_dir(self) -> Path:
        return self.var / "kafka"

    @property
    def pg_root(self) -> Path:
        return self.var / "pg"

    @property
    def s3_dir(self) -> Path:
        return self.var / "s3"

    def s3_env(self) -> dict[str, str]:
        """IMAGEGEN_S3_*: how services and tests reach the stack's S3 server (its bucket)."""
        return {
            "IMAGEGEN_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "IMAGEGEN_S3_BUCKET": "imagegen",
            "IMAGEGEN_S3_REGION": "us-east-1",
            "IMAGEGEN_S3_ACCESS_KEY": "imagegen-" + self.secret("s3_access_key", 6),
            "IMAGEGEN_S3_SECRET_KEY": self.secret("s3_secret_key", 30),
        }

    def port(self, service: str) -> int:
        """A program's HTTP port: the service's, and 8110 + i for gpu-worker-i (i >= 2)."""
        if service.startswith("gpu-worker-"):
            return 8110 + self.worker_index(service) + self.port_offset
        return SERVICES[service][1] + self.port_offset

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def secret(self, name: str, nbytes: int = 24) -> str:
        """A generated secret kept in var/secrets (0600), the same on every run."""
        path = self.var / "secrets" / name
        private_dir(path.parent)
        if not path.exists():
            write_private(path, secrets.token_urlsafe(nbytes))
        return path.read_text().strip()

    @property
    def database_url(self) -> str:
        pw = self.secret("pg_password")
        return f"postgresql+asyncpg://imagegen:{pw}@127.0.0.1:{self.pg_port}/imagegen"


def say(msg: str) -> None:
    print(msg, flush=True)


def sh(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=check, text=True, **kw)  # type: ignore[call-overload]


# ---- setup ---------------------------------------------------------------------------------------
def ensure_jars(dest: Path, pom: Path, jar_glob: str, what: str) -> None:
    """``dest`` holds the runtime jars ``pom`` resolves from Maven Central (once; a partial
    download is never mistaken for a complete one: it lands in ``libs.partial`` first)."""
    if dest.exists() and any(dest.glob(jar_glob)):
        return
    say(f"setup: resolving {what} jars from Maven Central ({pom.relative_to(ROOT)})")
    tmp = dest.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sh(
        "mvn",
        "-q",
        "-B",
        "-f",
        pom,
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    )
    tmp.rename(dest)


def ensure_kafka_jars(st: Stack) -> None:
    ensure_jars(st.jars, ROOT / "deploy" / "kafka" / "pom.xml", "kafka_2.13-*.jar", "Kafka")


def pg_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise FileNotFoundError("PostgreSQL server binaries not found")


def ensure_pg_binaries() -> Path:
    try:
        return pg_bin()
    except FileNotFoundError:
        pass
    if os.geteuid() != 0:
        raise SystemExit("PostgreSQL 15+ is missing: run `sudo apt-get install -y postgresql`")
    say("setup: installing PostgreSQL from Debian packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "postgresql", env=env)
    return pg_bin()


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_user_prefix() -> list[str]:
    # PostgreSQL refuses to run as root: as root, its processes run as the `postgres` user.
    return ["runuser", "-u", "postgres", "--"] if _as_root() else []


def ensure_pg_root(st: Stack) -> Path:
    """The folder holding the data directory and socket; ``var/pg`` unless the postgres user
    cannot reach the project (a checkout under /root): then a folder in /var/tmp, linked."""
    root = st.pg_root
    if root.is_symlink() or root.exists():
        return root.resolve()
    if _as_root():
        probe = sh(*_pg_user_prefix(), "test", "-x", st.var, check=False)
        if probe.returncode != 0:
            digest = hashlib.sha1(str(st.var.resolve()).encode()).hexdigest()[:10]
            target = Path(f"/var/tmp/imagegen-pg-{digest}")
            target.mkdir(parents=True, exist_ok=True)
            root.symlink_to(target)
            root = target
    root.mkdir(parents=True, exist_ok=True)
    (root / "sock").mkdir(exist_ok=True)
    if _as_root():
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
    return root.resolve()


def ensure_pg_cluster(st: Stack) -> None:
    bin_dir = ensure_pg_binaries()
    root = ensure_pg_root(st)
    data = root / "data"
    if (data / "PG_VERSION").exists():
        return
    say(f"setup: initdb {data}")
    sh(
        *_pg_user_prefix(),
        bin_dir / "initdb",
        "-D",
        data,
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-instructions",
        stdout=subprocess.DEVNULL,
        cwd=root,
    )


def write_kafka_config(st: Stack) -> Path:
    data = st.kafka_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = st.kafka_dir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{st.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{st.kafka_port},CONTROLLER://127.0.0.1:{st.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{st.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=3",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.check.interval.ms=60000",
                "",
            ]
        )
    )
    if not (data / "meta.properties").exists():
        cp = f"{st.jars}/*"
        cluster_id = (
            sh("java", "-cp", cp, "kafka.tools.StorageTool", "random-uuid", capture_output=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        say(f"setup: formatting Kafka storage {data} (cluster {cluster_id})")
        sh(
            "java",
            "-cp",
            cp,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            props,
            "--ignore-formatted",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return props


def ensure_s3_jars(st: Stack) -> None:
    ensure_jars(st.s3_jars, ROOT / "deploy" / "s3proxy" / "pom.xml", "s3proxy-*.jar", "S3Proxy")


def write_s3_config(st: Stack) -> Path:
    """var/s3/s3proxy.conf (0600: it holds the S3 credential); objects as files in var/s3/data."""
    data = st.s3_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = st.s3_env()
    conf = st.s3_dir / "s3proxy.conf"
    write_private(
        conf,
        "\n".join(
            [
                f"s3proxy.endpoint=http://127.0.0.1:{st.s3_port}",
                "s3proxy.authorization=aws-v2-or-v4",
                f"s3proxy.identity={env['IMAGEGEN_S3_ACCESS_KEY']}",
                f"s3proxy.credential={env['IMAGEGEN_S3_SECRET_KEY']}",
                "jclouds.provider=filesystem",
                f"jclouds.filesystem.basedir={data}",
                "",
            ]
        ),
    )
    return conf


def setup(st: Stack, reconfigure: bool | None = None) -> None:
    """Everything the stack needs on disk. ``reconfigure``: write the services' supervisor
    programs from this invocation's settings (``IMAGEGEN_STACK_WORKERS``, budgets, pool ...).
    None: only when no supervisord runs, so that `make infra-up` (which `make test` and `make
    bench` run first) leaves a running stack's fleet as `make up` made it, instead of dropping
    its extra workers and restarting the rest with other settings."""
    for d in (st.logs, st.kafka_dir):
        d.mkdir(parents=True, exist_ok=True)
    private_dir(st.run)  # supervisord.conf holds the database password and signing key
    ensure_kafka_jars(st)
    ensure_s3_jars(st)
    ensure_pg_cluster(st)
    write_kafka_config(st)
    write_s3_config(st)
    if reconfigure is None:
        reconfigure = no_stack_running(st)
    if reconfigure:
        write_supervisor_config(st)
    write_env_file(st)


# ---- supervision ---------------------------------------------------------------------------------
def service_env(st: Stack, program: str) -> dict[str, str]:
    """The environment contract of one service (the compose file passes the same variables)."""
    name = "gpu-worker" if program.startswith("gpu-worker") else program
    if name == "api-projector":  # the api's settings, its own port (ADR 0641)
        return {
            "IMAGEGEN_API_KAFKA_BOOTSTRAP": st.kafka_bootstrap,
            "IMAGEGEN_API_HTTP_PORT": str(st.port(program)),
            "IMAGEGEN_API_DATABASE_URL": st.database_url,
        }
    prefix = "IMAGEGEN_" + name.upper().replace("-", "_") + "_"
    env = {
        f"{prefix}KAFKA_BOOTSTRAP": st.kafka_bootstrap,
        f"{prefix}HTTP_PORT": str(st.port(program)),
    }
    if name in ("api", "pool-manager", "delivery"):
        env[f"{prefix}DATABASE_URL"] = st.database_url
    if name in ("api", "delivery"):  # the local stack's tests run webhook receivers on loopback
        env[f"{prefix}WEBHOOK_ALLOW"] = "127.0.0.0/8,::1/128"
    if name == "api":
        env[f"{prefix}RUN_PROJECTOR"] = "false"  # the api-projector program runs it
        env[f"{prefix}PUBLIC_BASE_URL"] = f"http://127.0.0.1:{st.port('api')}"
        # /ops proxies the scheduler's queues and the pool-manager's workers (ADR 0820)
        env[f"{prefix}SCHEDULER_URL"] = f"http://127.0.0.1:{st.port('scheduler')}"
        env[f"{prefix}POOL_MANAGER_URL"] = f"http://127.0.0.1:{st.port('pool-manager')}"
    if name == "api" and os.environ.get("IMAGEGEN_STACK_API_LIMITS"):  # JSON (ADR 0640)
        env[f"{prefix}LIMITS"] = os.environ["IMAGEGEN_STACK_API_LIMITS"]
    if name in ("api", "gpu-worker"):  # control images: the API stores, the workers read
        env[f"{prefix}FILES_DIR"] = str(st.var / "files")
    if name == "delivery":
        env[f"{prefix}SIGNING_KEY"] = st.secret("signing_key", 32)
        env[f"{prefix}STORE_DIR"] = str(st.var / "delivery")
        env[f"{prefix}SOURCE_DIR"] = str(st.var / "blobs")
        env[f"{prefix}PUBLIC_BASE_URL"] = f"http://127.0.0.1:{st.port('delivery')}"
    if name in ("api", "scheduler", "pool-manager"):
        env[f"{prefix}MODELS_DIR"] = str(st.models)
    if name == "pool-manager" and os.environ.get("IMAGEGEN_STACK_POOL"):
        env[f"{prefix}POOL"] = os.environ["IMAGEGEN_STACK_POOL"]  # ours | none (bench fleet)
    if name == "scheduler" and os.environ.get("IMAGEGEN_STACK_POOL") == "none":
        env[f"{prefix}GUARD_SWITCHES"] = "false"  # the pool's switch guard too (ADR 0712)
    # IMAGEGEN_STORAGE=s3: images, pause states and uploads in the stack's S3 server.
    if name in ("api", "gpu-worker", "safety", "delivery") and storage() == "s3":
        env[f"{prefix}STORAGE"] = "s3"
        env.update(st.s3_env())
    if name == "gpu-worker":
        env[f"{prefix}BLOB_DIR"] = str(st.var / "blobs")
        if os.environ.get("IMAGEGEN_STACK_PRELOAD_MODEL"):
            env[f"{prefix}PRELOAD_MODEL"] = os.environ["IMAGEGEN_STACK_PRELOAD_MODEL"]
        env[f"{prefix}MODELS_DIR"] = str(st.models)
        i = st.worker_index(program)
        env[f"{prefix}WORKER_ID"] = f"worker-local-{i}"
        if st.worker_budgets_mb:
            budget = st.worker_budgets_mb[(i - 1) % len(st.worker_budgets_mb)]
            env[f"{prefix}MODEL_MEMORY_BUDGET_MB"] = str(budget)
    if f"{prefix}DATABASE_URL" not in env:  # api_keys, to admit operator keys (ADR 0610)
        env[f"{prefix}AUTH_DATABASE_URL"] = st.database_url
    return env


def otel_env() -> dict[str, str]:
    """Tracing (docs/tracing.md): the OTEL_* variables of stack.py's environment, passed on as
    they are, but OTEL_SERVICE_NAME (it would give the six services one name); and
    IMAGEGEN_STACK_OTEL_ENDPOINT, when set, as OTEL_EXPORTER_OTLP_ENDPOINT (an OTLP/HTTP
    collector's base URL, e.g. http://127.0.0.1:4318)."""
    env = {
        k: v for k, v in os.environ.items() if k.startswith("OTEL_") and k != "OTEL_SERVICE_NAME"
    }
    if os.environ.get("IMAGEGEN_STACK_OTEL_ENDPOINT"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = os.environ["IMAGEGEN_STACK_OTEL_ENDPOINT"]
    return env


def storage() -> str:
    """IMAGEGEN_STORAGE: where the services keep objects, ``local`` (default) or ``s3``."""
    value = os.environ.get("IMAGEGEN_STORAGE", "local")
    if value not in ("local", "s3"):
        raise SystemExit(f"IMAGEGEN_STORAGE must be local or s3, got {value!r}")
    return value


def _program(
    name: str,
    command: str,
    st: Stack,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stopsignal: str = "TERM",
    stopwait: int = 20,
    directory: Path = ROOT,
) -> str:
    lines = [
        f"[program:{name}]",
        f"command={command}",
        f"directory={directory}",
        "autostart=false",
        "autorestart=true",
        "startsecs=0",
        "startretries=10",
        f"stopsignal={stopsignal}",
        f"stopwaitsecs={stopwait}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={st.logs / (name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    if user:
        lines.append(f"user={user}")
    if env:
        # supervisord splits on commas outside quotes (shlex, not POSIX: no escapes) and expands
        # %(name)s: a value holding double quotes (JSON) goes in single quotes, % doubled.
        def quote(v: str) -> str:
            q = "'" if '"' in v else '"'
            return q + v.replace("%", "%%") + q

        pairs = ",".join(f"{k}={quote(v)}" for k, v in env.items())
        lines.append(f"environment={pairs}")
    return "\n".join(lines) + "\n"


def write_supervisor_config(st: Stack) -> Path:
    root = st.pg_root.resolve()
    java = shutil.which("java") or "java"
    kafka_cmd = (
        f"{java} -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true "
        f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'kafka' / 'log4j2.properties'} "
        f"-cp '{st.jars}/*' kafka.Kafka {st.kafka_dir / 'server.properties'}"
    )
    pg_cmd = (
        f"{pg_bin()}/postgres -D {root / 'data'} -p {st.pg_port} -h 127.0.0.1 -k {root / 'sock'}"
    )
    s3_cmd = (
        f"{java} -Xms64m -Xmx256m -XX:+UseSerialGC -Djava.awt.headless=true "
        f"-Dlogback.configurationFile={ROOT / 'deploy' / 's3proxy' / 'logback.xml'} "
        f"-cp '{st.s3_jars}/*' org.gaul.s3proxy.Main --properties {st.s3_dir / 's3proxy.conf'}"
    )
    # IMAGEGEN_STACK_VAR marks every program of this stack, so `down` finds its stragglers.
    mark = {"IMAGEGEN_STACK_VAR": str(st.var.resolve())}
    base_env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **mark}
    parts = [
        f"[unix_http_server]\nfile={st.run / 'supervisor.sock'}\nchmod=0700\n",
        f"[supervisord]\nlogfile={st.logs / 'supervisord.log'}\n"
        f"pidfile={st.run / 'supervisord.pid'}\n"
        f"childlogdir={st.logs}\nnodaemon=false\nminfds=4096\n"
        + ("user=root\n" if _as_root() else ""),
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[supervisorctl]\nserverurl=unix://{st.run / 'supervisor.sock'}\n",
        _program("kafka", kafka_cmd, st, stopwait=30, env=mark),
        _program("s3", s3_cmd, st, stopwait=15, env=mark),
        _program(
            "postgres",
            pg_cmd,
            st,
            user="postgres" if _as_root() else None,
            stopsignal="INT",
            stopwait=30,
            directory=root,
            env=mark,
        ),
    ]
    for program in st.programs():
        module = SERVICES["gpu-worker" if program.startswith("gpu-worker") else program][0]
        env = {**base_env, **service_env(st, program), **otel_env()}
        parts.append(_program(program, f"{PY} -m {module}", st, env=env))
    conf = st.run / "supervisord.conf"
    private_dir(st.run)
    write_private(conf, "\n".join(parts))  # 0600: it holds the service secrets
    return conf


def write_env_file(st: Stack) -> None:
    """var/stack.env (0600): what tests and the CLI need to reach the local stack."""
    text = (
        f"IMAGEGEN_KAFKA_BOOTSTRAP={st.kafka_bootstrap}\n"
        f"IMAGEGEN_DATABASE_URL={st.database_url}\n"
        f"IMAGEGEN_API_URL=http://127.0.0.1:{st.port('api')}\n"
    )
    text += "".join(f"{k}={v}\n" for k, v in st.s3_env().items())
    for var, name in (("API_KEY", "dev_api_key"), ("OPERATOR_KEY", "operator_api_key")):
        key = st.var / "secrets" / name
        if key.exists():
            text += f"IMAGEGEN_{var}={key.read_text().strip()}\n"
    st.var.mkdir(parents=True, exist_ok=True)
    write_private(st.var / "stack.env", text)


def supervisord_pid(st: Stack) -> int | None:
    pidfile = st.run / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None  # a zombie supervisord is gone, only not yet reaped


def ctl(st: Stack, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return sh(
        Path(PY).parent / "supervisorctl",
        "-c",
        st.run / "supervisord.conf",
        *args,
        check=check,
        capture_output=True,
    )


def no_stack_running(st: Stack) -> bool:
    """No supervisord of this stack runs (or it has no programs written yet): the services'
    programs are written from this invocation's settings (:func:`setup`)."""
    return supervisord_pid(st) is None or not (st.run / "supervisord.conf").exists()


def ensure_supervisord(st: Stack, reconfigure: bool = True) -> None:
    """Start supervisord, or have a running one apply the written programs (``reconfigure``)."""
    if supervisord_pid(st) is None:
        sh(Path(PY).parent / "supervisord", "-c", st.run / "supervisord.conf")
        deadline = time.monotonic() + 15
        while ctl(st, "status").returncode not in (0, 3) and time.monotonic() < deadline:
            time.sleep(0.1)  # poll for the control socket to answer
    elif reconfigure:
        ctl(st, "reread")
        ctl(st, "update")


def start(st: Stack, *names: str) -> None:
    for name in names:
        out = ctl(st, "start", name)
        if out.returncode != 0 and "already started" not in out.stdout:
            raise SystemExit(f"could not start {name}: {out.stdout.strip()}")


# ---- readiness -----------------------------------------------------------------------------------
def wait_kafka(st: Stack, timeout_s: float = 90) -> None:
    from confluent_kafka.admin import AdminClient  # the venv's; a metadata request decides

    admin = AdminClient(
        {
            "bootstrap.servers": st.kafka_bootstrap,
            "socket.connection.setup.timeout.ms": 1000,
            "log_level": 0,
        }
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=1).brokers:
                return
        except Exception:
            pass
    raise SystemExit(f"Kafka not ready after {timeout_s}s: see {st.logs / 'kafka.log'}")


def wait_pg(st: Stack, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = sh(
            pg_bin() / "pg_isready",
            "-h",
            "127.0.0.1",
            "-p",
            str(st.pg_port),
            "-t",
            "1",
            check=False,
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.1)  # pg_isready returns at once while the port is closed; poll again
    raise SystemExit(f"PostgreSQL not ready after {timeout_s}s: see {st.logs / 'postgres.log'}")


def wait_s3(st: Stack, timeout_s: float = 90) -> None:
    """Until the S3 server answers a signed request; then make sure the stack's bucket exists."""
    sys.path.insert(0, str(ROOT / "libs" / "runtime" / "src"))
    from imagegen_runtime.objectstore import (
        ObjectStoreSettings,
        ObjectStoreUnavailable,
        S3Objects,
    )

    env = st.s3_env()
    settings = ObjectStoreSettings(
        endpoint=env["IMAGEGEN_S3_ENDPOINT"],
        bucket=env["IMAGEGEN_S3_BUCKET"],
        access_key=env["IMAGEGEN_S3_ACCESS_KEY"],
        secret_key=env["IMAGEGEN_S3_SECRET_KEY"],
        connect_timeout_s=1,
        read_timeout_s=5,
        max_attempts=1,
    )
    objects = S3Objects(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            objects.ensure_bucket()
            return
        except ObjectStoreUnavailable as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"S3 server not ready after {timeout_s}s ({exc}): see {st.logs / 's3.log'}"
                ) from exc
        time.sleep(0.2)  # the port is closed until the JVM has started; poll again


def psql(st: Stack, sql: str, db: str = "postgres") -> str:
    r = sh(
        *_pg_user_prefix(),
        pg_bin() / "psql",
        "-h",
        st.pg_root.resolve() / "sock",
        "-p",
        str(st.pg_port),
        "-U",
        "postgres",
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
        capture_output=True,
        cwd=st.pg_root.resolve(),
    )
    return r.stdout.strip()


def ensure_database(st: Stack) -> None:
    pw = st.secret("pg_password")
    if psql(st, "select 1 from pg_roles where rolname='imagegen'") != "1":
        psql(st, f"create role imagegen login createdb password '{pw}'")
    else:
        psql(st, f"alter role imagegen password '{pw}'")
    for db in ("imagegen", "imagegen_test"):
        if psql(st, f"select 1 from pg_database where datname='{db}'") != "1":
            psql(st, f"create database {db} owner imagegen")


def wait_service(st: Stack, name: str, timeout_s: float = 120) -> float:
    port = st.port(name)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)  # between HTTP polls of /readyz
    raise SystemExit(f"{name} not ready after {timeout_s}s: see var/log/{name}.log")


# ---- commands ------------------------------------------------------------------------------------
def infra_up(st: Stack, reconfigure: bool | None = None) -> None:
    """Kafka, PostgreSQL and S3, up and ready. ``reconfigure`` as :func:`setup`: `up` passes
    True (its settings make the fleet); alone, a running stack's services are left alone."""
    if reconfigure is None:
        reconfigure = no_stack_running(st)
    setup(st, reconfigure)
    ensure_supervisord(st, reconfigure)
    start(st, "kafka", "postgres", "s3")
    wait_kafka(st)
    wait_pg(st)
    ensure_database(st)
    wait_s3(st)
    ensure_topics(st)


def ensure_topics(st: Stack, prefix: str = "") -> None:
    sys.path.insert(0, str(ROOT / "libs" / "runtime" / "src"))
    from imagegen_runtime.kafka import ensure_topics as create

    created = create(st.kafka_bootstrap, prefix)
    if created:
        say(f"topics: created {len(created)}")


def up(st: Stack) -> None:
    t0 = time.monotonic()
    infra_up(st, reconfigure=True)
    say(f"ready  kafka         {st.kafka_bootstrap}")
    say(f"ready  postgres      127.0.0.1:{st.pg_port}")
    say(f"ready  s3            http://127.0.0.1:{st.s3_port}  (storage: {storage()})")
    start(st, *st.programs())
    for name in st.programs():
        waited = wait_service(st, name)
        say(f"ready  {name:<13} http://127.0.0.1:{st.port(name)}  (+{waited:.1f}s)")
    key_file = ensure_dev_key(st)
    ensure_operator_key(st)
    say(f"stack ready in {time.monotonic() - t0:.1f}s; logs in {st.logs}; `make down` stops it")
    say(f"development API key (user 'dev', plan pro) in {key_file}")
    say("operator key (/metrics, /docs, operator views) in var/stack.env IMAGEGEN_OPERATOR_KEY")


def ensure_dev_key(st: Stack) -> Path:
    """A development API key, created once and kept in var/secrets/dev_api_key."""
    path = st.var / "secrets" / "dev_api_key"
    if not path.exists():
        env = {**os.environ, "IMAGEGEN_DATABASE_URL": st.database_url}
        out = sh(
            PY,
            "-m",
            "imagegen.cli",
            "keys",
            "create",
            "--user",
            "dev",
            "--plan",
            "pro",
            env=env,
            capture_output=True,
        )
        private_dir(path.parent)
        write_private(path, out.stdout.strip())
    write_env_file(st)
    return path


def ensure_operator_key(st: Stack) -> Path:
    """An operator key (role operator: /metrics, /docs, operator views), created once and kept
    in var/secrets/operator_api_key; var/stack.env names it IMAGEGEN_OPERATOR_KEY."""
    path = st.var / "secrets" / "operator_api_key"
    if not path.exists():
        env = {**os.environ, "IMAGEGEN_DATABASE_URL": st.database_url}
        args = ("--user", "operator", "--plan", "pro", "--role", "operator")
        out = sh(PY, "-m", "imagegen.cli", "keys", "create", *args, env=env, capture_output=True)
        private_dir(path.parent)
        write_private(path, out.stdout.strip())
    write_env_file(st)
    return path


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its parents up to init: `down` must never kill the process that called it."""
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _our_processes(st: Stack) -> list[int]:
    """Live PIDs of this stack (stragglers): a command line that points into this stack's var/
    (Kafka's server.properties, PostgreSQL's data dir, supervisord's config) or the
    IMAGEGEN_STACK_VAR marker that every supervised program gets in its environment. Nothing
    shared between stacks counts (the Kafka jars, a service's module name): `down` of one stack
    must never touch another stack running beside it."""
    var = str(st.var.resolve())
    marker = f"IMAGEGEN_STACK_VAR={var}".encode()
    callers = _ancestors(os.getpid())  # whoever ran `down` (e.g. `--var DIR` in its arguments)
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in callers or not _alive(int(proc.name)):
            continue
        try:
            ours = var in (proc / "cmdline").read_bytes().decode(errors="replace")
            ours = ours or marker in (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or another user's process whose environment we may not read
        if ours:
            pids.append(int(proc.name))
    return pids


def down(st: Stack, grace_s: float = 10.0) -> None:
    pid = supervisord_pid(st)
    if pid is not None:
        ctl(st, "stop", "all")
        ctl(st, "shutdown")
        deadline = time.monotonic() + 60
        while supervisord_pid(st) is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # supervisord exits once its children are gone
    grace = time.monotonic() + grace_s
    while _our_processes(st) and time.monotonic() < grace:
        time.sleep(0.1)  # a process still shutting down on its own (a checkpoint) may finish
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while (left := _our_processes(st)) and time.monotonic() < deadline:
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except ProcessLookupError:
                pass
        time.sleep(0.1)  # SIGKILL is asynchronous: scan again until every one has exited
    if left:
        raise SystemExit(f"stack down: processes still alive after SIGKILL: {left}")
    n = len(killed)
    say("stack down" + (f" (killed {n} straggler{'' if n == 1 else 's'})" if n else ""))


def status(st: Stack) -> None:
    if supervisord_pid(st) is None:
        say("stack is down")
        return
    say(ctl(st, "status").stdout.rstrip())


def main(argv: list[str]) -> None:
    st = Stack()
    cmd = argv[0] if argv else "status"
    if cmd == "setup":
        setup(st)
    elif cmd == "infra-up":
        infra_up(st)
        say(
            json.dumps(
                {
                    "kafka": st.kafka_bootstrap,
                    "postgres": f"127.0.0.1:{st.pg_port}",
                    "s3": f"http://127.0.0.1:{st.s3_port}",
                }
            )
        )
    elif cmd == "up":
        up(st)
    elif cmd == "down":
        down(st)
    elif cmd == "status":
        status(st)
    elif cmd == "logs":
        os.execvp("tail", ["tail", "-n", "50", "-F", *map(str, sorted(st.logs.glob("*.log")))])
    elif cmd == "env":
        setup(st)
        say((st.var / "stack.env").read_text().rstrip())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
