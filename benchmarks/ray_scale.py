"""Ray scaling of ``python -m annotate score`` on this machine: 1 vs 2 actors on a local Ray instance, and the same
job on a real two-node Ray cluster on loopback (``ray start --head`` plus a second ``ray start --address``, each
node with its own ``--num-cpus``), one engine thread per actor.

Input: 20,000 real texts (emotion train, 16,000, plus the first 4,000 of the AG News pool), written as two JSONL
shards under the work folder. Every run scores into a fresh scored-pool folder with the embedding method
(the default for single-label labels) and the labels of both sets. Reported per run: rows, wall time, rows/s
(start-up included) and steady rows/s (after the first block: Ray start, reads and model loads excluded), actors and
nodes that did work, and the load average before and after (other agents may share the cores). Scaling efficiency
= steady rate of N actors / (N x steady rate of 1 actor).

Usage::

    python -m benchmarks.ray_scale --rows 20000 --output benchmarks/results/ray_scale.json
    python -m benchmarks.ray_scale --rows 2000 --runs local1    # a quick look

The cluster nodes run as ``ray start --block`` children in their own process groups; they are stopped by
process group at the end (never ``ray stop``, which would end every Ray process on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise", "World", "Sports", "Business", "Sci/Tech"]
TEMPLATE = "This text is about {}."


def write_input(data_dir: Path, rows: int, folder: Path) -> Path:
    """Two JSONL shards of ``rows`` texts in total: emotion train first, then the AG News pool."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    sources = [data_dir / "classification" / "emotion" / "train.jsonl",
               data_dir / "classification" / "ag_news" / "train_unlabeled_8k_description_only.jsonl"]
    left = rows
    for i, source in enumerate(sources):
        lines = []
        with source.open(encoding="utf-8") as handle:
            for line in handle:
                if len(lines) == left:
                    break
                lines.append(json.dumps({"text": json.loads(line)["text"]}) + "\n")
        (folder / f"part-{i}.jsonl").write_text("".join(lines), encoding="utf-8")
        left -= len(lines)
        if not left:
            break
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackCluster:
    """Two Ray nodes on 127.0.0.1, each a ``ray start --block`` child in its own session (process group)."""

    def __init__(self, work: Path, cpus_per_node: int = 1, object_store_mb: int = 200) -> None:
        self.work, self.cpus, self.store = work, cpus_per_node, object_store_mb * 2**20
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _ray(self, name: str, *args: str) -> None:
        ray_bin = Path(sys.executable).with_name("ray")
        log = open(self.work / f"{name}.log", "ab")
        env = cluster_env()
        self.procs.append(subprocess.Popen([str(ray_bin), "start", "--block", "--node-ip-address", "127.0.0.1",
                                            "--num-cpus", str(self.cpus), "--object-store-memory", str(self.store),
                                            *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True))
        log.close()

    def __enter__(self) -> "LoopbackCluster":
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._ray("head", "--head", "--port", str(self.port), "--include-dashboard", "false")
            self._wait_nodes(1)
            self._ray("worker", "--address", self.address, "--resources", json.dumps({"second_node": 1}))
            self._wait_nodes(2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_nodes(self, n: int, timeout: float = 180) -> None:
        probe = ("import ray; ray.init(address=%r, logging_level='error'); "
                 "print(sum(1 for node in ray.nodes() if node['Alive']))" % self.address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {proc.returncode}; see {self.work}/*.log")
            run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cluster_env(),
                                 timeout=120)
            lines = run.stdout.strip().splitlines()
            if run.returncode == 0 and lines and int(lines[-1]) >= n:
                return
            time.sleep(2)
        raise RuntimeError(f"the loopback cluster did not reach {n} nodes in {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        pointer = Path("/tmp/ray/ray_current_cluster")  # `ray start --head` leaves it; `ray stop` would remove it
        try:
            if pointer.read_text().strip().endswith(f":{self.port}"):
                pointer.unlink()
        except OSError:
            pass


def cluster_env() -> dict:
    """Environment of the cluster's processes and of jobs sent to it: token authentication on (Ray's default for
    new clusters, explicit so every process agrees), no usage stats, multi-node mode on."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def run_job(inputs: Path, output: Path, actors: int, address: str | None, batch_size: int) -> dict:
    """``python -m annotate score`` in a child process (each job its own driver, as a user runs it)."""
    shutil.rmtree(output, ignore_errors=True)
    summary = output.with_name(output.name + ".summary.json")
    args = [sys.executable, "-m", "annotate", "score", str(inputs), "--output", str(output),
            *[a for label in LABELS for a in ("--label", label)], "--hypothesis-template", TEMPLATE,
            "--method", "embedding", "--concurrency", str(actors), "--num-cpus", "1", "--batch-size", str(batch_size),
            "--summary-json", str(summary), "--log-level", "warning"]
    if address:
        args += ["--ray-address", address]
    load_before = os.getloadavg()
    with open(output.with_name(output.name + ".log"), "wb") as log:
        run = subprocess.run(args, cwd=REPO, env=cluster_env() if address else {**os.environ,
                             "RAY_USAGE_STATS_ENABLED": "0"}, stdout=log, stderr=subprocess.STDOUT)
    if run.returncode:
        raise RuntimeError(f"score failed ({run.returncode}); see {output.with_name(output.name + '.log')}")
    return {**json.loads(summary.read_text()), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", default="local1,local2,cluster2", help="any of local1, local2, cluster2")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ZSC_SHARED_DATA",
                                                                              REPO.parent / "shared" / "data")))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ray_scale")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "ray_scale.json")
    args = parser.parse_args(argv)
    from benchmarks.machine import cpu_facts

    if not (args.data_dir / "classification" / "emotion" / "train.jsonl").is_file():
        print(f"error: shared data not found under {args.data_dir} (set --data-dir or ZSC_SHARED_DATA)",
              file=sys.stderr)
        return 2
    cpu = cpu_facts()
    flags = cpu["flags"]
    print(f"CPU {cpu['cpu']} ({cpu['cores']} cores) flags {flags}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    inputs = write_input(args.data_dir, args.rows, args.work / "input")
    runs = {}
    for name in args.runs.split(","):
        output = args.work / f"pool-{name}"
        if name == "local1":
            runs[name] = run_job(inputs, output, 1, None, args.batch_size)
        elif name == "local2":
            runs[name] = run_job(inputs, output, 2, None, args.batch_size)
        elif name == "cluster2":
            with LoopbackCluster(args.work / "cluster") as cluster:
                runs[name] = {**run_job(inputs, output, 2, cluster.address, args.batch_size),
                              "cluster": "two ray start nodes on 127.0.0.1, --num-cpus 1 each"}
        else:
            raise SystemExit(f"unknown run {name!r}")
        r = runs[name]
        print(f"{name:9s} rows {r['scored']:6d}  wall {r['wall_seconds']:7.1f} s  {r['rows_per_second']:6.1f} rows/s  "
              f"steady {r['steady_rows_per_second']:6.1f} rows/s  actors {r['actors']} on {r['nodes']} node(s)  "
              f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}", flush=True)
    base = runs.get("local1", {}).get("steady_rows_per_second")
    efficiency = {name: round(r["steady_rows_per_second"] / (r["actors"] * base), 3)
                  for name, r in runs.items() if base and name != "local1" and r["actors"]}
    for name, value in efficiency.items():
        print(f"scaling efficiency {name}: {value:.2f} (steady rate / (actors x 1-actor rate))")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": {**cpu, "flags": flags}, "rows": args.rows,
              "labels": LABELS, "method": "embedding", "batch_size": args.batch_size, "runs": runs,
              "scaling_efficiency": efficiency}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output.with_suffix(".png"))
    print(f"results: {args.output}; figure: {args.output.with_suffix('.png')}")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["runs"])
    steady = [result["runs"][n]["steady_rows_per_second"] for n in names]
    overall = [result["runs"][n]["rows_per_second"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], steady, width=0.4, label="steady (after first block)")
    ax.bar([i + 0.2 for i in x], overall, width=0.4, label="overall (start-up included)")
    labels = [f"{n}\nload {result['runs'][n]['load_before'][0]:.1f}" for n in names]
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("texts/s (score + embedding)")
    ax.set_title(f"annotate score on Ray, {result['rows']} texts, 1 thread/actor\n{result['cpu']['model']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
