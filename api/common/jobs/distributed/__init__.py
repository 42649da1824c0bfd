"""Scale-out (DESIGN §4): the same job API over Celery workers on Redis (DD_BROKER_URL).

``engine``: the API server's side (and the workers' own, for jobs asking for jobs);
``store``: the jobs and the workers' heartbeats in Redis; ``worker``: ``python -m api worker``.
"""
