"""Jobs in Redis, shared by the API server and every worker (DD_BROKER_URL's database).

One hash per job (``dd:job:<id>``) holds what the embedded store keeps in its SQLite row;
the queued jobs of each queue wait in a sorted set in the order they run (their position:
priority, then submission order; see QUEUE_SCORE), the running ones in a set the reaper
walks. A worker's Celery message only says that its queue has work: the worker takes the
first job of that queue's sorted set. Every change of status is one Lua script, so
the API, a worker and a reaper racing on a job can't both win (a cancelled job is never
claimed, a finished one never requeued). Changes are announced on one pub/sub channel
(``<id> status`` or ``<id> progress``) that the API turns into wake-ups for ``wait=`` and
SSE. Workers announce themselves with a key that expires unless renewed (the heartbeat).
"""

from __future__ import annotations

import builtins
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from api.common.errors import Conflict, NotFound
from api.common.jobs.schemas import FINISHED, Job, JobStatus
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE
from api.common.schemas import MAX_PRIORITY, replace_invalid_text

PREFIX = "dd:"
JOBS = f"{PREFIX}jobs"  # sorted set: every job id by submission order
SEQUENCE = f"{PREFIX}seq"
RUNNING = f"{PREFIX}running"  # set: ids of running jobs
WORKERS = f"{PREFIX}workers"  # set: names of workers that announced themselves
EVENTS = f"{PREFIX}events"  # pub/sub channel: "<id> status" | "<id> progress"


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def queued_key(queue: str) -> str:
    return f"{PREFIX}queued:{queue}"


def worker_key(name: str) -> str:
    return f"{PREFIX}worker:{name}"


INTERRUPTED_TYPE = "interrupted"

# A queued job's score in its queue's sorted set: higher priorities first, then submission
# order. Exact in a double (2^53) while the sequence stays under 2^40 jobs.
SEQUENCE_SPAN = 2**40
QUEUE_SCORE = f"""
local function queue_score(priority, seq)
  return ({MAX_PRIORITY} - tonumber(priority)) * {SEQUENCE_SPAN} + tonumber(seq)
end
"""


# KEYS: job, jobs, queued set, sequence. ARGV: id, kind, model, request (JSON), queue,
# created_at, priority.
SUBMIT = (
    QUEUE_SCORE
    + """
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'kind', ARGV[2], 'model', ARGV[3],
  'status', 'queued', 'request', ARGV[4], 'queue', ARGV[5], 'created_at', ARGV[6],
  'seq', seq, 'priority', ARGV[7], 'attempts', 0, 'cancel_requested', 0)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], queue_score(ARGV[7], seq), ARGV[1])
return seq
"""
)

# The first job of a queue to running. KEYS: queued set, running. ARGV: worker, started_at,
# job-key prefix. → the job's id, or false when the queue is empty. (An id whose job is not
# queued, which no change of status leaves in the set, is dropped on the way.)
CLAIM = """
while true do
  local first = redis.call('ZPOPMIN', KEYS[1])
  if #first == 0 then return false end
  local id = first[1]
  local job = ARGV[3] .. id
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
    redis.call('HDEL', job, 'progress')
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('SADD', KEYS[2], id)
    return id
  end
end
"""

# KEYS: job, running. ARGV: id, worker, status, result, error, finished_at. → 1 | 0
FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
  or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[6])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# Back to its queue, in its old place: a running job whose worker stopped (shutdown) or
# died. KEYS: job, running, heartbeat of its worker. ARGV: id, worker, max attempts (0: a
# shutdown, not counted), error if out of attempts, finished_at, queued-set prefix,
# dead_only (1: only when the worker's heartbeat is gone).
# → 'requeued' | 'failed' | '' (not running on that worker, or the worker is alive).
REQUEUE = (
    QUEUE_SCORE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
  or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return '' end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return '' end
redis.call('SREM', KEYS[2], ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
local limit = tonumber(ARGV[3])
if limit == 0 then
  attempts = attempts - 1
  redis.call('HSET', KEYS[1], 'attempts', attempts)
elseif attempts >= limit then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[4], 'finished_at', ARGV[5])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'worker', 'started_at', 'progress')
local seq = redis.call('HGET', KEYS[1], 'seq')
local priority = redis.call('HGET', KEYS[1], 'priority') or 0
redis.call('ZADD', ARGV[6] .. redis.call('HGET', KEYS[1], 'queue'), queue_score(priority, seq),
  ARGV[1])
return 'requeued'
"""
)

# KEYS: job. ARGV: id, finished_at, queued-set prefix.
# → 'missing' | the status it had (queued: now cancelled; running: asked to stop)
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('ZREM', ARGV[3] .. redis.call('HGET', KEYS[1], 'queue'), ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 1)
end
return status
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _loads(text: str | None) -> Any:
    return replace_invalid_text(json.loads(text)) if text else None


def connect(url: str) -> redis.Redis:
    """A client of the broker's Redis (its answers decoded as text)."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
    )


