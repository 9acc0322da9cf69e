#!/usr/bin/env python3
"""Code sync: INCL's push_tree / pull_tree against `aws s3 sync`, side by side on one moto server.

    .venv/bin/python bench/code_sync.py                      # 5,000 files, ~300 MB, N = 3
    .venv/bin/python bench/code_sync.py --reps 5 --files 2000 --mb 100
    .venv/bin/python bench/code_sync.py --strategies         # how push_tree should find the blobs a store lacks

The tree: `--files` files, about `--mb` MB, from a fixed seed: ~17 % of the bytes in many small source-like
files (log-normal sizes, median ~4 KB) in ~200 folders, the rest in 1-20 MB files. One moto server
(tests/motoserver.py) serves both sides; each first upload goes to a fresh prefix.

Steps, each repeated `--reps` times (medians reported):
  aws   first:   `aws s3 sync TREE s3://bench/aws/<rep>/` (awscli from this venv, fake credentials)
        resync:  the same command again, nothing changed
        edit:    one small file changed (a line appended), then the same command
  incl  first:   push_tree to s3://bench/incl/<rep> with a fresh hash cache (in-process, client already
                 imported), and the same from a fresh process per rep (`python -c`, as `incl submit` would)
        resubmit / edit: push_tree of the unchanged tree / after a one-file edit, with the warm hash cache;
                 both in-process and as a whole process
        pull:    pull_tree into a new folder from a cold, then a warm blob cache (bytes downloaded: target 0)
  submit (--submit): the real `incl submit --workdir TREE -- true`, a whole process, against an `incl up` stack
          (no agent) whose store is the same moto: first, unchanged resubmits, one-file edits
  import: wall time of `python -c pass`, `import incl.artifacts` and `import incl.artifacts.s3api`
          (aiobotocore), so that a whole-process figure can be split into start-up and work.

Results: bench/results/code_sync.json and a readable bench/results/code_sync.txt (or code_sync_strategies.*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from motoserver import MotoServer  # noqa: E402  (tests/ holds the moto helper)

from incl.artifacts import BlobCache, HashCache, TreeLimits, open_store, pull_tree, push_tree  # noqa: E402

PY = sys.executable
AWS = str(Path(PY).parent / "aws")  # awscli in this venv; else --aws names one (an `aws` on PATH)
BUCKET = "bench"
MB = 1_000_000

# The whole-process push: what `incl submit` does before it talks to the controller.
CLI_PUSH = """
import asyncio, logging, sys
from pathlib import Path
import structlog
from incl.artifacts import HashCache, open_store, push_tree
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
async def main(url, root, cache):
    async with open_store(url) as store:
        r = await push_tree(store, Path(root), gitignore=True, hash_cache=HashCache(Path(cache)))
    print(r.digest, r.hashed_files, r.uploaded_blobs, r.uploaded_bytes)
