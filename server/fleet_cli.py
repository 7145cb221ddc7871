"""``fleetserve fleet``: see and change a fleet's state in Redis.

``status`` shows, per model, the desired state and every live replica's actual state;
``rollout``, ``promote`` and ``rollback`` change a model's desired state; ``limit`` sets a tenant's
rate limit. Each changing command checks first (the version exists in the store: the
``--model-repository`` given, else the repositories live replicas report), prints what will happen,
and writes atomically: if someone else changed the model meanwhile, nothing is written and the
command says so. ``--dry-run`` stops before writing; ``--wait SECS`` waits until every live replica
serving the model has applied the new revision (or reported that it cannot) and prints how long
that took. Exit status: 0 done, 1 refused or not converged, 2 Redis unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Awaitable, Callable

from model_store.repository import ModelRepository
from model_store.rollout import DesiredModel, ReplicaState, RolloutStore
from model_store.routing import BUCKETS, Split, describe_split, make_split
from ops.errors import ServingError
from ops.redis_link import RedisLink, RedisUnavailable
from server.rate_limit import Limit, limit_field, parse_limits, write_limit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Refused(Exception):
    """The command would do something wrong; nothing was written."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetserve fleet", description="see and change a fleet's state in Redis")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"the fleet's Redis (default {DEFAULT_REDIS_URL})")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for Redis (default 2)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", add_help=False, help="start N replicas and a redis-server on loopback (fleet up --help)")
    status = sub.add_parser("status", help="desired vs actual state, per model and replica")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    rollout = sub.add_parser("rollout", help="serve another version of a model: all at once, or a canary share")
    rollout.add_argument("model")
    rollout.add_argument("--version", type=int, required=True)
    rollout.add_argument("--canary", type=float, default=None, metavar="PCT",
                         help="send PCT%% of the requests without a version to it (resolution 0.01%%); "
                              "again with another PCT to change the share")
    for name, text in (("promote", "give the canary version all the traffic"),
                       ("rollback", "return to the split before the last rollout or promote")):
        sub.add_parser(name, help=text).add_argument("model")
    for command in ("rollout", "promote", "rollback"):
        q = sub.choices[command]
        q.add_argument("--model-repository", type=Path, default=None,
                       help="check versions in this repository folder (default: what live replicas report)")
        q.add_argument("--dry-run", action="store_true", help="print what would happen; write nothing")
        q.add_argument("--wait", type=float, default=0.0, metavar="SECS",
                       help="wait up to SECS for every live replica to apply it")
    limit = sub.add_parser("limit", help="set (or --remove) a tenant's rate limit for a model")
    limit.add_argument("tenant")
    limit.add_argument("model")
    limit.add_argument("--rps", type=float, help="requests per second, refilled continuously")
    limit.add_argument("--burst", type=int, help="requests that may arrive at once (the bucket's size)")
    limit.add_argument("--remove", action="store_true")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "up":  # a local fleet: its own arguments, no Redis needed first (server/fleet_up.py)
        from server.fleet_up import main as up_main

        return up_main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "up":
        parser().error("fleet up takes its own options: fleetserve fleet up --replicas N [--redis-url URL]")
    logging.getLogger("ops.redis_link").setLevel(logging.ERROR)  # this command reports Redis problems itself
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    link = RedisLink(args.redis_url, timeout_s=args.timeout)
    try:
        if not await link.start():
            print(f"fleetserve fleet: cannot reach redis {link.name}: {link.reason}", file=sys.stderr)
            return 2
        command: Callable[[argparse.Namespace, RolloutStore], Awaitable[int]] = COMMANDS[args.command]
        return await command(args, RolloutStore(link))
    except RedisUnavailable as exc:
        print(f"fleetserve fleet: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"fleetserve fleet {args.command}: {exc}; nothing was written", file=sys.stderr)
        return 1
    finally:
        await link.stop()


# ---- status ------------------------------------------------------------------------------------
def _serving(report: Any) -> str:
    if report.route:
        return describe_split(report.route)
    ready = [v.version for v in report.versions if v.state == "READY"]
    return f"latest (v{max(ready)})" if ready else "nothing"


def _note(desired: DesiredModel | None, report: Any) -> str:
    if report.error:
        return f"FAILED: {report.error}"
    if desired is not None and report.applied_revision < desired.revision:
        return "applying"
    return "ok"


def status_rows(desired: dict[str, DesiredModel], replicas: list[ReplicaState]) -> list[list[str]]:
    rows = []
    for model in sorted(set(desired) | {m for r in replicas for m in r.models}):
        d = desired.get(model)
        first = True
        serving: list[ReplicaState | None] = [r for r in replicas if model in r.models] or [None]
        for replica in serving:
            head = [model, describe_split(d.split) if d else "version policy", str(d.revision) if d else "-"] \
                if first else ["", "", ""]
            first = False
            if replica is None:
                rows.append(head + ["(no live replica serves it)", "", "", "", "", "", ""])
                continue
            m = replica.models[model]
            versions = ", ".join(f"{v.version} {v.state}" for v in m.versions) or "-"
            rows.append(head + [replica.id, replica.address, str(m.applied_revision or "-"), _serving(m), versions,
                                str(m.queue_depth), _note(d, m)])
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


async def _limits(store: RolloutStore) -> dict[str, Limit]:
    return parse_limits(await store.link.call(lambda c: c.hgetall(store.keys.limits)))


async def status(args: argparse.Namespace, store: RolloutStore) -> int:
    desired = await store.read_all_desired()
    replicas = await store.read_replicas()
    limits = await _limits(store)
    if args.json:
        print(json.dumps({"desired": {m: asdict(d) for m, d in desired.items()},
                          "replicas": [asdict(r) for r in replicas],
                          "limits": {f: asdict(lim) for f, lim in limits.items()}}, indent=2))
        return 0
    print(f"redis {store.link.name}: {len(replicas)} live replica(s)\n")
    header = ["MODEL", "DESIRED", "REV", "REPLICA", "ADDRESS", "APPLIED", "SERVING", "VERSIONS", "QUEUE", "STATE"]
    print(format_table(header, status_rows(desired, replicas)))
    if limits:
        print()
        print(format_table(["TENANT", "MODEL", "RPS", "BURST"],
                           [[*f.rsplit("/", 1), f"{lim.rps:g}", str(lim.burst)] for f, lim in sorted(limits.items())]))
    return 0


# ---- changing the desired state ----------------------------------------------------------------
def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _check_version(model: str, version: int, repository: Path | None, replicas: list[ReplicaState]) -> str:
    """How the version's existence was checked; raises Refused when it does not exist."""
    if repository is not None:
        try:
            present = sorted(ModelRepository(repository).read(model).versions)
        except ServingError as exc:
            raise Refused(exc.message) from None
        if version not in present:
            raise Refused(f"model '{model}' has no version {version} in {repository}; versions: {present or 'none'}")
        return f"version {version} is in {repository}"
    serving = [r for r in replicas if model in r.models]
    if not serving:
        raise Refused(f"no live replica serves model '{model}', so version {version} cannot be checked; "
                      "pass --model-repository")
    have = [r.id for r in serving if version in r.models[model].available]
    if not have:
        seen = sorted({v for r in serving for v in r.models[model].available})
        raise Refused(f"no live replica's repository has version {version} of model '{model}' (they have {seen}); "
                      "upload it first, or pass --model-repository")
    lacking = [r.id for r in serving if r.id not in have]
    note = f"; {len(lacking)} lack it ({', '.join(lacking)}) and will keep serving the old version" if lacking else ""
    return f"{len(have)} of {len(serving)} replicas' repositories have version {version}{note}"


def _stable(model: str, current: DesiredModel | None, replicas: list[ReplicaState]) -> Split:
    """What serves now when the desired state says nothing: the version live replicas agree on."""
    if current is not None and current.split:
        return current.split
    seen = set()
    for r in replicas:
        m = r.models.get(model)
        if m is None:
            continue
        ready = [v.version for v in m.versions if v.state == "READY"]
        seen.add(m.route or (((max(ready), BUCKETS),) if ready else ()))
    seen.discard(())
    return seen.pop() if len(seen) == 1 else ()


async def _change(args: argparse.Namespace, store: RolloutStore,
                  plan: Callable[[DesiredModel | None, list[ReplicaState]], tuple[DesiredModel, list[str]]]) -> int:
    current = await store.read_desired(args.model)
    replicas = await store.read_replicas()
    new, notes = plan(current, replicas)
    before = describe_split(current.split) if current and current.split else describe_split(_stable(args.model, current,
                                                                                                     replicas))
    print(f"model '{args.model}': {before} -> {describe_split(new.split)}")
    for note in notes:
        print(f"  {note}")
    print(f"  {len([r for r in replicas if args.model in r.models])} live replica(s) serve it")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    floor = max((max(m.applied_revision, m.desired_revision) for r in replicas for m in r.models.values()), default=0)
    start = time.monotonic()
    written, revision = await store.write_desired(new, current.revision if current else 0, floor)
    if not written:
        raise Refused(f"the desired state of '{args.model}' changed meanwhile (now revision {revision}); run it again")
    print(f"revision {revision} written")
    return await wait_for(store, args.model, revision, args.wait, start, new.doc()) if args.wait > 0 else 0


def _desired(args: argparse.Namespace, split: Split, previous: Split, canary: int | None, action: str) -> DesiredModel:
    return DesiredModel(args.model, 0, split, previous, canary, action, _who(), time.time())


async def rollout(args: argparse.Namespace, store: RolloutStore) -> int:
    def plan(current: DesiredModel | None, replicas: list[ReplicaState]) -> tuple[DesiredModel, list[str]]:
        checked = _check_version(args.model, args.version, args.model_repository, replicas)
        stable = _stable(args.model, current, replicas)
        notes = [checked, f"every replica loads version {args.version} before any traffic moves to it; "
                          "one that cannot load it keeps serving what it serves now and reports why"]
        in_canary = current is not None and current.canary is not None and len(current.split) > 1
        if args.canary is None:
            if stable == ((args.version, BUCKETS),):
                raise Refused(f"version {args.version} already takes all of '{args.model}'s traffic")
            notes.append(f"undo with: fleetserve fleet rollback {args.model}")
            previous = current.previous if in_canary and current is not None else stable
            return _desired(args, ((args.version, BUCKETS),), previous, None, f"rollout v{args.version}"), notes
        if in_canary and current is not None and current.canary != args.version:
            raise Refused(f"a canary of version {current.canary} is in progress; promote or rollback it first")
        base = [v for v, _ in stable if v != args.version]
        if len(base) != 1:
            raise Refused(f"a canary needs one version serving now besides {args.version}; found "
                          f"{describe_split(stable) if stable else 'none'} (roll one out fully first)")
        try:
            split = make_split({base[0]: 100 - args.canary, args.version: args.canary})
        except ValueError as exc:
            raise Refused(f"--canary {args.canary:g}: {exc}") from None
        previous = current.previous if in_canary and current is not None else ((base[0], BUCKETS),)
        notes.append(f"requests with an id keep their version while the split holds; then: "
                     f"fleetserve fleet promote {args.model} (or rollback)")
        return _desired(args, split, previous, args.version, f"rollout v{args.version} --canary {args.canary:g}"), notes

    return await _change(args, store, plan)


async def promote(args: argparse.Namespace, store: RolloutStore) -> int:
    def plan(current: DesiredModel | None, replicas: list[ReplicaState]) -> tuple[DesiredModel, list[str]]:
        if current is None or current.canary is None or len(current.split) < 2:
            raise Refused(f"no canary of model '{args.model}' to promote"
                          + (f" (it serves {describe_split(current.split)})" if current and current.split else ""))
        notes = [f"version {current.canary} takes all the traffic; the others unload once it does",
                 f"undo with: fleetserve fleet rollback {args.model}"]
        if args.model_repository is not None:
            notes.insert(0, _check_version(args.model, current.canary, args.model_repository, replicas))
        return _desired(args, ((current.canary, BUCKETS),), current.previous, None, f"promote v{current.canary}"), notes

    return await _change(args, store, plan)


async def rollback(args: argparse.Namespace, store: RolloutStore) -> int:
    def plan(current: DesiredModel | None, replicas: list[ReplicaState]) -> tuple[DesiredModel, list[str]]:
        if current is None or not current.previous:
            raise Refused(f"nothing to roll back to for model '{args.model}': no earlier split is recorded")
        notes = [f"every replica loads what {describe_split(current.previous)} needs before traffic moves back"]
        if args.model_repository is not None:
            notes += [_check_version(args.model, v, args.model_repository, replicas) for v, _ in current.previous]
        return _desired(args, current.previous, (), None, "rollback"), notes

    return await _change(args, store, plan)


async def wait_for(store: RolloutStore, model: str, revision: int, timeout_s: float, start: float,
                   doc: str = "") -> int:
    """Wait until every live replica serving ``model`` applied ``revision`` or reported it cannot (polling
    every 20 ms); the time printed runs from ``start`` (monotonic), taken before the write.

    ``doc``: the written record's, to follow it when a replica renumbers it (it was written after Redis lost
    its data, below the revisions replicas know: until then they do not take it, though they seem past it)."""
    while True:
        record = await store.read_desired(model) if doc else None
        ours = record is not None and record.doc() == doc
        if ours and record is not None and record.revision > revision:
            print(f"revision {revision} was below what replicas knew (Redis had lost its data): "
                  f"a replica renumbered it {record.revision}")
            revision = record.revision
        replicas = [r for r in await store.read_replicas() if model in r.models]
        behind = ours and any(r.models[model].desired_revision > revision for r in replicas)
        done = [r for r in replicas if r.models[model].applied_revision >= revision]
        failed = [r for r in replicas if r not in done and r.models[model].desired_revision >= revision
                  and r.models[model].error]
        elapsed = time.monotonic() - start
        if replicas and not behind and len(done) + len(failed) == len(replicas):
            break
        if elapsed > timeout_s:
            print(f"not converged after {timeout_s:g} s: {len(done)} of {len(replicas)} replicas applied revision "
                  f"{revision}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.02)
    print(f"{len(done)} of {len(replicas)} replicas applied revision {revision} in {elapsed:.2f} s")
    for r in failed:
        print(f"  {r.id}: FAILED: {r.models[model].error}; still serving {_serving(r.models[model])}")
    return 1 if failed else 0


# ---- rate limits ---------------------------------------------------------------------------------
async def limit(args: argparse.Namespace, store: RolloutStore) -> int:
    field = limit_field(args.tenant, args.model)
    if "/" in args.model or not args.tenant:
        raise Refused("give a tenant and a model name (no '/' in the model name)")
    old = (await _limits(store)).get(field)
    was = f" (was {old.rps:g}/s, burst {old.burst})" if old else ""
    if args.remove:
        await write_limit(store.link, store.keys, args.tenant, args.model, None)
        print(f"tenant '{args.tenant}', model '{args.model}': no limit{was}")
    else:
        if args.rps is None or args.burst is None:
            raise Refused("give --rps and --burst (or --remove)")
        try:
            new = Limit(args.rps, args.burst)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        await write_limit(store.link, store.keys, args.tenant, args.model, new)
        print(f"tenant '{args.tenant}', model '{args.model}': {new.rps:g} requests/s, bursts of {new.burst}{was}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, RolloutStore], Awaitable[int]]] = {
    "status": status, "rollout": rollout, "promote": promote, "rollback": rollback, "limit": limit,
}