class RedisJobStore:
    """Every job the cluster accepted: the JobStore of the distributed engine."""

    def __init__(self, client: redis.Redis) -> None:
        # Any: redis-py types each answer as "a value, or an awaitable of it" (its async twin).
        self.redis: Any = client
        self._submit = client.register_script(SUBMIT)
        self._claim = client.register_script(CLAIM)
        self._finish = client.register_script(FINISH)
        self._requeue = client.register_script(REQUEUE)
        self._cancel = client.register_script(CANCEL)

    def close(self) -> None:
        self.redis.close()

    def publish(self, job_id: str, progress: bool = False) -> None:
        self.redis.publish(EVENTS, f"{job_id} {'progress' if progress else 'status'}")

    # The API's side: submit, read, cancel.

    def submit(self, kind: str, model: str, request: dict[str, Any], queue: str) -> Job:
        """Queue a job, at the priority its request asks for (0 when it says none)."""
        job_id = uuid.uuid4().hex
        priority = int(request.get("priority", 0))
        self._submit(
            keys=[job_key(job_id), JOBS, queued_key(queue), SEQUENCE],
            args=[job_id, kind, model, json.dumps(request), queue, now(), priority],
        )
        return self.get(job_id)

    def _job(self, fields: dict[str, str], position: int | None) -> Job:
        return Job(
            id=fields["id"],
            kind=fields["kind"],
            model=fields["model"],
            status=JobStatus(fields["status"]),
            queue_position=position,
            progress=_loads(fields.get("progress")),
            created_at=datetime.fromisoformat(fields["created_at"]),
            started_at=fields.get("started_at"),
            finished_at=fields.get("finished_at"),
            request=_loads(fields["request"]),
            result=_loads(fields.get("result")),
            error=_loads(fields.get("error")),
            worker=fields.get("worker"),
        )

    def _jobs(self, ids: list[str]) -> list[Job]:
        """The jobs of ``ids`` that exist, their queue positions read in the same trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(job_key(job_id))
        found = [fields for fields in pipe.execute() if fields]
        pipe = self.redis.pipeline(transaction=False)
        for fields in found:
            pipe.zrank(queued_key(fields["queue"]), fields["id"])
        ranks = pipe.execute()
        return [
            self._job(
                fields, rank + 1 if fields["status"] == "queued" and rank is not None else None
            )
            for fields, rank in zip(found, ranks, strict=True)
        ]

    def get(self, job_id: str) -> Job:
        jobs = self._jobs([job_id])
        if not jobs:
            raise NotFound(f"no job with id {job_id!r}", "id")
        return jobs[0]

    def list(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Recent jobs, newest first, read in batches until ``limit`` match."""
        found: list[Job] = []
        start = 0
        batch = max(limit, 100)
        while len(found) < limit:
            ids = self.redis.zrevrange(JOBS, start, start + batch - 1)
            if not ids:
                break
            for job in self._jobs(ids):
                if (status is None or job.status == status) and (kind is None or job.kind == kind):
                    found.append(job)
            start += batch
        return found[:limit]

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now; ask a running one to stop at its next step."""
        had = self._cancel(keys=[job_key(job_id)], args=[job_id, now(), queued_key("")])
        if had == "missing":
            raise NotFound(f"no job with id {job_id!r}", "id")
        if had not in ("queued", "running"):
            raise Conflict(f"job {job_id} already {had}; nothing to cancel", "id")
        self.publish(job_id)
        return self.get(job_id)

    def remove_finished(self, before: datetime) -> builtins.list[Job]:
        """Delete the jobs that ended before ``before`` (retention); returns them. (A
        finished job never changes again, so nothing races the removal.)"""
        removed: builtins.list[Job] = []
        start = 0
        batch = 500
        while ids := self.redis.zrange(JOBS, start, start + batch - 1):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(job_key(job_id), "status", "finished_at")
            old = [
                job_id
                for job_id, (status, finished_at) in zip(ids, pipe.execute(), strict=True)
                if status in FINISHED
                and finished_at
                and datetime.fromisoformat(finished_at) < before
            ]
            jobs = self._jobs(old)
            if old:
                pipe = self.redis.pipeline(transaction=True)
                pipe.delete(*(job_key(job_id) for job_id in old))
                pipe.zrem(JOBS, *old)
                pipe.execute()
            removed.extend(jobs)
            start += len(ids) - len(old)
        return removed

    def queue_depth(self) -> dict[str, int]:
        """Queued and running jobs in all."""
        depths = self.queue_depths().values()
        return {what: sum(depth[what] for depth in depths) for what in ("queued", "running")}

    def queue_positions(self) -> dict[str, int]:
        """The position of each queued job in its queue (1 = next), by id."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues():
            pipe.zrange(queued_key(queue), 0, -1)
        return {
            str(job_id): position
            for ids in pipe.execute()
            for position, job_id in enumerate(ids, start=1)
        }

    def queues(self) -> builtins.list[str]:
        """The devices' and the providers' queues, those with jobs waiting, and those the
        live workers take jobs from."""
        names = {DEVICE_QUEUE, EXTERNAL_QUEUE}
        names.update(
            name.removeprefix(queued_key(""))
            for name in self.redis.scan_iter(match=queued_key("*"), count=1000)
        )
        for worker in self.workers():
            names.update(worker["queues"])
        return sorted(names)

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per queue."""
        depths = {queue: {"queued": 0, "running": 0} for queue in self.queues()}
        pipe = self.redis.pipeline(transaction=False)
        for queue in depths:
            pipe.zcard(queued_key(queue))
        for queue, count in zip(depths, pipe.execute(), strict=True):
            depths[queue]["queued"] = count
        running = builtins.list(self.redis.smembers(RUNNING))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in running:
            pipe.hget(job_key(job_id), "queue")
        for queue in pipe.execute():
            if queue is not None:
                depths.setdefault(queue, {"queued": 0, "running": 0})["running"] += 1
        return depths

    # The workers' side: claim, report, finish; and the reaper's.

    def claim_next(self, queue: str, worker: str) -> Job | None:
        """Move the first job of ``queue`` (the highest priority, the oldest of those) to
        running on ``worker``; None when none is queued there (each job sends one message,
        but a cancelled job leaves its message behind, and a message may come twice)."""
        job_id = self._claim(keys=[queued_key(queue), RUNNING], args=[worker, now(), job_key("")])
        if not job_id:
            return None
        self.publish(job_id)
        return self.get(job_id)

    def report_progress(
        self, job_id: str, worker: str, progress: dict[str, Any], ttl: float
    ) -> tuple[bool, bool]:
        """Save and announce a running job's progress, in one trip with the look at whether
        it should stop: (cancel requested, taken from this worker). A step done is a sign of
        life too: the worker's heartbeat is renewed for ``ttl`` seconds."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(job_key(job_id), "progress", json.dumps(progress))
        pipe.publish(EVENTS, f"{job_id} progress")
        pipe.pexpire(worker_key(worker), int(ttl * 1000))
        pipe.hmget(job_key(job_id), "cancel_requested", "worker")
        *_, (cancel, owner) = pipe.execute()
        return cancel == "1", owner != worker

    def should_stop(self, job_id: str, worker: str) -> tuple[bool, bool]:
        """(cancel requested, taken from this worker) for a running job."""
        cancel, owner = self.redis.hmget(job_key(job_id), "cancel_requested", "worker")
        return cancel == "1", owner != worker

    def finish(
        self,
        job_id: str,
        worker: str,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: dict[str, str] | None,
    ) -> bool:
        """Record a job's end (only if it is still running on ``worker``)."""
        done = self._finish(
            keys=[job_key(job_id), RUNNING],
            args=[
                job_id,
                worker,
                status.value,
                json.dumps(result) if result is not None else "",
                json.dumps(error) if error is not None else "",
                now(),
            ],
        )
        self.publish(job_id)
        return bool(done)

    def requeue(self, job_id: str, worker: str, attempts: int = 0, dead_only: bool = False) -> str:
        """Put a running job back in its queue: 'requeued', 'failed' (``attempts`` used up;
        0: a worker shutting down, which doesn't count) or '' (not running on ``worker``,
        or, with ``dead_only``, that worker is still alive)."""
        message = (
            f"the worker running this job ({worker}) stopped without finishing it "
            f"(killed, crashed or lost), {attempts} time(s) counting earlier tries; it is not "
            "run again — look at the workers' logs, then submit it again"
        )
        error = json.dumps({"type": INTERRUPTED_TYPE, "message": message})
        outcome = self._requeue(
            keys=[job_key(job_id), RUNNING, worker_key(worker)],
            args=[job_id, worker, attempts, error, now(), queued_key(""), int(dead_only)],
        )
        if outcome:
            self.publish(job_id)
        return str(outcome or "")

    def running(self) -> dict[str, str]:
        """Running job id → the worker running it."""
        ids = builtins.list(self.redis.smembers(RUNNING))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "worker")
        return {
            job_id: worker for job_id, worker in zip(ids, pipe.execute(), strict=True) if worker
        }

    def queue_of(self, job_id: str) -> str | None:
        return self.redis.hget(job_key(job_id), "queue")

    # Workers' heartbeats.

    def beat(self, name: str, info: dict[str, Any], ttl: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(worker_key(name), json.dumps(info), px=int(ttl * 1000))
        pipe.sadd(WORKERS, name)
        pipe.execute()

    def leave(self, name: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(worker_key(name))
        pipe.srem(WORKERS, name)
        pipe.execute()

    def workers(self) -> builtins.list[dict[str, Any]]:
        """The workers alive now (their last heartbeat), forgetting those gone."""
        names = sorted(self.redis.smembers(WORKERS))
        infos = self.redis.mget([worker_key(name) for name in names]) if names else []
        alive = []
        for name, info in zip(names, infos, strict=True):
            if info is None:
                self.redis.srem(WORKERS, name)
            else:
                alive.append(json.loads(info))
        return alive