asyncio.run(main(*sys.argv[1:]))
"""


def make_tree(root: Path, files: int, total_mb: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    total = int(total_mb * MB)
    bigs: list[int] = []
    while sum(bigs) + (size := rng.randint(1 * MB, 20 * MB)) <= total * 0.83:
        bigs.append(size)
    raw = [rng.lognormvariate(8.3, 1.1) for _ in range(files - len(bigs))]
    scale = (total - sum(bigs)) / sum(raw)
    folders = [f"src/pkg{i // 20}/mod{i % 20}" for i in range(200)]
    small: list[str] = []
    for i, r in enumerate(raw):
        rel = f"{folders[i % len(folders)]}/file_{i}.py"
        small.append(rel)
        _write(root / rel, rng.randbytes(int(r * scale)))
    for j, size in enumerate(bigs):
        _write(root / "data" / f"shard_{j:03d}.bin", rng.randbytes(size))
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file()]
    return {"files": len(sizes), "bytes": sum(sizes), "big_files": len(bigs), "small_files": len(small),
            "small_bytes": sum(sizes) - sum(bigs), "folders": sum(1 for p in root.rglob("*") if p.is_dir()),
            "seed": seed, "small_paths": small}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def edit(tree: Path, rel: str, n: int) -> None:
    with open(tree / rel, "a") as f:
        f.write(f"# edit {n}\n")


def timed_run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = await fn()
    return time.perf_counter() - t0, result


async def push(url: str, tree: Path, cache: Path, limits: TreeLimits = TreeLimits()) -> Any:
    async with open_store(url) as store:
        return await push_tree(store, tree, gitignore=True, hash_cache=HashCache(cache), limits=limits)


async def pull(url: str, digest: str, dest: Path, cache: Path) -> Any:
    async with open_store(url) as store:
        return await pull_tree(store, digest, dest, blob_cache=BlobCache(cache))


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, moto: MotoServer) -> None:
        self.args, self.work, self.moto = args, work, moto
        self.env = {**os.environ, **moto.env()}
        self.tree = work / "tree"
        self.info: dict[str, Any] = {}
        self.edits = 0

    def aws_sync(self, dest: str) -> float:
        return timed_run([self.args.aws, "s3", "sync", str(self.tree), f"s3://{BUCKET}/{dest}/", "--endpoint-url",
                          self.moto.url, "--only-show-errors"], self.env)[0]

    def edit_one(self) -> None:
        self.edits += 1
        edit(self.tree, self.info["small_paths"][self.edits * 97 % len(self.info["small_paths"])], self.edits)

    def cli_push(self, url: str, cache: Path) -> tuple[float, list[int]]:
        seconds, out = timed_run([PY, "-c", CLI_PUSH, url, str(self.tree), str(cache)], self.env)
        return seconds, [int(x) for x in out.split()[1:]]

    async def incl_push(self, out: dict[str, list[Any]], step: str, url: str, cache: Path) -> None:
        """push_tree in this process, then the same as a whole process (`step` and `step`_cli)."""
        seconds, r = await timed(lambda: push(url, self.tree, cache))
        out[step].append(seconds)
        out["counts"].append((step, r.hashed_files, r.uploaded_blobs, r.uploaded_bytes))
        if step == "first":  # a fresh prefix and hash cache: another first upload
            url, cache = url + "-cli", cache.with_name(cache.name + "-cli")
        elif step == "edit":  # another one-file edit for the process to find
            self.edit_one()
        seconds, counts = self.cli_push(url, cache)
        out[f"{step}_cli"].append(seconds)
        out["counts"].append((f"{step}_cli", *counts))

    async def run(self) -> tuple[dict[str, list[float]], dict[str, Any]]:
        """First uploads interleaved (aws, incl, incl as a process) so that both see the same host load;
        then the short steps in blocks, so that each side's edits are its own."""
        n = self.args.reps
        aws: dict[str, list[float]] = {"first": [], "resync": [], "edit": []}
        incl: dict[str, Any] = {k: [] for k in ("first", "first_cli", "resubmit", "resubmit_cli", "edit",
                                               "edit_cli", "counts")}
        for rep in range(n):
            aws["first"].append(self.aws_sync(f"aws/{rep}"))
            await self.incl_push(incl, "first", f"s3://{BUCKET}/incl/{rep}", self.work / f"hashes-{rep}")
            log(f"first upload {rep}: aws {aws['first'][-1]:.2f} s, incl {incl['first'][-1]:.2f} s in-process, "
                f"{incl['first_cli'][-1]:.2f} s whole process")
        for _ in range(n):
            aws["resync"].append(self.aws_sync("aws/0"))
        for _ in range(n):
            self.edit_one()
            aws["edit"].append(self.aws_sync("aws/0"))
        url, cache = f"s3://{BUCKET}/incl/0", self.work / "hashes-0"
        for _ in range(n):
            await self.incl_push(incl, "resubmit", url, cache)
        for _ in range(n):
            self.edit_one()
            await self.incl_push(incl, "edit", url, cache)
        log(f"aws resync {aws['resync']}, edit {aws['edit']}")
        log(f"incl resubmit {incl['resubmit']} / process {incl['resubmit_cli']}; edit {incl['edit']} / "
            f"process {incl['edit_cli']}")
        incl["pull"] = await self.run_pull(url, cache)
        return aws, incl

    async def run_pull(self, url: str, hash_cache: Path) -> dict[str, Any]:
        digest = (await push(url, self.tree, hash_cache)).digest
        blobs = self.work / "blobcache"
        seconds, cold = await timed(lambda: pull(url, digest, self.work / "pull-cold", blobs))
        warm: list[float] = []
        downloaded: list[int] = []
        for rep in range(self.args.reps):
            dest = self.work / f"pull-warm-{rep}"
            t, r = await timed(lambda d=dest: pull(url, digest, d, blobs))  # type: ignore[misc]
            warm.append(t)
            downloaded.append(r.downloaded_bytes)
            shutil.rmtree(dest)
        log(f"pull cold {seconds:.2f} s ({cold.downloaded_bytes} B), warm {warm} (downloaded {downloaded})")
        return {"cold_s": round(seconds, 3), "cold_downloaded_bytes": cold.downloaded_bytes,
                "cold_downloaded_blobs": cold.downloaded_blobs, "warm_s": warm, "warm_downloaded_bytes": downloaded,
                "files": cold.files, "bytes": cold.bytes}

    def run_submits(self) -> dict[str, Any]:
        """The real `incl submit --workdir TREE -- true`, a whole process each, against a stack (`incl up`, no
        agent: the job stays queued) whose store is this moto: a first submit (empty hash cache), then `--reps`
        unchanged resubmits and `--reps` one-file edits. Each includes the CLI's start-up, its NATS connection and
        the controller's reply, which the push-only process above does not."""
        sys.path.insert(0, str(REPO / "bench"))
        from incl_side import Stack  # the benches' `incl up` stack, only for this step

        stack = Stack(0, 1, keep=False)
        stack.env.update(self.moto.env())
        (stack.home / "controller.yaml").write_text(json.dumps({
            "provider_shapes": [{"cpus": 1.0, "memory": 2**30}], "store_url": f"s3://{BUCKET}/submit"}))
        argv = [PY, "-m", "incl.cli", "submit", "--workdir", str(self.tree), "--", "true"]
        env = {**self.env, "INCL_HOME": str(stack.home)}
        out: dict[str, Any] = {"first": [], "resubmit": [], "edit": []}
        try:
            stack.up()
            out["first"].append(timed_run(argv, env)[0])
            for _ in range(self.args.reps):
                out["resubmit"].append(timed_run(argv, env)[0])
            for _ in range(self.args.reps):
                self.edit_one()
                out["edit"].append(timed_run(argv, env)[0])
            out["help_s"] = med([timed_run([PY, "-m", "incl.cli", "submit", "--help"], env)[0]
                                 for _ in range(max(3, self.args.reps))])
        finally:
            stack.down()
        log(f"incl submit: first {out['first']}, resubmit {out['resubmit']}, edit {out['edit']}")
        return out

    def run_imports(self) -> dict[str, float]:
        stmts = {"python_startup": "pass", "import_incl_artifacts": "import incl.artifacts",
                 "import_s3_client": "import incl.artifacts, incl.artifacts.s3api"}
        return {k: med([timed_run([PY, "-c", s], self.env)[0] for _ in range(max(3, self.args.reps))])
                for k, s in stmts.items()}


def summarize(aws: dict[str, list[float]], incl: dict[str, Any], imports: dict[str, float]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name, aws_key, keys in (("first upload", "first", ("first", "first_cli")),
                                ("resubmit unchanged", "resync", ("resubmit", "resubmit_cli")),
                                ("resubmit one small file changed", "edit", ("edit", "edit_cli"))):
        a = med(aws[aws_key])
        row = {"aws_s": a}
        for k in keys:
            label = "incl_process_s" if k.endswith("_cli") else "incl_in_process_s"
            row[label] = med(incl[k])
            row[label.replace("_s", "_speedup_vs_aws")] = round(a / med(incl[k]), 1)
        s[name] = row
    if "submit" in incl:
        for name, aws_key, key in (("resubmit unchanged", "resync", "resubmit"),
                                   ("resubmit one small file changed", "edit", "edit")):
            s[name]["incl_submit_s"] = med(incl["submit"][key])
            s[name]["incl_submit_speedup_vs_aws"] = round(med(aws[aws_key]) / med(incl["submit"][key]), 1)
        s["first upload"]["incl_submit_s"] = incl["submit"]["first"][0]
        s["submit_help_s"] = incl["submit"]["help_s"]
    s["pull warm cache"] = {"incl_in_process_s": med(incl["pull"]["warm_s"]),
                            "downloaded_bytes": incl["pull"]["warm_downloaded_bytes"]}
    s["pull cold cache"] = {"incl_in_process_s": incl["pull"]["cold_s"],
                            "downloaded_bytes": incl["pull"]["cold_downloaded_bytes"]}
    s["imports_s"] = imports
    return s


def render(result: dict[str, Any]) -> str:
    t = result["tree"]
    lines = [f"Code sync, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(result['when']))} UTC; "
             f"{t['files']} files, {t['bytes'] / MB:.0f} MB ({t['big_files']} of 1-20 MB, {t['small_files']} small, "
             f"{t['small_bytes'] / MB:.0f} MB), {result['host']['cpus']} CPUs, load {result['host']['load']}; "
             f"medians of {result['reps']}",
             "", f"{'step':34} {'aws s3 sync':>12} {'incl in-proc':>13} {'x aws':>7} {'incl process':>13} {'x aws':>7}"]
    for name, row in result["summary"].items():
        if isinstance(row, dict) and "aws_s" in row:
            lines.append(f"{name:34} {row['aws_s']:>10.3f} s {row['incl_in_process_s']:>11.3f} s "
                         f"{row['incl_in_process_speedup_vs_aws']:>6}x {row['incl_process_s']:>11.3f} s "
                         f"{row['incl_process_speedup_vs_aws']:>6}x")
    for name in ("pull cold cache", "pull warm cache"):
        row = result["summary"][name]
        lines.append(f"{name:34} {'':>12} {row['incl_in_process_s']:>11.3f} s   downloaded bytes: "
                     f"{row['downloaded_bytes']}")
    if "submit_help_s" in result["summary"]:
        lines.append("")
        for name, row in result["summary"].items():
            if isinstance(row, dict) and "incl_submit_s" in row:
                ratio = f"{row['incl_submit_speedup_vs_aws']:>6}x" if "incl_submit_speedup_vs_aws" in row else ""
                lines.append(f"{'incl submit: ' + name:47} {row['incl_submit_s']:>11.3f} s {ratio}")
        lines.append(f"{'incl submit --help':47} {result['summary']['submit_help_s']:>11.3f} s")
    imp = result["summary"]["imports_s"]
    lines += ["", f"process start-up: python {imp['python_startup']:.3f} s, with import incl.artifacts "
                  f"{imp['import_incl_artifacts']:.3f} s, with the S3 client too (aiobotocore) "
                  f"{imp['import_s3_client']:.3f} s"]
    return "\n".join(lines) + "\n"


def render_strategies(result: dict[str, Any]) -> str:
    t = result["tree"]
    lines = [f"Finding the blobs a store lacks, {t['files']} files, {t['bytes'] / MB:.0f} MB, "
             f"{result['host']['cpus']} CPUs, load {result['host']['load']}; one run each", ""]
    for name, row in result["strategies"].items():
        what = f"{row['uploaded_blobs']:>5} blobs uploaded" if "uploaded_blobs" in row else f"{row['objects']} keys"
        lines.append(f"{name:88} {row['s']:>7.2f} s   {what}")
    return "\n".join(lines) + "\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def strategies(b: Bench) -> dict[str, Any]:
    """How to find the blobs a store lacks: measured, not guessed (see artifacts/push.py)."""
    choices = {"HEAD each": TreeLimits(blind_put_max=-1, blobs_per_list_page=10**9),
               "PUT small unasked": TreeLimits(blobs_per_list_page=10**9),
               "default (LIST first pages, then decide)": TreeLimits()}
    out: dict[str, Any] = {}

    async def one(name: str, url: str, limits: TreeLimits) -> None:
        seconds, r = await timed(lambda: push(url, b.tree, b.work / f"strategy-{len(out)}", limits))
        out[name] = {"s": round(seconds, 3), "uploaded_blobs": r.uploaded_blobs}
        log(f"{name}: {seconds:.2f} s, {r.uploaded_blobs} blobs uploaded")

    for choice, limits in choices.items():
        await one(f"empty store: {choice}", f"s3://{BUCKET}/s/{len(out)}", limits)
    for choice, limits in choices.items():  # the tree is at s/0: push it again from a machine without records
        b.edit_one()
        await one(f"store holding the tree, fresh machine, one edit: {choice}", f"s3://{BUCKET}/s/0", limits)
    async with open_store(f"s3://{BUCKET}/s/0") as store:
        seconds, listed = await timed(lambda: store.list("blobs/"))
    out["store holding the tree: one full LIST of blobs/"] = {"s": round(seconds, 3), "objects": len(listed)}
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--mb", type=float, default=300)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--strategies", action="store_true", help="compare ways to find the blobs a store lacks")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--submit", action="store_true",
                   help="also time the real `incl submit` as a whole process, against an `incl up` stack")
    p.add_argument("--aws", default=AWS if Path(AWS).exists() else shutil.which("aws"),
                   help="the aws CLI to run (default: this venv's, else the one on PATH)")
    args = p.parse_args()
    if not args.aws:
        p.error("no aws CLI: install awscli in this venv or pass --aws PATH")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import incl.artifacts.s3api  # in-process figures leave out the one-time import (measured apart)

    with tempfile.TemporaryDirectory(prefix="code-sync-") as tmp:
        work = Path(tmp)
        with MotoServer(work / "moto.log") as moto:
            os.environ.update(moto.env())
            b = Bench(args, work, moto)
            log("generating the tree...")
            b.info = make_tree(b.tree, args.files, args.mb, args.seed)
            subprocess.run([args.aws, "s3", "mb", f"s3://{BUCKET}", "--endpoint-url", moto.url], env=b.env, check=True,
                           capture_output=True)
            tree = {k: v for k, v in b.info.items() if k != "small_paths"}
            host = {"cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()], "aws": args.aws,
                    "aws_version": subprocess.run([args.aws, "--version"], capture_output=True, text=True).stdout.strip()}
            result: dict[str, Any]
            if args.strategies:
                result = {"when": time.time(), "tree": tree, "host": host, "strategies": await strategies(b)}
                name = "code_sync_strategies"
                text = render_strategies(result)
            else:
                aws, incl = await b.run()
                if args.submit:
                    incl["submit"] = b.run_submits()
                imports = b.run_imports()
                result = {"when": time.time(), "reps": args.reps, "tree": tree, "host": host, "aws": aws,
                          "incl": incl, "summary": summarize(aws, incl, imports)}
                name = "code_sync"
                text = render(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
